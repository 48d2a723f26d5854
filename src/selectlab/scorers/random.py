"""The random baseline: a seeded uniform score per example.

Each score depends only on (seed, example id), so the same example gets the same score
whatever pool slice it sits in, and the stage is batch-resumable like every other.
"""
from __future__ import annotations

import hashlib

import numpy as np

from ..context import RunContext
from . import Scores, register

VERSION = 1


def uniform_from_id(seed: int, example_id: str) -> float:
    digest = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@register("random", reads=())
def score_random(ctx: RunContext) -> Scores:
    seed = int(ctx.cfg.seed)
    key = ctx.store.key("random_scores", VERSION, pool=ctx.pool_key, seed=seed)
    ids = [r["id"] for r in ctx.pool.records]
    folder = ctx.store.batched(
        "random_scores", key, ids, int(ctx.cfg.scorer.batch_size),
        lambda batch: np.array([uniform_from_id(seed, i) for i in batch], dtype=np.float64),
    )
    score = np.load(folder / "array.npy")
    return Scores(ids=ids, score=score, meta={"seed": seed})
