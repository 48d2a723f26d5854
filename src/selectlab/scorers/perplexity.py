"""Response perplexity exp(loss(A | Q)) under the backbone (InstructMining's perplexity
indicator; a perplexity-filtering baseline). ``scorer.order``: asc (lowest perplexity
first) | desc (highest first). Degenerate examples are not selectable and are counted.
"""
from __future__ import annotations

import numpy as np

from ..lm.lm_scoring import degenerate_mask, pool_answer_losses
from ..config import plain
from ..context import RunContext
from . import Scores, register
from .length import order_sign


@register("perplexity", reads=("backbone",))
def score_perplexity(ctx: RunContext) -> Scores:
    sign = order_sign(str(ctx.cfg.scorer.order))
    model_ident = plain(ctx.cfg.backbone)
    table, meta = pool_answer_losses(ctx, ctx.backbone(), model_ident, ctx.cfg.scorer, unconditional=False)
    loss_cond, _, n_tokens = table.T
    perplexity = np.exp(loss_cond)
    usable, counts = degenerate_mask(ctx.pool.records, n_tokens, perplexity)
    return Scores(
        ids=[r["id"] for r in ctx.pool.records], score=np.where(usable, sign * perplexity, np.nan),
        columns={"loss_cond": loss_cond, "perplexity": perplexity, "n_answer_tokens": n_tokens},
        counts=counts, meta={**meta, "order": str(ctx.cfg.scorer.order)},
    )
