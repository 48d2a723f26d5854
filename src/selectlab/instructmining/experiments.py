"""InstructMining's experiments on the real stages: each point is a real fine-tune.

- ``finetuned_eval_loss``: fine-tune the backbone on a subset (train stage), then the mean
  response-token loss on a held-out eval pool (Self-Instruct seed tasks by default, as the
  paper samples its eval set from Self-Instruct). Cached per (subset, train cfg, eval set).
- ``size_search`` (``selector=blendsearch`` / ``selector=size_grid``): the loss of the top-n
  by score for each n tried, the best n selected; the trials go in the subset artifact's meta
  (the pipeline writes them to ``size_search.json`` for the double-descent figure).
- ``fit_rule_task`` (``task=fit_rule``, ``experiment=im_fit_cpu``): M random subsets, each
  fine-tuned and evaluated, then least squares of log loss on subset-mean indicators; the
  fitted rule is saved as ``<run_dir>/fitted_<name>.yaml`` (copy it into conf/scorer/rule/ to use it).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from ..errors import SelectlabError
from ..paths import safe_component
from ..pools import load_pool
from ..store import atomic_write_text, content_hash, write_jsonl
from .fit import fit_experiment, save_rule_yaml
from .search import search_subset_size

log = logging.getLogger(__name__)

EVAL_LOSS_VERSION = 1


def _plain(node):
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def eval_records(ctx) -> list[dict]:
    """The held-out eval set (``heldout`` config), drawn from the examples not in the training pool."""
    from ..heldout import heldout_records

    return heldout_records(_plain(ctx.cfg.heldout), ctx.pool.records, int(ctx.cfg.seed))


def finetuned_eval_loss(ctx, subset: list[dict], heldout: list[dict]) -> float:
    from ..train import eval_loss, finetune

    train_cfg = _plain(ctx.cfg.train)
    heldout_key = content_hash([r["id"] for r in heldout] + [r["output"] for r in heldout])
    subset_key = content_hash(sorted(r["id"] for r in subset))
    key = ctx.store.key("eval_loss", EVAL_LOSS_VERSION, subset=subset_key, pool=ctx.pool_key, train=train_cfg,
                        backbone=_plain(ctx.cfg.backbone), heldout=heldout_key)

    def make(tmp: Path) -> dict:
        model = finetune(subset, ctx.backbone(), train_cfg, ctx.store, {"subset": subset_key})
        loss = eval_loss(model, heldout, template=train_cfg.get("template", "alpaca"),
                         max_length=int(train_cfg.get("max_length", 512)))
        atomic_write_text(tmp / "loss.json", json.dumps({"loss": loss, "n_train": len(subset), "model": model}))
        return {}

    folder = ctx.store.build("eval_loss", key, make)
    return json.loads((folder / "loss.json").read_text())["loss"]


def size_search(scores, budget: int, cfg: dict, ctx) -> list[int]:
    """Pick the subset size by fine-tuning on the top-n (by score) for the n tried."""
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
    out = {"trials": [{"n": t["n"], "loss": t["loss"], "seconds": t.get("time")} for t in trials],
           "best_n": best_n, "source": cfg["method"], "n_candidates": len(order), "n_heldout": len(heldout)}
    log.info("size search (%s): best n = %d of %d tried sizes", cfg["method"], best_n, len(trials))
    from ..selectors import Selection

    # The trials travel in the subset artifact's meta: a cached rerun logs them the same way.
    return Selection(order[:best_n].tolist(), meta={"size_search": out})


def fit_rule_task(ctx, tracker) -> dict:
    """Fit InstructMining's rule on our own fine-tunes and save it as a rule config."""
    from ..scorers.instructmining import compute_indicators

    fit_cfg = _plain(ctx.cfg.fit)
    names = list(fit_cfg["indicators"])
    columns, _counts = compute_indicators(ctx, names)
    heldout = eval_records(ctx)
    result, table = fit_experiment(ctx.pool.records, columns, int(fit_cfg["subsets"]), int(fit_cfg["subset_size"]),
                                   int(ctx.cfg.seed), lambda subset: finetuned_eval_loss(ctx, subset, heldout))
    run_dir = Path(ctx.cfg.run_dir)
    write_jsonl(run_dir / "fit_data.jsonl", table)
    train = ctx.cfg.train
    provenance = (f"fitted by selectlab on {len(table)} fine-tunes of {ctx.cfg.backbone.name} (train={train.name}, "
                  f"lr={train.lr}, epochs={train.epochs}) on random {fit_cfg['subset_size']}-example subsets of "
                  f"{ctx.pool.name}; eval loss on {len(heldout)} held-out {ctx.cfg.heldout.name} examples; "
                  f"R2={result['r2']:.3f}, adjusted R2={result['adj_r2']:.3f}")
    # Into the run folder only: a run never edits conf/. Promoting a rule is a deliberate copy
    # (README, InstructMining); fit.name is made one safe file name first.
    target = save_rule_yaml(result, result["names"], run_dir / f"fitted_{safe_component(fit_cfg['name'])}.yaml",
                            provenance)
    tracker.log_table("fit_data", list(table[0]), [list(r.values()) for r in table])
    tracker.summary({"fit/r2": result["r2"], "fit/adj_r2": result["adj_r2"], "fit/intercept": result["intercept"],
                     **{f"fit/{n}": c for n, c in zip(result["names"], result["coefficients"])}})
    log.info("fitted rule (R2 %.3f, adjusted %.3f): %.4f %s -> %s", result["r2"], result["adj_r2"], result["intercept"],
             " ".join(f"{c:+.4g}(±{e:.2g})*{n}" for n, c, e in zip(result["names"], result["coefficients"],
                                                              result["std_errors"])), target)
    log.info("to use it: cp %s conf/scorer/rule/ && python src/run.py scorer=instructmining scorer/rule=%s",
             target, target.stem)
    return {**result, "rule_config": str(target), "fit_data": str(run_dir / "fit_data.jsonl")}
