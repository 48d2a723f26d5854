"""Find run folders and turn what they left into tidy pandas tables.

A run folder is one holding ``manifest.json`` (written by ``selectlab.pipeline.run``);
next to it may lie ``subset.jsonl``, ``results.json`` and ``size_search.json``. A file
that cannot be read is reported with a warning naming it, never skipped silently.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
from selectlab.infra.paths import localize, run_places

DEFAULT_ROOTS = ("outputs", "multirun")
RUN_COLUMNS = ["run_dir", "run", "pool", "backbone", "scorer", "selector", "budget", "seed", "layers", "k", "lam",
               "n_pool", "n_selected", "status"]


# results.json group keys (the eval config's ``groups``) -> the papers' column names; others keep their key.
GROUP_COLUMNS = {"reasoning": "Reasoning", "knowledge": "Knowledge", "code": "Code", "openllm": "OpenLLM"}


class RunFileWarning(UserWarning):
    """A run file exists but could not be used; the message names it."""


def _roots(roots: str | Path | Iterable[str | Path]) -> list[Path]:
    return [Path(roots)] if isinstance(roots, (str, Path)) else [Path(r) for r in roots]


def find_run_dirs(roots: str | Path | Iterable[str | Path] = DEFAULT_ROOTS) -> list[Path]:
    """Every folder under ``roots`` that holds a ``manifest.json`` (missing roots are skipped)."""
    found = {p.parent.resolve() for root in _roots(roots) if root.exists() for p in root.rglob("manifest.json")}
    return sorted(found)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        warnings.warn(f"{path}: unreadable ({e}); left out of the table", RunFileWarning, stacklevel=3)
        return None
    if not isinstance(data, dict):
        warnings.warn(f"{path}: expected a JSON object, got {type(data).__name__}; left out", RunFileWarning,
                      stacklevel=3)
        return None
    return data


def load_manifest(run_dir: Path) -> dict | None:
    """The manifest, or None (with a warning naming the file) when it is unreadable or has no config.
    Its places (``run:``, ``cache:``, ``data:``) are resolved on this machine (``selectlab.infra.paths``)."""
    path = Path(run_dir) / "manifest.json"
    manifest = _read_json(path)
    manifest = None if manifest is None else localize(manifest, run_places(run_dir))
    if manifest is not None and not isinstance(manifest.get("config"), dict):
        warnings.warn(f"{path}: no 'config' object (not a selectlab manifest?); left out", RunFileWarning,
                      stacklevel=2)
        return None
    return manifest


def _get(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _nan(x):
    return math.nan if x is None else x


def run_info(run_dir: Path, manifest: dict) -> dict:
    """The knobs that tell runs apart: one flat dict per run."""
    cfg = manifest["config"]
    layers = _get(cfg, "embedding.layers")
    return {
        "run_dir": str(run_dir),
        "run": manifest.get("run"),
        "pool": _get(cfg, "pool.name"),
        "backbone": _get(cfg, "backbone.name"),
        "scorer": _get(cfg, "scorer.name"),
        "selector": _get(cfg, "selector.name"),
        "budget": _nan(_get(cfg, "selection.budget")),
        "seed": _nan(_get(cfg, "seed")),
        "layers": None if layers is None else ",".join(str(x) for x in layers),
        "k": _nan(_get(cfg, "sampler.k")),
        "lam": _nan(_get(cfg, "scorer.lam")),
        "n_pool": _nan((manifest.get("pool") or {}).get("n")),
        "n_selected": _nan(manifest.get("n_selected")),
        "status": "shard_incomplete" if manifest.get("shard_incomplete") else
                  "selected" if "n_selected" in manifest else "no_subset",
    }


def load_results(run_dir: Path) -> list[dict]:
    """The evaluated rows of ``results.json`` ([] when the run did not evaluate)."""
    path = Path(run_dir) / "results.json"
    if not path.exists():
        return []
    data = _read_json(path)
    if data is None:
        return []
    rows = data.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "label" in r for r in rows):
        warnings.warn(f"{path}: 'rows' must be a list of objects with a 'label'; left out", RunFileWarning,
                      stacklevel=2)
        return []
    return localize(rows, run_places(run_dir))


def runs_table(roots: str | Path | Iterable[str | Path] = DEFAULT_ROOTS) -> pd.DataFrame:
    """One row per run and evaluated model (``label``: untrained | random | selected).

    Columns: :data:`RUN_COLUMNS`, then ``label``, ``eval_scorer``, ``n_train``, one column per
    benchmark (value in percent), one per group mean (named by :data:`GROUP_COLUMNS`:
    Reasoning, Knowledge, Code) and ``Avg``, the mean of the groups that ran (as the ADG paper
    reports it). A run without results gives one row with NaN metrics.
    """
    rows = []
    for run_dir in find_run_dirs(roots):
        manifest = load_manifest(run_dir)
        if manifest is None:
            continue
        info = run_info(run_dir, manifest)
        results = load_results(run_dir)
        if not results:
            rows.append({**info, "label": None, "eval_scorer": None, "n_train": math.nan})
        for r in results:
            groups = {GROUP_COLUMNS.get(g, g): _nan(v) for g, v in (r.get("groups") or {}).items()}
            # Avg as the pipeline computed it (the mean of the groups that ran; older rows: recomputed)
            scored = [v for v in groups.values() if not math.isnan(v)]
            avg = r["avg"] if "avg" in r else (sum(scored) / len(scored) if scored else None)
            metrics = {**{k: _nan(v) for k, v in (r.get("metrics") or {}).items()}, **groups, "Avg": _nan(avg)}
            rows.append({**info, "label": r["label"], "eval_scorer": r.get("scorer"),
                         "n_train": _nan(r.get("n_train")), "train_seed": _nan(r.get("seed")), **metrics})
    return pd.DataFrame(rows, columns=None if rows else [*RUN_COLUMNS, "label", "eval_scorer", "n_train"])


def size_search_table(roots: str | Path | Iterable[str | Path] = DEFAULT_ROOTS) -> pd.DataFrame:
    """One row per size-search trial: the run's knobs, then n, loss, seconds, best_n, search source."""
    rows = []
    for root in _roots(roots):
        if not root.exists():
            continue
        for path in sorted(root.rglob("size_search.json")):
            data = _read_json(path)
            if data is None:
                continue
            trials = data.get("trials")
            if not isinstance(trials, list) or not all(isinstance(t, dict) and {"n", "loss"} <= t.keys()
                                                       for t in trials):
                warnings.warn(f"{path}: 'trials' must be a list of objects with 'n' and 'loss'; left out",
                              RunFileWarning, stacklevel=2)
                continue
            manifest = load_manifest(path.parent) if (path.parent / "manifest.json").exists() else None
            info = run_info(path.parent, manifest) if manifest else {"run_dir": str(path.parent)}
            for order, t in enumerate(trials):
                rows.append({**info, "trial": order, "n": int(t["n"]), "loss": float(t["loss"]),
                             # selectlab.instructmining.search names the trial's duration "time"
                             "seconds": _nan(t.get("seconds", t.get("time"))),
                             "best_n": _nan(data.get("best_n")), "search": data.get("source")})
    return pd.DataFrame(rows, columns=None if rows else ["run_dir", "trial", "n", "loss", "seconds", "best_n",
                                                         "search"])


def load_subset(run_dir: Path) -> list[dict]:
    """The run's selected records in rank order (``subset.jsonl``)."""
    from selectlab.infra.store import read_jsonl

    path = Path(run_dir) / "subset.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: the run selected nothing (no subset.jsonl)")
    return read_jsonl(path)


def random_comparison(run_dir: Path, n: int, seed: int = 0) -> list[dict]:
    """A seeded uniform sample of ``n`` records from the run's own pool (same pool config, same seed slice)."""
    import random

    from selectlab.pools import load_pool

    manifest = load_manifest(run_dir)
    if manifest is None:
        raise ValueError(f"{run_dir}/manifest.json: unusable (see the warning above)")
    pool = load_pool(manifest["config"]["pool"], seed=int(manifest["config"]["seed"]))
    if n > len(pool.records):
        raise ValueError(f"{run_dir}: asked for {n} random records from a pool of {len(pool.records)}")
    return random.Random(seed).sample(pool.records, n)


def results_markdown(table: pd.DataFrame) -> str:
    """The evaluated rows as a Markdown table shaped like the ADG paper's Table 1: one row per
    distinct model (the untrained and random rows that several runs share appear once), led by
    the run knobs that vary between the rows (a sweep's λ, K, layers, ...)."""
    rows = table[table["label"].notna()] if "label" in table else table.iloc[0:0]
    if rows.empty:
        return "(no evaluated runs)"
    knobs = [k for k in ("pool", "backbone", "budget", "seed", "layers", "k", "lam")
             if rows[k].astype(str).nunique() > 1]
    seeds = ["train_seed"] if "train_seed" in rows and rows["train_seed"].notna().any() else []
    fixed = [*knobs, "label", "eval_scorer", "n_train", *seeds]
    benches = [c for c in rows.columns if c not in RUN_COLUMNS + fixed + ["train_seed"] + list(GROUP_COLUMNS.values()) + ["Avg"]]
    groups = [c for c in [*GROUP_COLUMNS.values(), "Avg"] if c in rows and rows[c].notna().any()]
    cols = fixed + benches + groups
    rows = rows.drop_duplicates(subset=cols)  # a shared row (same label, size and numbers) once
    def fmt(column: str, v) -> str:
        if pd.isna(v):
            return ""
        return str(int(v)) if column in ("n_train", "train_seed") else f"{v:.2f}" if isinstance(v, float) and column in benches + groups \
            else f"{v:g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    lines += ["| " + " | ".join(fmt(c, r[c]) for c in cols) + " |" for _, r in rows.iterrows()]
    return "\n".join(lines)


VARIANT_KNOBS = ("pool", "backbone", "budget", "layers", "k", "lam")


def _varying_knobs(loaded: list, scorer: str) -> list[str]:
    """The knobs whose value differs between the runs of ``scorer`` (ADG's λ in a λ sweep; a knob
    another scorer lacks, such as λ for IFD, never names a variant)."""
    infos = [info for info, _, _ in loaded if info["scorer"] == scorer]
    return [k for k in VARIANT_KNOBS if len({str(info[k]) for info in infos}) > 1]


def summary_table(roots: str | Path | Iterable[str | Path] = DEFAULT_ROOTS, n_boot: int | None = None) -> pd.DataFrame:
    """One row per method over all runs under ``roots`` (selectlab.outputs.stats.summarize): per metric
    the mean and std over seeds, and the paired difference to random at the same size with its
    95% bootstrap CI over eval examples and seeds (``<metric> Δ``, ``CI low``, ``CI high``,
    ``significant``). Rows several runs share (untrained, random) count once. When a knob other
    than the scorer varies between runs (a λ sweep), the selected rows are told apart by
    ``variant``."""
    from selectlab.outputs.stats import N_BOOT, summarize, summary_columns

    rows, groups = _variant_rows(roots)
    if not rows:
        return pd.DataFrame(columns=["label", "scorer", "n_train", "n_seeds"])
    summaries = summarize(rows, groups, n_boot=n_boot or N_BOOT)
    return pd.DataFrame(summaries, columns=summary_columns(summaries))


def _variant_rows(roots, keep: Callable[[dict], bool] | None = None) -> tuple[list[dict], dict]:
    """Every results row under ``roots`` (selected rows tagged with their ``variant``) and the eval
    groups; ``keep(run_info)`` chooses runs."""
    loaded = []
    for run_dir in find_run_dirs(roots):
        manifest = load_manifest(run_dir)
        if manifest is not None and (keep is None or keep(run_info(run_dir, manifest))):
            loaded.append((run_info(run_dir, manifest), manifest, load_results(run_dir)))
    varying = {info["scorer"]: _varying_knobs(loaded, info["scorer"]) for info, _, _ in loaded}
    rows, groups = [], {}
    for info, manifest, results in loaded:
        groups.update(_get(manifest["config"], "eval.groups") or {})
        variant = ",".join(f"{k}={info[k]}" for k in varying[info["scorer"]])
        rows += [{**r, "variant": variant} if r["label"] == "selected" and variant else r for r in results]
    return rows, groups


# ADG's release defaults along the ablation axes (conf/embedding/release.yaml, conf/sampler, conf/scorer/adg.yaml)
ABLATION_DEFAULTS = {"layers": "-4,-3,-2", "k": 5, "lam": 0.4}


def _same_value(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _on_axis(knob: str, defaults: dict | None) -> Callable[[dict], bool]:
    """Whether an ADG run's ablation knobs other than ``knob`` are at ``defaults`` (the release's)."""
    others = {k: v for k, v in (defaults or ABLATION_DEFAULTS).items() if k != knob}
    return lambda info: all(_same_value(info[k], v) for k, v in others.items())


def _paired_change(after, before, rng, n_boot: int) -> tuple[float, float, float]:
    """(mean of ``after`` − mean of ``before``, 95% CI): seeds × examples matrices scored on the same
    eval examples, so the difference is paired by example (seeds resampled on each side)."""
    from selectlab.outputs.stats import difference_replicates, interval

    low, high = interval(difference_replicates(after, before, rng, n_boot))
    return float(after.mean() - before.mean()), low, high


def ablation_table(roots: str | Path | Iterable[str | Path], knob: str, defaults: dict | None = None,
                   n_boot: int | None = None) -> pd.DataFrame:
    """ADG along one ablation axis: :func:`summary_table` over the runs whose other ablation knobs
    are at ``defaults`` (the release's), the selected rows told apart by ``knob`` alone; each row
    has the paired difference to random at the same size with its 95% CI per metric."""
    from selectlab.outputs.stats import N_BOOT, summarize, summary_columns

    on_axis = _on_axis(knob, defaults)
    # only ``knob`` varies among the kept ADG runs: it names the variant; the baselines' runs all count
    rows, groups = _variant_rows(roots, lambda info: info["scorer"] != "adg" or on_axis(info))
    if not rows:
        return pd.DataFrame(columns=["label", "scorer", "n_train", "n_seeds"])
    summaries = summarize(rows, groups, n_boot=n_boot or N_BOOT)
    return pd.DataFrame(summaries, columns=summary_columns(summaries))


def versus_release(roots: str | Path | Iterable[str | Path], knob: str, defaults: dict | None = None,
                   metric: str = "heldout_loss", n_boot: int | None = None) -> pd.DataFrame:
    """Each value of ``knob`` against the release's value, paired by eval example (seeds resampled on
    each side, as :func:`size_steps`): ``diff`` = value − release, its 95% CI, ``significant``."""
    from selectlab.outputs.stats import N_BOOT, _per_example_matrix, dedupe_rows, method_rng

    release = str((defaults or ABLATION_DEFAULTS)[knob])
    on_axis = _on_axis(knob, defaults)
    rows = dedupe_rows(_variant_rows(roots, lambda info: info["scorer"] == "adg" and on_axis(info))[0])
    by_value: dict[str, list[dict]] = {}
    for r in rows:
        if r["label"] == "selected" and r.get("variant", "").startswith(f"{knob}="):
            by_value.setdefault(r["variant"].split("=", 1)[1], []).append(r)
    base = next((v for v in by_value if _same_value(v, release)), None)
    if base is None:
        return pd.DataFrame(columns=["value", "diff", "low", "high", "significant"])
    reference = _per_example_matrix(by_value[base], metric)[1]
    out = []
    for value, group in by_value.items():
        if value == base:
            continue
        diff, low, high = _paired_change(_per_example_matrix(group, metric)[1], reference,
                                         method_rng(4, (knob, value, metric)), n_boot or N_BOOT)
        out.append({"value": value, "diff": diff, "low": low, "high": high, "significant": low > 0 or high < 0})
    return pd.DataFrame(out)


def size_curve(roots: str | Path | Iterable[str | Path], metric: str = "heldout_loss",
               n_boot: int | None = None) -> pd.DataFrame:
    """``metric`` against training-set size, one row per (method, size): the mean over seeds and
    eval examples with its 95% bootstrap CI (``mean``, ``low``, ``high``, ``n_seeds``), and for
    selected rows the paired difference to random at the same size (``Δ``, ``Δ low``, ``Δ high``,
    ``significant``), from :func:`summary_table`'s per-method streams."""
    from selectlab.outputs.stats import N_BOOT, _per_example_matrix, dedupe_rows, mean_interval, method_rng

    rows = [r for r in dedupe_rows(_variant_rows(roots)[0]) if r["label"] != "untrained"]
    methods: dict[tuple, list[dict]] = {}
    for r in rows:
        methods.setdefault((r["label"], r["scorer"], r.get("n_train")), []).append(r)
    summary = summary_table(roots, n_boot).set_index(["label", "scorer", "n_train"])
    out = []
    for (label, scorer, n), group in sorted(methods.items(), key=lambda kv: (kv[0][0], kv[0][2])):
        matrix = _per_example_matrix(group, metric)
        if matrix is None:
            continue
        mean, low, high = mean_interval(matrix[1], method_rng(1, (label, scorer, n, metric)), n_boot or N_BOOT)
        row = {"label": label, "scorer": scorer, "n_train": n, "n_seeds": len(group), "mean": mean, "low": low,
               "high": high}
        stats = summary.loc[(label, scorer, n)] if (label, scorer, n) in summary.index else None
        if stats is not None and f"{metric} Δ" in stats and pd.notna(stats[f"{metric} Δ"]):
            row.update({"Δ": stats[f"{metric} Δ"], "Δ low": stats[f"{metric} CI low"],
                        "Δ high": stats[f"{metric} CI high"], "significant": bool(stats[f"{metric} significant"])})
        out.append(row)
    return pd.DataFrame(out)


def size_steps(roots: str | Path | Iterable[str | Path], label: str = "selected", metric: str = "heldout_loss",
               n_boot: int | None = None) -> pd.DataFrame:
    """The change of ``metric`` from each size to the next for one method (``label``): the models of
    the two sizes are scored on the same eval examples, so the difference is paired by example
    (seeds resampled on each side); a step whose CI excludes 0 is a significant rise or fall."""
    from selectlab.outputs.stats import N_BOOT, _per_example_matrix, dedupe_rows, method_rng

    rows = [r for r in dedupe_rows(_variant_rows(roots)[0]) if r["label"] == label]
    sizes = sorted({r["n_train"] for r in rows})
    out = []
    for a, b in zip(sizes, sizes[1:]):
        before = _per_example_matrix([r for r in rows if r["n_train"] == a], metric)
        after = _per_example_matrix([r for r in rows if r["n_train"] == b], metric)
        change, low, high = _paired_change(after[1], before[1], method_rng(2, (label, a, b, metric)), n_boot or N_BOOT)
        out.append({"from": a, "to": b, "change": change, "low": low, "high": high,
                    "direction": "rise" if low > 0 else "fall" if high < 0 else "n.s."})
    return pd.DataFrame(out)


def descends_twice(steps: pd.DataFrame) -> bool:
    """A significant fall, later a significant rise, later again a significant fall (for a loss)."""
    seen = ""
    for direction in steps["direction"] if len(steps) else []:
        if direction != "n.s." and (not seen or seen[-1] != direction[0]):
            seen += direction[0]
    return "frf" in seen


def scale_line(roots: str | Path | Iterable[str | Path]) -> str:
    """What the runs under ``roots`` are, for a figure's title: backbone, pool and its size,
    budgets, the fine-tune and the held-out set."""
    manifests = [m for m in (load_manifest(d) for d in find_run_dirs(roots)) if m]
    if not manifests:
        return "no runs"
    c, pool = manifests[0]["config"], manifests[0]["pool"]
    budgets = sorted({m["config"]["selection"]["budget"] for m in manifests}, key=float)
    train = c["train"]
    held = c.get("heldout") or {}
    return (f"{c['backbone']['name']}, {pool['n']:,} of {pool['n_total']:,} {pool['name']}, "
            f"budget{'s' if len(budgets) > 1 else ''} {', '.join(str(b) for b in budgets)}, train {train['name']} "
            f"(lr {train['lr']}, {train['epochs']} epochs), held-out {held.get('limit')} {held.get('name')}")


def pool_size(roots: str | Path | Iterable[str | Path]) -> int | None:
    manifests = [m for m in (load_manifest(d) for d in find_run_dirs(roots)) if m]
    return int(manifests[0]["pool"]["n"]) if manifests else None


def _signed(v: float) -> str:
    return f"{v:+.3g}" if abs(v) < 1 else f"{v:+.2f}"


STAT_SUFFIXES = (" std", " Δ", " CI low", " CI high")  # summary columns beside each metric's mean


def _same_column(table: pd.DataFrame, a: str, b: str) -> bool:
    return all(table[f"{a}{s}"].equals(table[f"{b}{s}"]) if f"{a}{s}" in table and f"{b}{s}" in table
               else (f"{a}{s}" in table) == (f"{b}{s}" in table) for s in ("", *STAT_SUFFIXES))


def summary_markdown(table: pd.DataFrame) -> str:
    """The summary as a Table-1-shaped Markdown table: per metric ``mean ± std`` (over seeds) and
    ``Δ [low, high]`` against random (95% bootstrap CI; "*" when it excludes 0, "n.s." when it covers 0). heldout_loss:
    lower is better, so a negative Δ favours the method. A column equal to an earlier one in every row
    (a group of one task, the Avg of one group) is shown once."""
    from selectlab.outputs.stats import LOWER_IS_BETTER

    if table.empty:
        return "(no evaluated runs)"
    fixed = [c for c in ("label", "scorer", "variant", "n_train", "n_seeds") if c in table]
    metrics = []
    for c in table.columns:  # a column equal to an earlier one (a group of one task, Avg of one group) once
        if c not in fixed and not c.endswith((*STAT_SUFFIXES, " significant")) \
                and table[c].notna().any() and not any(_same_column(table, c, k) for k in metrics):
            metrics.append(c)
    header = fixed + [f"{m} ↓" if m in LOWER_IS_BETTER else m for m in metrics] + [f"{m} Δ vs random" for m in metrics
                                                                                    if f"{m} Δ" in table]

    def mean_std(r, m) -> str:
        if pd.isna(r[m]):
            return ""
        digits = 3 if m in LOWER_IS_BETTER else 2
        std = r.get(f"{m} std")
        return f"{r[m]:.{digits}f}" + ("" if pd.isna(std) else f" ± {std:.{digits}f}")

    def diff(r, m) -> str:
        if pd.isna(r.get(f"{m} Δ")):
            return ""
        mark = " *" if r[f"{m} significant"] else " n.s."
        return f"{_signed(r[m + ' Δ'])} [{_signed(r[m + ' CI low'])}, {_signed(r[m + ' CI high'])}]{mark}"

    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for _, r in table.iterrows():
        cells = [("" if pd.isna(r[c]) else str(int(r[c])) if c in ("n_train", "n_seeds") else str(r[c])) for c in fixed]
        cells += [mean_std(r, m) for m in metrics] + [diff(r, m) for m in metrics if f"{m} Δ" in table]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """python -m analysis.runs [ROOT ...]: the results table of the runs under the roots, then the
    summary over seeds with the paired difference to random and its 95% bootstrap CI."""
    import sys

    roots = (sys.argv[1:] if argv is None else argv) or list(DEFAULT_ROOTS)
    print(results_markdown(runs_table(roots)))
    summary = summary_table(roots)
    if not summary.empty:
        print("\nmean ± std over seeds; Δ = method − random, 95% bootstrap CI over eval examples and seeds "
              "(*: the CI excludes 0; n.s.: it covers 0)\n")
        print(summary_markdown(summary))


if __name__ == "__main__":
    main()
