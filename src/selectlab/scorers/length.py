"""Response length in tokens of the backbone's tokenizer (InstructMining's output-length
indicator; the "longest responses" baseline). ``scorer.order``: desc (longer first) | asc.

Tokenizing the pool is cheap (seconds for 52K answers), so this scorer needs no
batch-resumable artifact; its Scores are cached by the pipeline's scores stage.
Empty answers are not selectable and are counted.
"""
from __future__ import annotations

import numpy as np

from ..errors import SelectlabError
from ..lm.models import load_tokenizer
from ..context import RunContext
from . import Scores, register


def order_sign(order: str) -> float:
    """+1 for ``desc`` (higher value first), -1 for ``asc`` (lower value first)."""
    if order not in ("asc", "desc"):
        raise SelectlabError(f"scorer.order={order!r}; choose asc or desc")
    return 1.0 if order == "desc" else -1.0


def answer_token_counts(ctx: RunContext) -> np.ndarray:
    """Each pool answer's length in tokens of the backbone's tokenizer."""
    tokenizer = load_tokenizer(ctx.backbone())
    answers = [r["output"] for r in ctx.pool.records]
    return np.array([len(ids) for ids in tokenizer(answers, add_special_tokens=False).input_ids], dtype=np.float64)


@register("length", reads=("backbone",))
def score_length(ctx: RunContext) -> Scores:
    sign = order_sign(str(ctx.cfg.scorer.order))
    answers = [r["output"] for r in ctx.pool.records]
    n_tokens = answer_token_counts(ctx)
    empty = np.array([not a.strip() for a in answers], dtype=bool)
    return Scores(
        ids=[r["id"] for r in ctx.pool.records], score=np.where(empty, np.nan, sign * n_tokens),
        columns={"n_answer_tokens": n_tokens}, counts={"empty_answer": int(empty.sum())},
        meta={"order": str(ctx.cfg.scorer.order), "tokenizer": ctx.backbone()},
    )
