"""What every selector returns (a leaf module: selectors, diverse and the rival selectors all
import it, so none of them imports another to get it)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Selection:
    """What every selector returns.

    ``order``: indices into ``scores.ids`` of the selected examples, in rank order.
    ``bins``: one bin label per pool example, when the selector bins the pool (written as ``bins.npy``).
    ``subsets``: further named subsets (e.g. ADG's ``middle`` and ``bottom``), each an index order,
    written as ``subset_<name>.jsonl`` beside ``subset.jsonl``.
    ``meta``: small JSON-able facts about the selection (counts, chosen sizes) for the manifest.
    """

    order: list[int]
    bins: np.ndarray | None = None
    subsets: dict[str, list[int]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
