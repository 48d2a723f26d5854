"""IFD (Cherry LLM): Instruction-Following Difficulty = loss(A | Q) / loss(A) under the backbone.

Both losses are mean token cross-entropies over the answer tokens (see
:mod:`selectlab.lm_scoring`). The highest IFD is selected first; IFD >= 1 (the prompt does
not help to predict the answer) is not selectable, as in the release, and counted.
loss(A) follows the Cherry LLM release by default: the answer after BOS and the text
"### Response:" (``scorer.uncond_prefix``); ``uncond_prefix: ""`` scores the answer alone.
``scorer.ratio``: ``loss`` (the IFD paper and Cherry LLM release: loss(A|Q)/loss(A)) or
``perplexity`` (the SuperFiltering release's ``ifd_ppl`` = ppl(A|Q)/ppl(A) =
exp(loss(A|Q) - loss(A))): the same examples pass the IFD < 1 filter, ranked differently.
"""
from __future__ import annotations

import numpy as np

from ..errors import SelectlabError
from ..lm_scoring import degenerate_mask, pool_answer_losses
from ..config import plain
from ..context import RunContext
from . import Scores, register


RATIOS = ("loss", "perplexity")


def ifd_from_losses(records: list[dict], loss_cond: np.ndarray, loss_uncond: np.ndarray,
                    n_answer_tokens: np.ndarray, ratio: str = "loss") -> tuple[np.ndarray, np.ndarray, dict]:
    """(ifd, score, counts): score = IFD where it is finite and < 1, NaN elsewhere."""
    if ratio not in RATIOS:
        raise SelectlabError(f"scorer.ratio={ratio!r}; choose one of {RATIOS}")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ifd = loss_cond / loss_uncond if ratio == "loss" else np.exp(loss_cond - loss_uncond)
    usable, counts = degenerate_mask(records, n_answer_tokens, ifd)
    ge_1 = usable & (ifd >= 1)
    counts["ifd_ge_1"] = int(ge_1.sum())
    score = np.where(usable & ~ge_1, ifd, np.nan)
    return ifd, score, counts


def ifd_scores(ctx: RunContext, model_path: str, model_ident) -> Scores:
    """IFD of every pool record with the causal LM at ``model_path`` (shared with superfiltering)."""
    table, meta = pool_answer_losses(ctx, model_path, plain(model_ident), plain(ctx.cfg.scorer), unconditional=True)
    loss_cond, loss_uncond, n_tokens = table.T
    ratio = str(ctx.cfg.scorer.ratio)
    ifd, score, counts = ifd_from_losses(ctx.pool.records, loss_cond, loss_uncond, n_tokens, ratio)
    return Scores(
        ids=[r["id"] for r in ctx.pool.records], score=score,
        columns={"loss_cond": loss_cond, "loss_uncond": loss_uncond, "ifd": ifd, "n_answer_tokens": n_tokens},
        counts=counts, meta={**meta, "ratio": ratio},
    )


@register("ifd")
def score_ifd(ctx: RunContext) -> Scores:
    return ifd_scores(ctx, ctx.backbone(), ctx.cfg.backbone)
