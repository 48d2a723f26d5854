"""SuperFiltering.D: SuperFiltering's IFD scores (the same function, so the same cached
losses); its diversity step is the selector (``selector=auto`` -> ``fla``)."""
from __future__ import annotations

from . import register
from .superfiltering import score_superfiltering

register("superfiltering_d", reads=("backbone",))(score_superfiltering)
