"""ZIP's per-example score: the zlib level-9 compression ratio of the example alone (the
release's initial state; lower = less redundant = offered first). No model.

``scorer.text``: what is compressed: ``repr`` (release: Python's ``str()`` of the record
``{'instruction', 'input', 'output'}`` inside a list) or ``plain`` text. The score is
``-ratio``, so ``selector=topk`` would take the lowest ratios; the release's selection is the
three-stage greedy of :mod:`selectlab.selectors.zip_selection`, which ``selector=auto`` runs
(``conf/selector/zip.yaml``).
"""
from __future__ import annotations

import numpy as np

from ..texts import FORMS, single_ratios, zip_text
from ..context import RunContext
from . import Scores, register


@register("zip", reads=("backbone",))
def score_zip(ctx: RunContext) -> Scores:
    text = str(ctx.cfg.scorer.text)
    texts = [zip_text(r, text) for r in ctx.pool.records]
    ratio = single_ratios(texts, FORMS[text])
    return Scores(
        ids=[r["id"] for r in ctx.pool.records], score=-ratio,
        columns={"compression_ratio": ratio, "n_bytes": np.array([len(t) for t in texts], dtype=np.float64)},
        meta={"text": text},
    )
