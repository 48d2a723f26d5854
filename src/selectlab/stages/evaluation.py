"""Fine-tune -> evaluate: one results row per (subset, training seed), each eval cached per model.

The evals are lm-eval's tasks (``eval.tasks``) and the held-out response loss
(``eval.heldout_loss``), both with per-example scores for the paired statistics of
``selectlab.outputs.stats``.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..config import plain
from ..schema import typed
from ..context import RunContext
from ..infra.store import ArtifactStore, atomic_write_text, content_hash

EVAL_VERSION = 3  # 3: one artifact per (model, task); 2: ARC few-shot from train, code scored as code_eval in the sandbox
HELDOUT_LOSS_VERSION = 1
# eval keys that do not change a task's numbers: how results are grouped and named, the held-out loss (its own stage)
NOT_IN_TASK_KEY = ("name", "tasks", "groups", "heldout_loss")


def task_keys(store: ArtifactStore, model_path: str, eval_cfg: dict) -> dict[str, str]:
    """Each ``eval.tasks`` entry's artifact key for one model: the task's entry and the lm-eval settings."""
    settings = {k: v for k, v in eval_cfg.items() if k not in NOT_IN_TASK_KEY}
    model = store.identity(model_path)
    return {name: store.key("evals", EVAL_VERSION, model=model, task={name: entry}, settings=settings)
            for name, entry in (eval_cfg.get("tasks") or {}).items()}


def lm_eval_stage(ctx: RunContext, model_path: str, label: str) -> dict:
    """lm-eval results of one model, each task its own artifact (a killed evaluation redoes at most
    the task it was in; a second job that needs the same task waits for it and reuses it)."""
    import time

    from ..lm.evaluate import evaluate, summarize

    eval_cfg = plain(ctx.cfg.eval)
    keys = task_keys(ctx.store, model_path, eval_cfg)

    def stored_task(name: str, entry: dict, compute) -> dict:
        def make(tmp: Path) -> dict:
            result = compute(tmp)
            result["raw_path"] = Path(result["raw_path"]).name  # relative: the folder moves when published
            atomic_write_text(tmp / "result.json", json.dumps(result, indent=2, default=str))
            return {"label": label, "task": name}

        folder = ctx.store.build("evals", keys[name], make, {"model": model_path})
        result = json.loads((folder / "result.json").read_text())
        return {**result, "raw_path": str(folder / result["raw_path"])}

    started = time.time()
    if all(ctx.store.reusable("evals", key) for key in keys.values()):  # no task loading, no model
        results = {name: stored_task(name, entry, None) for name, entry in eval_cfg["tasks"].items()}
        return summarize(results, eval_cfg, model_path, time.time() - started, None)
    return evaluate(model_path, {"eval": eval_cfg}, None, stored_task)


def heldout_loss_stage(ctx: RunContext, model_path: str) -> dict:
    """The held-out response loss of one model (``eval.heldout_loss``), cached per (model, held-out
    examples, loss settings); per-example losses included."""
    from ..lm.heldout import heldout_loss_eval, heldout_records

    loss_cfg = typed(ctx.cfg.eval.heldout_loss)
    records = heldout_records(ctx.cfg.heldout, ctx.pool.records, int(ctx.cfg.seed))
    key = ctx.store.key("heldout_losses", HELDOUT_LOSS_VERSION, model=ctx.store.identity(model_path), loss=plain(loss_cfg),
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
        from ..lm.heldout import METRIC

        loss = heldout_loss_stage(ctx, model_path)
        result["metrics"] = {**result["metrics"], METRIC: loss["score"]}
        result["per_example"][METRIC] = loss["per_example"]
    return result


def train_seed(cfg, seed: int | None) -> int:
    """The training seed of a row: ``seed`` (a comparison seed), else ``train.seed``."""
    return cfg.train.seed if seed is None else seed


def train_row(ctx: RunContext, subset: list[dict], subset_key: str, seed: int | None = None) -> str:
    """The backbone fine-tuned on ``subset`` with ``train.seed=seed`` (None: as configured)."""
    from ..lm.train import finetune

    train_cfg = replace(typed(ctx.cfg.train), seed=train_seed(ctx.cfg, seed))
    return finetune(subset, ctx.backbone(), train_cfg, ctx.store,
                    {"subset": subset_key, "backbone": plain(ctx.cfg.backbone)})
