"""Evaluation stage: lm-evaluation-harness on a fine-tuned model, then the paper's group means.

``evaluate(model_path, cfg, run_dir)`` runs ``lm_eval.simple_evaluate`` once per entry of
``cfg.eval.tasks`` (each entry has its own shot count; one model instance serves all, loaded
only if some task is not stored), reads the metric the paper reports for it, writes
``<run_dir>/eval_results.json`` and returns the per-task scores (percent) with ``aggregate``'s
group means. The pipeline stores each task of each model as its own artifact
(``stages/evaluation.py``).

Tasks come from ``selectlab/lm_eval_tasks`` (offline copies of the harness's own tasks on
the files under ``selectlab.infra.paths.data_dir()``) or from lm-eval's built-in tasks, which
read the Hugging Face Hub: name one in ``eval.tasks.<key>.lm_eval`` (e.g. ``hellaswag``)
and set ``eval.offline=false`` on a machine online (or have the dataset in the HF cache).
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable

from ..infra import preemption
from ..errors import SelectlabError

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).resolve().parents[1] / "lm_eval_tasks"
ENTRY_FIELDS = ("lm_eval", "num_fewshot", "metric", "filter")


class EvalError(SelectlabError):
    pass


def aggregate(metrics: dict[str, float], groups_cfg: dict[str, list[str]]) -> dict:
    """Group means and their mean, as the ADG paper reports (Reasoning, Knowledge, Code → Avg).

    A group averages the tasks of it that ran; a group missing any task is listed under
    ``missing`` and ``complete`` is False (a group with none of its tasks scores None and
    the average skips it) — the numbers are never presented as full when they are not.
    """
    groups, missing = {}, {}
    for group, tasks in groups_cfg.items():
        present = [metrics[t] for t in tasks if t in metrics]
        absent = [t for t in tasks if t not in metrics]
        if absent:
            missing[group] = absent
            log.warning("eval group %r is incomplete: %s did not run", group, absent)
        groups[group] = sum(present) / len(present) if present else None
    scored = [v for v in groups.values() if v is not None]
    return {"groups": groups, "avg": sum(scored) / len(scored) if scored else None,
            "complete": not missing, "missing": missing}


def _entries(ev: dict) -> dict[str, dict]:
    tasks = ev.get("tasks") or {}
    for key, entry in tasks.items():
        absent = [f for f in ENTRY_FIELDS if f not in (entry or {})]
        if absent:
            raise EvalError(f"eval.tasks.{key} lacks {', '.join(absent)} (each task needs {', '.join(ENTRY_FIELDS)})")
    return tasks


def _names(entry: dict) -> list[str]:
    names = entry["lm_eval"]
    return [names] if isinstance(names, str) else list(names)


@functools.lru_cache(maxsize=4)
def task_manager(*include_paths: str):
    """lm-eval's TaskManager over its own tasks and ``include_paths``; indexing some thousand
    YAMLs takes seconds to a minute, so one index serves every evaluation in a process."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include_paths))


def _go_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    # both libraries read these variables once, at import; a process that imported them earlier is told here
    import datasets.config
    import huggingface_hub.constants

    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def _load_tasks(task_manager, key: str, entry: dict, offline: bool) -> tuple[list, dict]:
    """(top-level Task/Group objects, leaf tasks by name) for one config entry."""
    names = _names(entry)
    try:
        loaded = task_manager.load(names)
    except Exception as err:
        hint = (" If it reads its data from the Hugging Face Hub (lm-eval's built-in tasks, e.g. hellaswag → "
                "Rowan/hellaswag), it builds offline (eval.offline=true) only from the local HF cache: run it once "
                "with eval.offline=false on a machine online, or use an offline task from selectlab/lm_eval_tasks."
                if offline else "")
        raise EvalError(f"eval.tasks.{key}.lm_eval={entry['lm_eval']!r}: lm-eval could not build it "
                        f"({type(err).__name__}: {err}).{hint}") from err
    groups, leaves = loaded.get("groups", {}), loaded["tasks"]
    if len(names) > 1 and any(n not in leaves for n in names):
        raise EvalError(f"eval.tasks.{key}.lm_eval: a list must name single tasks (averaged by size here), "
                        f"not groups or tags: {[n for n in names if n not in leaves]}")
    top = [groups[n] if n in groups else leaves[n] for n in names if n in groups or n in leaves]
    return (top if len(top) == len(names) else list(leaves.values())), leaves  # a tag stands for its tasks


def _filters(task) -> list[str]:
    return [f.name for f in getattr(task, "_filters", [])] or ["none"]


def _check_leaves(key: str, entry: dict, leaves: dict, allow_code: bool) -> None:
    unsafe = [n for n, t in leaves.items() if getattr(t, "UNSAFE_CODE", False)]
    if unsafe and not allow_code:
        raise EvalError(f"eval.tasks.{key} ({', '.join(unsafe)}) executes model-generated code; "
                        f"set eval.allow_code_execution=true to allow it (programs run sandboxed, "
                        f"see selectlab/lm_eval_tasks/sandbox.py)")
    for name, task in leaves.items():
        if entry["filter"] not in _filters(task):
            hint = " (set by eval.gsm8k_filter)" if key == "gsm8k" else ""
            raise EvalError(f"eval.tasks.{key}.filter={entry['filter']!r}{hint}: {name} has the filters {_filters(task)}")
    fixed = [n for n, t in leaves.items() if t.get_config("num_fewshot") == 0 and entry["num_fewshot"] != 0]
    if fixed:  # lm-eval would quietly keep 0 shots
        raise EvalError(f"eval.tasks.{key}.num_fewshot={entry['num_fewshot']} but {fixed} fix 0 shots in their YAML")


def _make_lm(model_path: str, ev: dict):
    from lm_eval.api.registry import get_model

    from .models import default_device

    if ev["backend"] not in ("hf", "vllm"):
        raise EvalError(f"eval.backend={ev['backend']!r}; choose hf or vllm")
    args = {"pretrained": str(model_path), "dtype": ev["dtype"], **(ev.get("model_args") or {})}
    device = (ev.get("device") or default_device()) if ev["backend"] == "hf" else None
    return get_model(ev["backend"]).create_from_arg_obj(args, {"batch_size": ev["batch_size"], "device": device})


def _score(key: str, entry: dict, results: dict, filter_name: str) -> dict:
    """The entry's metric under one filter, in percent; a list of tasks is averaged weighted by
    examples, as lm-eval's own groups (bbh, mmlu) aggregate."""
    from lm_eval.api.metrics import aggregate_subtask_metrics, pooled_sample_stderr

    names, metric_key = _names(entry), f"{entry['metric']},{filter_name}"
    stderr_key = f"{entry['metric']}_stderr,{filter_name}"
    rows = [results["results"].get(n, {}) for n in names]
    for name, row in zip(names, rows):
        if metric_key not in row:
            reported = sorted(k for k in row if "_stderr" not in k and k != "alias")
            raise EvalError(f"eval.tasks.{key}: lm-eval reported no {metric_key!r} for {name} "
                            f"(metric,filter pairs it reported: {reported})")
    n_samples = sum(n["effective"] for n in results["n-samples"].values())
    stderrs = [row.get(stderr_key) for row in rows]
    if not all(isinstance(e, (int, float)) and math.isfinite(e) for e in stderrs):
        stderrs = None
    if len(rows) == 1:
        return {"score": 100 * rows[0][metric_key], "stderr": stderrs and 100 * stderrs[0], "n_samples": n_samples}
    sizes = [results["n-samples"][n]["effective"] for n in names]
    return {"score": 100 * aggregate_subtask_metrics([row[metric_key] for row in rows], sizes),
            "stderr": stderrs and 100 * pooled_sample_stderr(stderrs, sizes), "n_samples": n_samples}


def _score_every_filter(key: str, entry: dict, results: dict, leaves: dict) -> dict:
    """The configured filter's score, plus ``by_filter``: the metric under each filter the tasks
    define (GSM8K: strict-match and flexible-extract), so either can be set beside published numbers."""
    chosen = _score(key, entry, results, entry["filter"])
    filters = [f for f in _filters(next(iter(leaves.values()))) if all(f in _filters(t) for t in leaves.values())]
    by_filter = {f: _score(key, entry, results, f)["score"] for f in filters
                 if all(f"{entry['metric']},{f}" in results["results"].get(n, {}) for n in _names(entry))}
    return {**chosen, "by_filter": by_filter}


def per_doc_scores(key: str, entry: dict, results: dict, leaves: list[str]) -> dict[str, float]:
    """The entry's metric per document, in percent, from lm-eval's sample logs: ``{"<task>/<doc_id>":
    score}``; their mean is the task's score for mean-aggregated metrics (acc, exact_match). A metric
    the samples do not carry (a corpus-level one) gives {} and a warning, never a made-up number."""
    scores = {}
    for task in leaves:
        for sample in results.get("samples", {}).get(task, []):
            if sample.get("filter", "none") != entry["filter"]:
                continue
            value = sample.get(entry["metric"])
            if not isinstance(value, (int, float)):
                log.warning("eval.tasks.%s: %s's samples carry no per-doc %r; no per-example scores for it",
                            key, task, entry["metric"])
                return {}
            scores[f"{task}/{sample['doc_id']}"] = 100 * float(value)
    return scores


def evaluate(model_path: str | Path, cfg, run_dir: str | Path | None, task_result: Callable | None = None) -> dict:
    """Run ``cfg.eval`` on the model folder; returns {"metrics": {task: percent}, "groups",
    "avg", "complete", "missing", "tasks": per-task details, "per_example", ...}; {} when eval.name=none.

    Every task is checked before the model loads. ``task_result(key, entry, compute)`` returns one
    task's result; ``compute(folder)`` evaluates the task, writes its lm-eval output
    (``lm_eval_<key>.json``) and per-doc scores (``per_doc_<key>.json``) into ``folder`` and returns
    ``{"details", "per_example", "raw_path"}``. By default each task runs into ``run_dir``; the
    pipeline's stage stores each task as its own artifact, so a killed evaluation redoes at most one
    task. With a ``run_dir``, ``eval_results.json`` there holds the summary and every task's output.
    """
    from omegaconf import OmegaConf

    ev = cfg["eval"]
    ev = OmegaConf.to_container(ev, resolve=True) if OmegaConf.is_config(ev) else dict(ev)
    entries = _entries(ev)
    if ev["name"] == "none" or not entries:
        log.info("eval=%s: nothing to evaluate", ev["name"])
        return {}
    if ev["offline"]:
        _go_offline()
    started = time.time()
    manager = task_manager(str(TASKS_DIR), *map(str, ev.get("task_dirs") or []))
    loaded = {key: _load_tasks(manager, key, entry, ev["offline"]) for key, entry in entries.items()}
    for key, (_, leaves) in loaded.items():
        _check_leaves(key, entries[key], leaves, ev["allow_code_execution"])
    if ev["allow_code_execution"]:
        os.environ["HF_ALLOW_CODE_EVAL"] = "1"  # lm-eval's built-in code tasks check it
    lm: list = []  # the model, loaded by the first task that is not stored

    def compute(key: str, folder: Path) -> dict:
        if not lm:
            lm.append(_make_lm(model_path, ev))
        return run_task(lm[0], manager, loaded[key], key, entries[key], ev, Path(folder))

    if task_result is None:
        task_result = lambda key, entry, run: run(Path(run_dir))  # noqa: E731
    results = {}
    for key, entry in entries.items():
        preemption.check(f"eval task {key}")
        results[key] = task_result(key, entry, functools.partial(compute, key))
    return summarize(results, ev, str(model_path), time.time() - started, run_dir)


def run_task(lm, manager, loaded: tuple[list, dict], key: str, entry: dict, ev: dict, folder: Path) -> dict:
    """One ``eval.tasks`` entry through ``lm_eval.simple_evaluate``; its output files go to ``folder``."""
    from lm_eval import simple_evaluate
    from lm_eval.utils import handle_non_serializable

    top, leaves = loaded
    log.info("eval %s: %s, %d-shot, limit=%s", key, entry["lm_eval"], entry["num_fewshot"], ev["limit"])
    results = simple_evaluate(
        model=lm, tasks=top, num_fewshot=entry["num_fewshot"],
        limit=ev["limit"], batch_size=ev["batch_size"], task_manager=manager, gen_kwargs=ev.get("gen_kwargs") or None,
        apply_chat_template=ev["apply_chat_template"], log_samples=True,  # per-doc scores are always kept
        bootstrap_iters=ev["bootstrap_iters"], confirm_run_unsafe_code=ev["allow_code_execution"],
    )
    details = {**_score_every_filter(key, entry, results, leaves), "lm_eval": entry["lm_eval"],
               "metric": f"{entry['metric']},{entry['filter']}", "num_fewshot": entry["num_fewshot"],
               "data": sorted({"local" if t.config.custom_dataset else f"hub:{t.config.dataset_path}"
                               for t in leaves.values()})}
    per_example = per_doc_scores(key, entry, results, list(leaves))
    if not ev["log_samples"]:  # the full prompts and responses only on request: they are large
        results.pop("samples", None)
    folder.mkdir(parents=True, exist_ok=True)
    raw_path = folder / f"lm_eval_{key}.json"
    raw_path.write_text(json.dumps(results, indent=2, default=handle_non_serializable))
    (folder / f"per_doc_{key}.json").write_text(json.dumps(per_example))
    log.info("eval %s: %s = %.2f", key, details["metric"], details["score"])
    return {"details": details, "per_example": per_example, "raw_path": str(raw_path)}


def summarize(results: dict[str, dict], ev: dict, model_path: str, wall_s: float, run_dir: str | Path | None) -> dict:
    """The per-task results of one model assembled: metrics, the paper's group means, per-doc scores."""
    details = {key: r["details"] for key, r in results.items()}
    metrics = {key: d["score"] for key, d in details.items()}
    summary = {"metrics": metrics, **aggregate(metrics, ev.get("groups") or {}), "tasks": details,
               "model_path": model_path, "backend": ev["backend"], "limit": ev["limit"],
               "gen_kwargs": ev.get("gen_kwargs") or None, "wall_s": wall_s}
    out = {**summary, "per_example": {key: r["per_example"] for key, r in results.items()}}
    if run_dir is not None:
        path = Path(run_dir) / "eval_results.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = {key: json.loads(Path(r["raw_path"]).read_text()) for key, r in results.items()}
        path.write_text(json.dumps({"summary": summary, "lm_eval": raw}, indent=2))
        out["results_path"] = str(path)
    return out
