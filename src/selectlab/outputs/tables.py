"""The tables and summaries a run logs to its tracker (W&B): scores, subset, stage timings, results."""
from __future__ import annotations

import logging

import numpy as np

from ..scorers import Scores
from .tracking import Tracker


log = logging.getLogger(__name__)


def finite(x) -> float | None:
    """A JSON-safe number: NaN and infinities become None."""
    return float(x) if np.isfinite(x) else None


def log_scores(tracker: Tracker, scores: Scores, table_rows: int) -> None:
    tracker.log_histograms({"score": scores.score, **scores.columns})
    names = ["score", *scores.columns]
    rows = [[scores.ids[i], *[finite(c[i]) for c in [scores.score, *scores.columns.values()]]]
            for i in range(min(len(scores.ids), table_rows))]
    tracker.log_table("scores", ["id", *names], rows)


def log_subset(tracker: Tracker, subset: list[dict]) -> None:
    columns = ["id", "rank", "score", "instruction", "input", "output"]
    tracker.log_table("subset", columns, [[r[c] for c in columns] for r in subset])


def log_size_search(tracker: Tracker, search: dict) -> None:
    tracker.log_table("size_search", ["n", "loss", "seconds"],
                      [[t["n"], t["loss"], t["seconds"]] for t in search["trials"]])


def log_stage_timings(tracker: Tracker, events) -> None:
    tracker.log_table("stage_timings", ["stage", "key", "reused", "seconds", "batches_reused", "batches_computed"],
                      [[e.stage, e.key, e.reused, round(e.seconds, 3), e.batches_reused, e.batches_computed]
                       for e in events])


def log_results(tracker: Tracker, rows: list[dict], groups: dict[str, list[str]] | None = None) -> None:
    """The paper-shaped tables: ``results``, one row per model (per-task metrics, group means, its
    seed), and ``results_summary``, one row per method with mean ± std over seeds and the paired
    difference to random with its bootstrap CI (selectlab.outputs.stats)."""
    from .stats import summarize, summary_columns

    tasks = list(dict.fromkeys(t for r in rows for t in r["metrics"]))
    groups_seen = list(dict.fromkeys(g for r in rows for g in r["groups"]))
    tracker.log_table("results", ["label", "scorer", "n_train", *tasks, *groups_seen, "avg", "complete", "seed"],
                      [[r["label"], r["scorer"], r["n_train"], *[r["metrics"].get(t) for t in tasks],
                        *[r["groups"].get(g) for g in groups_seen], r["avg"], r["complete"], r.get("seed")]
                       for r in rows])
    summaries = summarize(rows, groups)
    columns = summary_columns(summaries)
    tracker.log_table("results_summary", columns, [[_none_for_nan(s.get(c)) for c in columns] for s in summaries])
    _summarize_rows(tracker, rows)
    _log_differences(summaries, [*tasks, *groups_seen, "Avg"])


def _summarize_rows(tracker: Tracker, rows: list[dict]) -> None:
    repeated = {label for label in (r["label"] for r in rows) if sum(x["label"] == label for x in rows) > 1}
    for r in rows:
        seed = f"/s{r['seed']}" if r["label"] in repeated else ""  # keys as before for one row per label
        values = {**r["metrics"], **r["groups"], "avg": r["avg"]}
        tracker.summary({f"{r['label']}{seed}/{k}": v for k, v in values.items()})
        log.info("%10s (%s, n=%s, seed %s): %s", r["label"], r["scorer"], r["n_train"], r.get("seed"),
                 ", ".join(f"{g} {v:.3f}" for g, v in values.items() if v is not None))


def _log_differences(summaries: list[dict], metrics: list[str]) -> None:
    for s in summaries:
        cis = [f"{m} Δ {s[m + ' Δ']:+.3f} [{s[m + ' CI low']:+.3f}, {s[m + ' CI high']:+.3f}]"
               f"{'' if s[m + ' significant'] else ' n.s.'}" for m in metrics if f"{m} Δ" in s]
        if cis:
            log.info("%10s %s vs random (%d seed(s)): %s", s["label"], s["scorer"], s["n_seeds"], "; ".join(cis))


def _none_for_nan(v):
    """W&B tables take None, not NaN, for a missing number."""
    return None if isinstance(v, float) and v != v else v
