"""The held-out instruction set (config ``heldout``) and the held-out response-loss eval.

The set is drawn *after* removing every example whose (instruction, input) is in the
training pool, so it is disjoint from the pool by construction, also when it comes from the
same source (``heldout.loader=alpaca`` beside ``pool=alpaca``: a seeded slice of the 52K
rows the pool did not take). ``eval.heldout_loss`` (``eval=heldout_loss``, or beside
lm-eval tasks as in ``experiment=sweep_cpu_replication``) scores each example by its mean response-token
cross-entropy under the Alpaca prompt the fine-tune uses; lower is better. The per-example
losses are kept so that differences between models can be paired by example.
"""
from __future__ import annotations

import logging
import dataclasses

from ..errors import SelectlabError
from ..pools import load_pool, pool_source, take
from ..schema.evaluation import HeldoutLoss

log = logging.getLogger(__name__)

METRIC = "heldout_loss"


def heldout_records(heldout_cfg, pool_records: list[dict], seed: int) -> list[dict]:
    """``heldout.limit`` examples of the ``heldout`` source that share no (instruction, input)
    with ``pool_records``, sampled with ``seed`` (``heldout.sample=head``: the first ones)."""
    heldout_cfg = pool_source(heldout_cfg)
    source = load_pool(dataclasses.replace(heldout_cfg, limit=None), seed=seed).records
    in_pool = {(r["instruction"], r["input"]) for r in pool_records}
    candidates = [r for r in source if (r["instruction"], r["input"]) not in in_pool]
    if len(candidates) < len(source):
        log.info("held-out set: %d examples that are also in the pool left out", len(source) - len(candidates))
    return take(candidates, heldout_cfg, seed)


def heldout_loss_eval(model_path: str, records: list[dict], loss_cfg: HeldoutLoss) -> dict:
    """{"score": mean over examples of the per-example loss, "per_example": {id: loss}, counts}."""
    from .train import response_losses

    losses = response_losses(model_path, records, template=loss_cfg.template, max_length=loss_cfg.max_length,
                             batch_size=loss_cfg.batch_size, dtype=loss_cfg.dtype)
    per_example = {r["id"]: loss for r, loss in zip(records, losses) if loss is not None}
    if not per_example:
        raise SelectlabError(f"eval.heldout_loss: none of the {len(records)} held-out examples has a response token "
                         f"within eval.heldout_loss.max_length={loss_cfg.max_length}")
    return {"score": sum(per_example.values()) / len(per_example), "per_example": per_example,
            "n_samples": len(per_example), "n_unscored": len(records) - len(per_example)}
