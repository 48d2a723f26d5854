"""InstructMining's subset-size search as a stage (``selector=blendsearch`` / ``selector=size_grid``).

Each point is a real fine-tune of the top-n (by score) evaluated on a held-out set (Self-Instruct
seed tasks by default, as the paper samples its eval set from Self-Instruct); the best n is the
selection's size. The search is one artifact (``size_searches``) whose key covers the scores, the
search settings and every config the trials depend on (train, held-out set, backbone, seed), and
whose trials are its content: a cached rerun logs the same ``size_search`` table. Each trial's
fine-tune and loss are artifacts too (``eval_loss``), so a killed search resumes at its last trial.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from ..config import plain
from ..schema import typed
from ..context import RunContext
from ..errors import SelectlabError
from ..instructmining import search_subset_size
from ..scorers import Scores
from ..infra.store import atomic_write_text, content_hash

log = logging.getLogger(__name__)

EVAL_LOSS_VERSION = 1
SIZE_SEARCH_VERSION = 1


def eval_records(ctx: RunContext) -> list[dict]:
    """The held-out eval set (``heldout`` config), drawn from the examples not in the training pool."""
    from ..lm.heldout import heldout_records

    return heldout_records(ctx.cfg.heldout, ctx.pool.records, int(ctx.cfg.seed))


def finetuned_eval_loss(ctx: RunContext, subset: list[dict], heldout: list[dict]) -> float:
    """Held-out response loss after fine-tuning the backbone on ``subset`` (cached per subset,
    train config, backbone and held-out set)."""
    from ..lm.train import eval_loss, finetune

    train_cfg = typed(ctx.cfg.train)
    heldout_key = content_hash([r["id"] for r in heldout] + [r["output"] for r in heldout])
    subset_key = content_hash(sorted(r["id"] for r in subset))
    key = ctx.store.key("eval_loss", EVAL_LOSS_VERSION, subset=subset_key, pool=ctx.pool_key, train=plain(train_cfg),
                        backbone=plain(ctx.cfg.backbone), heldout=heldout_key)

    def make(tmp: Path) -> dict:
        model = finetune(subset, ctx.backbone(), train_cfg, ctx.store, {"subset": subset_key})
        loss = eval_loss(model, heldout, template=train_cfg.template, max_length=train_cfg.max_length)
        atomic_write_text(tmp / "loss.json", json.dumps({"loss": loss, "n_train": len(subset), "model": model}))
        return {}

    folder = ctx.store.build("eval_loss", key, make)
    return json.loads((folder / "loss.json").read_text())["loss"]


def size_search_key(ctx: RunContext, scores_key: str, search_cfg: dict) -> str:
    cfg = ctx.cfg
    return ctx.store.key("size_searches", SIZE_SEARCH_VERSION, scores=scores_key, search=search_cfg,
                         pool=ctx.pool_key, seed=int(cfg.seed), train=plain(cfg.train), heldout=plain(cfg.heldout),
                         backbone=plain(cfg.backbone))


def size_search_stage(ctx: RunContext, scores: Scores, scores_key: str, search_cfg: dict) -> dict:
    """The search's result (``best_n``, ``trials``: n, loss, seconds) from its artifact."""
    key = size_search_key(ctx, scores_key, search_cfg)

    def make(tmp: Path) -> dict:
        result = run_size_search(ctx, scores, search_cfg)
        atomic_write_text(tmp / "size_search.json", json.dumps(result, indent=2))
        return {"best_n": result["best_n"]}

    folder = ctx.store.build("size_searches", key, make, {"method": search_cfg["method"]})
    return json.loads((folder / "size_search.json").read_text())


def run_size_search(ctx: RunContext, scores: Scores, cfg: dict) -> dict:
    """Fine-tune on the top-n for each n the method tries (BlendSearch or a grid); the best n wins."""
    valid = np.flatnonzero(~np.isnan(scores.score))
    order = valid[np.argsort(-scores.score[valid], kind="stable")]
    by_id = {r["id"]: r for r in ctx.pool.records}
    heldout = eval_records(ctx)
    tried: list[dict] = []  # every objective call, timed, in call order

    def objective(n: int) -> float:
        started = time.perf_counter()
        loss = finetuned_eval_loss(ctx, [by_id[scores.ids[i]] for i in order[:n]], heldout)
        tried.append({"n": n, "loss": loss, "time": time.perf_counter() - started})
        ctx.log_metrics({"size_search/trial": len(tried), "size_search/n": n, "size_search/loss": loss})  # live
        return loss

    high = min(int(cfg["high"]), len(order))
    if cfg["method"] == "blendsearch":
        best_n, trials = search_subset_size(objective, int(cfg["low"]), high, int(cfg["num_samples"]),
                                            cfg.get("time_budget_s"), int(ctx.cfg.seed), cfg.get("init_n"))
    elif cfg["method"] == "grid":
        for n in sorted({min(int(n), high) for n in cfg["grid"]}):
            objective(n)
        trials = tried
        best_n = min(trials, key=lambda t: t["loss"])["n"]
    else:
        raise SelectlabError(f"selector.method={cfg['method']!r}; choose blendsearch or grid")
    log.info("size search (%s): best n = %d of %d tried sizes", cfg["method"], best_n, len(trials))
    return {"trials": [{"n": t["n"], "loss": t["loss"], "seconds": t.get("time")} for t in trials],
            "best_n": best_n, "source": cfg["method"], "n_candidates": len(order), "n_heldout": len(heldout)}
