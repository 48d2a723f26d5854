"""Mean ± std over seeds and the paired difference to random with a bootstrap CI.

Each results row (one fine-tuned model) carries per-example scores for every eval metric
(lm-eval's per-doc scores in percent, the held-out loss per example). A method's rows are its
seeds. The difference to random is mean(method) − mean(random) over seeds and examples; its
95% CI is the percentile bootstrap that resamples the eval examples (the same resample for
both sides: the pairing by example removes the between-example variance they share) and,
when a side has several seeds, that side's seeds (independently: the method's seed-s model
and random's seed-s model share a training seed but not their data, so nothing pairs them).
A CI that covers 0 is marked not significant. The pipeline (W&B ``results_summary`` table)
and ``analysis.runs`` both call :func:`summarize`; each method draws its resamples from its own
random stream (seeded by the seed and the method's label, scorer, variant and size), so its CI
is the same number in a one-run table and in a whole sweep's.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict

import numpy as np

LOWER_IS_BETTER = {"heldout_loss"}
N_BOOT = 2000
LEVEL = 0.95


def _mean_per_seed_replicates(values: np.ndarray, counts: np.ndarray, seed_picks: np.ndarray | None) -> np.ndarray:
    """(n_boot,) means of ``values`` (seeds × examples) under example resamples ``counts``
    (n_boot × examples, multinomial counts) and seed resamples ``seed_picks`` (n_boot × seeds)."""
    per_seed = counts @ values.T / values.shape[1]  # n_boot × seeds
    if seed_picks is None:
        return per_seed.mean(axis=1)
    return np.take_along_axis(per_seed, seed_picks, axis=1).mean(axis=1)


def _seed_picks(rng: np.random.Generator, n_seeds: int, n_boot: int) -> np.ndarray | None:
    return rng.integers(0, n_seeds, size=(n_boot, n_seeds)) if n_seeds > 1 else None


def difference_replicates(method: np.ndarray, baseline: np.ndarray, rng: np.random.Generator, n_boot: int = N_BOOT,
                          method_picks: np.ndarray | None = None, baseline_picks: np.ndarray | None = None) -> np.ndarray:
    """Bootstrap replicates of mean(method) − mean(baseline); both are seeds × examples arrays over
    the same examples in the same order. ``*_picks``: seed resamples to share with other metrics
    (drawn here when None and the side has several seeds)."""
    method, baseline = np.atleast_2d(np.asarray(method, float)), np.atleast_2d(np.asarray(baseline, float))
    if method.shape[1] != baseline.shape[1]:
        raise ValueError(f"paired bootstrap: {method.shape[1]} vs {baseline.shape[1]} examples")
    n = method.shape[1]
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)
    if method_picks is None:
        method_picks = _seed_picks(rng, method.shape[0], n_boot)
    if baseline_picks is None:
        baseline_picks = _seed_picks(rng, baseline.shape[0], n_boot)
    return (_mean_per_seed_replicates(method, counts, method_picks)
            - _mean_per_seed_replicates(baseline, counts, baseline_picks))


def interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval; ``lower`` is the (1-level)/2 quantile, with numpy's linear interpolation."""
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(low), float(high)


def paired_difference(method: np.ndarray, baseline: np.ndarray, n_boot: int = N_BOOT, seed: int = 0,
                      level: float = LEVEL) -> dict:
    """{"diff", "low", "high", "significant"} for one metric (arrays: seeds × examples)."""
    method, baseline = np.atleast_2d(np.asarray(method, float)), np.atleast_2d(np.asarray(baseline, float))
    replicates = difference_replicates(method, baseline, np.random.default_rng(seed), n_boot)
    low, high = interval(replicates, level)
    diff = float(method.mean() - baseline.mean())
    return {"diff": diff, "low": low, "high": high, "significant": not (low <= 0 <= high)}


def mean_interval(values: np.ndarray, rng: np.random.Generator, n_boot: int = N_BOOT,
                  level: float = LEVEL) -> tuple[float, float, float]:
    """Mean of ``values`` (seeds × examples) and its percentile bootstrap CI, resampling the
    examples and, with several seeds, the seeds (as :func:`difference_replicates` does per side)."""
    values = np.atleast_2d(np.asarray(values, float))
    n = values.shape[1]
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)
    replicates = _mean_per_seed_replicates(values, counts, _seed_picks(rng, values.shape[0], n_boot))
    return (float(values.mean()), *interval(replicates, level))


# ------------------------------------------------------------------ results rows -> summary rows


def _method(row: dict) -> tuple:
    """A method's rows are its seeds; ``variant`` (set by analysis for a sweep over other knobs,
    e.g. "lam=0.2") and the subset size keep settings of one scorer apart (a bin-wise selector
    may return fewer than the budget, and its random baseline is drawn at its size)."""
    return row["label"], row["scorer"], row.get("variant") or "", row.get("n_train")


def dedupe_rows(rows: list[dict]) -> list[dict]:
    """A row shared by several runs of a sweep (the untrained and random models are cached
    artifacts) once: same label, scorer, variant, seed, and the same model path or the same per-example
    scores (the same fine-tune stored under two keys, e.g. by two code versions, counts once)."""
    seen, out = set(), []
    for r in rows:
        base = (r["label"], r["scorer"], r.get("variant"), r.get("seed"), r.get("n_train"))
        keys = {(*base, "model", r.get("model"))}
        if r.get("per_example"):
            keys.add((*base, "scores", json.dumps(r["per_example"], sort_keys=True)))
        if not keys & seen:
            out.append(r)
        seen |= keys
    return out


def _per_example_matrix(rows: list[dict], metric: str) -> tuple[list[str], np.ndarray] | None:
    """(example ids, seeds × examples) of ``metric``, or None when a row lacks its per-example scores."""
    maps = [(r.get("per_example") or {}).get(metric) for r in rows]
    if not maps or any(not m for m in maps):
        return None
    ids = sorted(maps[0])
    for r, m in zip(rows, maps):
        if sorted(m) != ids:
            raise ValueError(f"per-example {metric}: row {r['label']}/{r['scorer']} seed {r.get('seed')} scored "
                             f"other examples than row {rows[0]['label']}/{rows[0]['scorer']} seed {rows[0].get('seed')}")
    return ids, np.array([[m[i] for i in ids] for m in maps], dtype=float)


def _mean_std(values: list[float | None]) -> tuple[float, float]:
    finite = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not finite:
        return math.nan, math.nan
    return float(np.mean(finite)), float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan


def summarize(rows: list[dict], groups: dict[str, list[str]] | None = None, n_boot: int = N_BOOT, seed: int = 0,
              level: float = LEVEL) -> list[dict]:
    """One summary row per method (label, scorer): per metric (tasks, groups, Avg) the mean and
    std over its seeds, and, against the random rows, the difference ``Δ`` with its CI and
    ``significant`` (False when the CI covers 0; absent without per-example scores or random rows).

    ``groups``: the eval config's groups; the CI of a group mean / Avg combines its tasks'
    replicates (each task's examples resampled, seeds resampled once for all tasks)."""
    rows = dedupe_rows(rows)
    by_method: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        by_method[_method(r)].append(r)
    metrics = list(dict.fromkeys(m for r in rows for m in r.get("metrics") or {}))
    group_names = list(dict.fromkeys(g for r in rows for g in r.get("groups") or {}))
    groups = {g: list(ts) for g, ts in (groups or {}).items() if g in group_names}
    out = []
    for (label, scorer, variant, n_train), method_rows in by_method.items():
        summary = {"label": label, "scorer": scorer, **({"variant": variant} if variant else {}), "n_train": n_train,
                   "n_seeds": len(method_rows), "seeds": [r.get("seed") for r in method_rows]}
        # random at the same size (the untrained row is compared with every random size: the first)
        baseline = [r for r in rows if _method(r)[:2] == ("random", "random") and r.get("n_train") == n_train] \
            or [r for r in rows if _method(r)[:2] == ("random", "random")]
        baseline = [r for r in baseline if r.get("n_train") == baseline[0].get("n_train")] if baseline else None
        columns = {**{m: [(r.get("metrics") or {}).get(m) for r in method_rows] for m in metrics},
                   **{g: [(r.get("groups") or {}).get(g) for r in method_rows] for g in group_names},
                   "Avg": [r.get("avg") for r in method_rows]}
        for name, values in columns.items():
            summary[name], summary[f"{name} std"] = _mean_std(values)
        if baseline and (label, scorer) != ("random", "random"):
            rng = method_rng(seed, (label, scorer, variant, n_train))
            summary.update(_differences(method_rows, baseline, metrics, groups, rng, n_boot, level))
        out.append(summary)
    return out


def method_rng(seed: int, method: tuple) -> np.random.Generator:
    """The bootstrap stream of one method: the same whichever other rows share its table."""
    digest = hashlib.sha256(repr(tuple(str(x) for x in method)).encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def _differences(method_rows, baseline_rows, metrics, groups, rng, n_boot, level) -> dict:
    method_picks = _seed_picks(rng, len(method_rows), n_boot)
    baseline_picks = _seed_picks(rng, len(baseline_rows), n_boot)
    replicates, point = {}, {}
    for metric in metrics:
        a, b = _per_example_matrix(method_rows, metric), _per_example_matrix(baseline_rows, metric)
        if a is None or b is None:
            continue
        if a[0] != b[0]:
            raise ValueError(f"per-example {metric}: {method_rows[0]['scorer']} and random scored other examples")
        replicates[metric] = difference_replicates(a[1], b[1], rng, n_boot, method_picks, baseline_picks)
        point[metric] = float(a[1].mean() - b[1].mean())
    for group, tasks in groups.items():
        if all(t in replicates for t in tasks):
            replicates[group] = np.mean([replicates[t] for t in tasks], axis=0)
            point[group] = float(np.mean([point[t] for t in tasks]))
    scored_groups = [g for g in groups if g in replicates]
    if scored_groups and len(scored_groups) == len(groups):
        replicates["Avg"] = np.mean([replicates[g] for g in scored_groups], axis=0)
        point["Avg"] = float(np.mean([point[g] for g in scored_groups]))
    out = {}
    for name, reps in replicates.items():
        low, high = interval(reps, level)
        out.update({f"{name} Δ": point[name], f"{name} CI low": low, f"{name} CI high": high,
                    f"{name} significant": not (low <= 0 <= high)})
    return out


def summary_columns(summaries: list[dict]) -> list[str]:
    """Column order of the summary table: the method, then per metric mean, std, Δ, CI, significance."""
    fixed = ["label", "scorer", *(["variant"] if any("variant" in s for s in summaries) else []), "n_train",
             "n_seeds"]
    names = list(dict.fromkeys(k for s in summaries for k in s if k not in fixed and k != "seeds"
                               and not k.endswith((" std", " Δ", " CI low", " CI high", " significant"))))
    suffixes = ["", " std", " Δ", " CI low", " CI high", " significant"]
    return fixed + [f"{n}{s}" for n in names for s in suffixes if any(f"{n}{s}" in x for x in summaries)]
