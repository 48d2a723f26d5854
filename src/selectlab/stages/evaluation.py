"""Fine-tune -> evaluate: one results row per (subset, training seed), each eval cached per model.

The evals are lm-eval's tasks (``eval.tasks``) and the held-out response loss
(``eval.heldout_loss``), both with per-example scores for the paired statistics of
``selectlab.stats``.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..config import plain
from ..context import RunContext
from ..store import ArtifactStore, atomic_write_text, content_hash

EVAL_VERSION = 2  # 2: ARC few-shot from train, code scored as code_eval in the sandbox, every filter recorded
HELDOUT_LOSS_VERSION = 1


def eval_key(store: ArtifactStore, model_path: str, eval_cfg: dict) -> str:
    return store.key("evals", EVAL_VERSION, model=store.identity(model_path), eval=eval_cfg)


def lm_eval_stage(ctx: RunContext, model_path: str, label: str) -> dict:
    """lm-eval results of one model, cached per (model, eval config)."""
    from ..evaluate import evaluate

    eval_cfg = plain(ctx.cfg.eval)
    key = eval_key(ctx.store, model_path, eval_cfg)

    def make(tmp: Path) -> dict:
        result = evaluate(model_path, {"eval": eval_cfg}, tmp)
        atomic_write_text(tmp / "result.json", json.dumps(result, indent=2, default=str))
        return {"label": label}

    folder = ctx.store.build("evals", key, make, {"model": model_path})
    return json.loads((folder / "result.json").read_text())


def heldout_loss_stage(ctx: RunContext, model_path: str) -> dict:
    """The held-out response loss of one model (``eval.heldout_loss``), cached per (model, held-out
    examples, loss settings); per-example losses included."""
    from ..heldout import heldout_loss_eval, heldout_records

    loss_cfg = plain(ctx.cfg.eval.heldout_loss)
    records = heldout_records(plain(ctx.cfg.heldout), ctx.pool.records, int(ctx.cfg.seed))
    key = ctx.store.key("heldout_losses", HELDOUT_LOSS_VERSION, model=ctx.store.identity(model_path), loss=loss_cfg,
                        heldout=content_hash([[r["id"], r["instruction"], r["input"], r["output"]] for r in records]))

    def make(tmp: Path) -> dict:
        result = heldout_loss_eval(model_path, records, loss_cfg)
        atomic_write_text(tmp / "losses.json", json.dumps(result))
        return {"n_heldout": len(records), "heldout": ctx.cfg.heldout.name}

    folder = ctx.store.build("heldout_losses", key, make, {"model": model_path})
    return json.loads((folder / "losses.json").read_text())


def evaluate_model(ctx: RunContext, model_path: str, label: str) -> dict:
    """The configured evals of one model, with their per-example scores
    (``per_example[metric][example id]``)."""
    result = {"metrics": {}, "groups": {}, "avg": None, "complete": True, "per_example": {}}
    if getattr(ctx.cfg.eval, "tasks", None):
        lm_eval = lm_eval_stage(ctx, model_path, label)
        result.update({k: lm_eval[k] for k in ("metrics", "groups", "avg", "complete")},
                      per_example=dict(lm_eval.get("per_example") or {}))
    if getattr(ctx.cfg.eval, "heldout_loss", None):
        from ..heldout import METRIC

        loss = heldout_loss_stage(ctx, model_path)
        result["metrics"] = {**result["metrics"], METRIC: loss["score"]}
        result["per_example"][METRIC] = loss["per_example"]
    return result


def train_and_evaluate(ctx: RunContext, subset: list[dict], subset_key: str | None, label: str,
                       scorer: str, seed: int | None = None) -> dict:
    """One results row: fine-tune on ``subset`` (``subset_key=None``: the untouched backbone) with
    ``train.seed=seed`` (None: as configured), evaluate."""
    train_cfg = plain(ctx.cfg.train)
    if seed is not None:
        train_cfg["seed"] = seed
    if subset_key is None or ctx.cfg.train.name == "none":
        model_path, n_train = ctx.backbone(), 0
    else:
        from ..train import finetune

        model_path = finetune(subset, ctx.backbone(), train_cfg, ctx.store,
                              {"subset": subset_key, "backbone": plain(ctx.cfg.backbone)})
        n_train = len(subset)
    result = evaluate_model(ctx, model_path, label)
    return {"label": label, "scorer": scorer, "n_train": n_train, "seed": train_cfg.get("seed") if n_train else None,
            "model": model_path, **result}
