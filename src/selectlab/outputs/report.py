"""Per-run selection report: one PNG that shows what the selector kept.

Panels: the score distribution of the pool vs the selected subset; the same for every
per-example column the scorer logged (ADG's D and I, InstructMining's indicators ...); the
semantic-bin coverage when bins are given; the top-5 and bottom-5 examples of the pool by
score with their instruction (and first sampled answer when answers are given). The
pipeline writes it to ``<run_dir>/selection_report.png`` and logs it to W&B as an image.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from ..scorers import Scores

MAX_COLUMN_PANELS = 6


def _hist(ax, pool: np.ndarray, selected: np.ndarray, name: str) -> None:
    pool, selected = pool[np.isfinite(pool)], selected[np.isfinite(selected)]
    if not len(pool):
        ax.text(0.5, 0.5, f"{name}: no finite values", ha="center", va="center", transform=ax.transAxes)
        return
    lo, hi = float(pool.min()), float(pool.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1, 31)
    ax.hist(pool, edges, color="0.65", label=f"pool (n={len(pool)})")
    ax.hist(selected, edges, color="tab:orange", alpha=0.85, label=f"selected (n={len(selected)})")
    ax.set_title(name, fontsize=10)
    ax.legend(fontsize=7)


def _line(text: str, width: int) -> str:
    return textwrap.shorten(" ".join(str(text).split()), width=width, placeholder=" ...")


def _examples(ax, scores: Scores, order: np.ndarray, chosen: set[str], records_by_id: dict,
              answers: dict[str, list[str]] | None, title: str) -> None:
    ax.axis("off")
    lines = [title]
    for i in order:
        rid = scores.ids[i]
        mark = "*" if rid in chosen else " "
        extras = " ".join(f"{k}={v[i]:.3g}" for k, v in list(scores.columns.items())[:3])
        lines.append(f"{mark} {scores.score[i]:.4g}  {rid}  {extras}")
        lines.append(f"    Q: {_line(records_by_id[rid]['instruction'], 110)}")
        if answers and answers.get(rid):
            lines.append(f"    A1: {_line(answers[rid][0], 108)}")
    ax.text(0, 1, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=7.5, transform=ax.transAxes)


def selection_report(scores: Scores, subset: list[dict], records_by_id: dict, run_dir: Path,
                     bins: np.ndarray | None = None, answers: dict[str, list[str]] | None = None) -> Path:
    """Write ``<run_dir>/selection_report.png`` and return its path.

    ``subset``: the selected rows (need ``id``); ``records_by_id``: pool records by id (for the
    instruction text); ``bins``: semantic-bin label per entry of ``scores.ids`` (binwise
    selector); ``answers``: sampled answers per id (ADG), the first is shown.
    """
    from matplotlib.figure import Figure

    if bins is not None and len(bins) != len(scores.ids):
        raise ValueError(f"selection_report: {len(bins)} bin labels for {len(scores.ids)} scored examples")
    chosen = {r["id"] for r in subset}
    unknown = chosen - set(scores.ids)
    if unknown:
        raise ValueError(f"selection_report: {len(unknown)} selected ids are not in the scores, e.g. {sorted(unknown)[:3]}")
    mask = np.array([i in chosen for i in scores.ids])
    columns = list(scores.columns.items())[:MAX_COLUMN_PANELS]
    panels = [("score", scores.score), *columns] + ([("bins", None)] if bins is not None else [])
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(5 * ncols, 3.2 * nrows + 4.4))
    grid = fig.add_gridspec(nrows + 2, ncols, height_ratios=[3.2] * nrows + [2.2, 2.2])
    for p, (name, values) in enumerate(panels):
        ax = fig.add_subplot(grid[p // ncols, p % ncols])
        if values is not None:
            _hist(ax, values, values[mask], name)
            continue
        labels, pool_counts = np.unique(bins, return_counts=True)
        sel_counts = np.array([np.sum(mask & (bins == b)) for b in labels])
        top = np.argsort(-pool_counts, kind="stable")[:40]
        ax.bar(range(len(top)), pool_counts[top], color="0.65", label="pool")
        ax.bar(range(len(top)), sel_counts[top], color="tab:orange", label="selected")
        ax.set_title(f"bins: {np.sum(sel_counts > 0)} of {len(labels)} covered (largest {len(top)} shown)",
                     fontsize=10)
        ax.set_xlabel("bin (by pool size)")
        ax.legend(fontsize=7)
    valid = np.flatnonzero(np.isfinite(scores.score))
    ranked = valid[np.argsort(-scores.score[valid], kind="stable")]
    n_nan = len(scores.ids) - len(valid)
    _examples(fig.add_subplot(grid[nrows, :]), scores, ranked[:5], chosen, records_by_id, answers,
              f"top 5 of the pool by score (* = selected; {len(chosen)} of {len(scores.ids)} selected, "
              f"{n_nan} not selectable)")
    _examples(fig.add_subplot(grid[nrows + 1, :]), scores, ranked[::-1][:5], chosen, records_by_id, answers,
              "bottom 5 of the pool by score")
    path = Path(run_dir) / "selection_report.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    # the panel names go in the PNG's metadata, so a reader (or a test) can tell what was drawn
    fig.savefig(path, dpi=100, bbox_inches="tight",
                metadata={"Description": "panels: " + ", ".join(name for name, _ in panels)})
    return path
