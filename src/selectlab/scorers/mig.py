"""MIG's per-example quality, the information an example puts on each of its labels.

``scorer.quality``: ``annotation`` (release, ``mig/data.py``): the DEITA score from the pool's
``annotation.deita`` fields, mean over dialogue rounds of quality_scores[i] * complexity_scores[i]
(records without it are not selectable, as the release drops them, and are counted);
``length`` (offline substitute): the answer's length in backbone tokens (InstructMining's
output-length indicator); ``uniform``: 1 for every example (MIG's label coverage alone).
``selector=auto`` runs MIG's greedy (``scorer.selector``: ``mig`` on InsTag labels,
``mig_clusters`` on the offline cluster labels).
"""
from __future__ import annotations

import numpy as np

from ..context import RunContext
from ..errors import SelectlabError
from . import Scores, register
from .length import answer_token_counts
from ..schema.scoring import MIG_QUALITIES as QUALITIES



def deita_score(record: dict) -> float:
    """mean_i quality_scores[i] * complexity_scores[i]; NaN when the record has no DEITA annotation."""
    deita = (record.get("annotation") or {}).get("deita") or {}
    quality, complexity = deita.get("quality_scores") or [], deita.get("complexity_scores") or []
    if not quality or len(complexity) < len(quality):
        return float("nan")
    return float(sum(q * c for q, c in zip(quality, complexity)) / len(quality))


@register("mig", reads=("backbone",))
def score_mig(ctx: RunContext) -> Scores:
    quality = str(ctx.cfg.scorer.quality)
    records = ctx.pool.records
    counts: dict[str, int] = {}
    if quality == "annotation":
        score = np.array([deita_score(r) for r in records], dtype=np.float64)
        counts["no_deita_annotation"] = int(np.isnan(score).sum())
        if counts["no_deita_annotation"] == len(records):
            raise SelectlabError("scorer.quality=annotation: no record has annotation.deita quality/complexity scores; "
                             "use a pre-annotated pool (pool=json) or scorer=mig_offline (scorer.quality=length)")
    elif quality == "length":
        score = answer_token_counts(ctx)
        empty = score == 0
        counts["empty_answer"] = int(empty.sum())
        score = np.where(empty, np.nan, score)
    elif quality == "uniform":
        score = np.ones(len(records), dtype=np.float64)
    else:
        raise SelectlabError(f"scorer.quality={quality!r}; choose one of {QUALITIES}")
    return Scores(ids=[r["id"] for r in records], score=score, columns={"quality": score.copy()}, counts=counts,
                  meta={"quality": quality if quality == "annotation" else f"{quality} (substitute)"})
