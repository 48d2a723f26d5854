"""Figures drawn from the tidy tables of :mod:`analysis.runs`, and the headless notebook runner.

    python -m analysis.figures          # = make figures: executes every notebook in notebooks/
    SELECTLAB_RUNS=outputs:multirun SELECTLAB_FIGURES=analysis/figures python -m analysis.figures

Each figure function takes tables, writes one PNG and returns its path. They use
matplotlib's object API (no pyplot state), so they run the same in a kernel, a test or a
headless job. A panel with nothing to show says so in the picture instead of vanishing.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from . import published

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO_ROOT / "notebooks"
DEFAULT_FIGURES = REPO_ROOT / "analysis" / "figures"
# Executed copies of the notebooks (with their outputs) go here, not over the committed sources,
# so `make figures` changes no tracked file but the PNGs whose pictures changed.
EXECUTED = REPO_ROOT / "build" / "notebooks"
METRIC = "Avg"
# Where make figures looks for runs: your own, and the evidence committed with the repository
# (analysis/evidence/: the CPU replication's run folders, manifests and per-example results).
DEFAULT_RUN_ROOTS = ("outputs", "multirun", "analysis/evidence")


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _say(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes, fontsize=9,
            color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])


def _evaluated(runs: pd.DataFrame | None, metric: str, label: str | None = None) -> pd.DataFrame:
    if runs is None or runs.empty or metric not in runs or "label" not in runs:
        return pd.DataFrame()
    rows = runs[np.isfinite(pd.to_numeric(runs[metric], errors="coerce"))]
    return rows if label is None else rows[rows["label"] == label]


def scale_note(runs: pd.DataFrame | None, metric: str) -> str:
    """What the evaluated runs behind a figure are: backbones, pools with their size, and the
    training seeds behind each point (a figure of one seed per point says so)."""
    rows = _evaluated(runs, metric)
    if rows.empty:
        return f"ours: no runs with an evaluated {metric}"
    pools = sorted({f"{p} ({int(n):,} examples)" if pd.notna(n) else str(p)
                    for p, n in zip(rows["pool"], rows["n_pool"])})
    backbones = sorted(set(rows["backbone"].dropna().astype(str)))
    point = [c for c in ("label", "eval_scorer", "n_train", "pool", "backbone", "layers", "k", "lam") if c in rows]
    seeds = rows.groupby([rows[c].astype(str) for c in point]).size()
    span = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}-{seeds.max()}"
    return f"ours: {', '.join(backbones)} on {', '.join(pools)}; {span} seed(s) per point"


def double_descent_figure(trials: pd.DataFrame, runs: pd.DataFrame | None, path: Path,
                          metric: str = METRIC) -> Path:
    """Left: size-search loss vs subset size per run (best size starred). Right: eval ``metric``
    vs training-set size of evaluated models (one line per scorer). Both log-x."""
    fig = Figure(figsize=(11, 4.2))
    left, right = fig.subplots(1, 2)
    if trials is None or trials.empty:
        _say(left, "no size_search.json under the run roots\n(run an InstructMining size search)")
    else:
        for run_dir, t in trials.groupby("run_dir", sort=True):
            t = t.sort_values("n")
            label = " / ".join(str(t[c].iloc[0]) for c in ("scorer", "pool", "search") if c in t) or Path(run_dir).name
            line, = left.plot(t["n"], t["loss"], "o-", ms=4, label=label)
            best = t.loc[t["loss"].idxmin()]
            left.plot([best["n"]], [best["loss"]], "*", ms=14, color=line.get_color())
        left.set_xscale("log")
        left.xaxis.set_major_formatter(ScalarFormatter())
        left.xaxis.set_minor_formatter(NullFormatter())
        left.set_xlabel("subset size n (log)")
        left.set_ylabel("eval loss of the fine-tune on the top-n")
        left.legend(fontsize=8)
    im = published.INSTRUCTMINING_SIZE_SEARCH
    left.set_title(f"size search (paper: best n = {im['best_n']:,} of {im['pool_n']:,})", fontsize=10)

    rows = _evaluated(runs, metric)
    rows = rows[rows["label"] != "untrained"] if not rows.empty else rows
    if rows.empty or rows["n_train"].nunique() < 2:
        _say(right, f"fewer than two training-set sizes with an evaluated '{metric}'\n"
                    "(runs with eval != none and different budgets)")
    else:
        for name, g in rows.groupby(rows["eval_scorer"].fillna(rows["label"])):
            g = g.groupby("n_train")[metric].agg(["mean", "std"]).reset_index()
            right.errorbar(g["n_train"], g["mean"], yerr=g["std"].fillna(0), fmt="o-", ms=4, capsize=3, label=name)
        right.set_xscale("log")
        sizes = sorted(rows["n_train"].unique())
        right.set_xticks(sizes, [f"{n:g}" for n in sizes])  # a narrow log range has no decade ticks
        right.xaxis.set_minor_formatter(NullFormatter())
        right.set_xlabel("training examples (log)")
        right.set_ylabel(f"{metric} (%)")
        right.legend(fontsize=8)
    right.set_title(f"quality vs subset size\n{scale_note(runs, metric)}", fontsize=9)
    return _save(fig, path)


def _knob_values(values: pd.Series) -> list:
    def order(v):
        try:
            return (0, float(str(v).split(",")[0]))
        except ValueError:
            return (1, str(v))
    return sorted(values.dropna().unique(), key=order)


ABLATION_KNOBS = ["pool", "scorer", "selector", "budget", "backbone", "layers", "k", "lam"]


def _ours(ax, runs: pd.DataFrame, knob: str, metric: str, title: str) -> None:
    """One line per set of evaluated selected runs that agree on every other knob and differ in
    ``knob`` (mean ± std over seeds): a change in two knobs at once is no ablation of either."""
    rows = _evaluated(runs, metric, "selected")
    rows = rows[rows[knob].notna()] if not rows.empty and knob in rows else pd.DataFrame()
    fixed = [k for k in ABLATION_KNOBS if k != knob]
    series = [] if rows.empty else [
        (key, g) for key, g in rows.groupby([rows[k].astype(str) for k in fixed], sort=True) if g[knob].nunique() > 1]
    if not series:
        _say(ax, f"no evaluated runs that differ only in {knob}\n(this panel fills in when ablation runs exist)")
    else:
        values = _knob_values(pd.concat([g[knob] for _, g in series]))
        x = {v: i for i, v in enumerate(values)}
        for key, g in series:
            stats = g.groupby(knob)[metric].agg(["mean", "std"])
            info = dict(zip(fixed, key))
            ax.errorbar([x[v] for v in stats.index], stats["mean"], yerr=stats["std"].fillna(0), fmt="o-",
                        capsize=3, label=f"{info['scorer']} / {info['pool']} / {info['backbone']}")
        ax.set_xticks(range(len(values)), [str(v) for v in values], fontsize=8)
        ax.set_ylabel(f"{metric} (%) of the selected subset")
        ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)


def _published(ax, knob: str, title: str) -> None:
    pub = published.adg_ablation(knob)
    bars = ax.bar(range(len(pub)), pub["Avg"], color="0.7")
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(range(len(pub)), [str(v) for v in pub["value"]], fontsize=8)
    ax.set_ylim(pub["Avg"].min() - 3, pub["Avg"].max() + 1.5)
    ax.set_ylabel("Avg (%)")
    ax.set_title(title, fontsize=10)


def ablations_figure(runs: pd.DataFrame | None, path: Path, metric: str = METRIC) -> Path:
    """ADG ablations: published (grey bars, LLaMA3-8B / Alpaca-GPT4) beside ours for the layer
    window and K; ours only for lambda and the backbone (model size)."""
    fig = Figure(figsize=(11, 10))
    axes = fig.subplots(3, 2)
    runs = runs if runs is not None else pd.DataFrame()
    _published(axes[0, 0], "layers", "published: layer window (decoder layers of 32)")
    _ours(axes[0, 1], runs, "layers", metric, "ours: embedding.layers (hidden_states indices)")
    _published(axes[1, 0], "k", "published: K answers per instruction")
    _ours(axes[1, 1], runs, "k", metric, "ours: sampler.k")
    _ours(axes[2, 0], runs, "lam", metric, "ours: scorer.lam (0 = D only, 1 = I only)")
    _ours(axes[2, 1], runs, "backbone", metric, "ours: backbone (model size)")
    fig.suptitle(f"ADG ablations ({published.ADG_SOURCE})\n{scale_note(runs, metric)}", fontsize=9)
    return _save(fig, path)


def _grouped_bars(ax, table: pd.DataFrame, measures: list[str], subsets: list[str], label_values: bool) -> None:
    """Bars per (measure, subset) with asymmetric error bars from ``lo``..``hi``."""
    width = 0.8 / len(subsets)
    for i, name in enumerate(subsets):
        rows = table[table["subset"] == name].set_index("measure").reindex(measures)
        err = np.vstack([rows["value"] - rows["lo"], rows["hi"] - rows["value"]]).clip(min=0)
        n = int(rows["n"].max()) if rows["n"].notna().any() else 0
        bars = ax.bar(np.arange(len(measures)) + i * width, rows["value"], width, yerr=err, capsize=2,
                      label=f"{name} (n={n})", error_kw={"elinewidth": 0.8})
        if label_values:
            ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=2)
    ax.set_xticks(np.arange(len(measures)) + width * (len(subsets) - 1) / 2)


def complexity_figure(table: pd.DataFrame, path: Path, judge: str, categories: list[str],
                      ratings: list[str]) -> Path:
    """Left: mean rating (1-6) per subset. Right: the share of each of the release's task
    categories per subset. Error bars: bootstrap percentile intervals (``analysis.complexity.summary``)."""
    fig = Figure(figsize=(15, 5))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2.2]})
    fig.suptitle(f"Cognitive-complexity analysis (ADG paper, release classifier) - judge: {judge}", fontsize=11)
    if table is None or table.empty:
        _say(left, "no subsets to judge (no runs with a subset.jsonl found)")
        _say(right, "no task categories to show")
        return _save(fig, path)
    subsets = list(dict.fromkeys(table["subset"]))
    rated = table[table["kind"] == "rating"]
    _grouped_bars(left, rated, ratings, subsets, label_values=True)
    left.set_xticklabels([r.replace("_", "\n") for r in ratings], fontsize=8)
    left.set_ylim(1, 6.3)
    left.set_ylabel("mean rating (1-6)")
    left.set_title("ratings (our prompts; the paper's are unpublished)", fontsize=9)
    _grouped_bars(right, table[table["kind"] == "share"], categories, subsets, label_values=False)
    right.set_xticklabels([c.replace("_", "\n").replace("Summarization", "Summari-\nzation") for c in categories],
                          fontsize=8)
    right.set_ylabel("share of the subset")
    right.set_title("task categories (ADG release prompt, 10 categories)", fontsize=9)
    right.legend(fontsize=7, loc="upper right")
    conf = table.attrs.get("confidence")
    fig.text(0.01, 0.005, f"error bars: {conf or 'bootstrap'} percentile intervals of the subset mean "
             "(examples resampled with replacement)", fontsize=7, color="0.35")
    return _save(fig, path)


# ---- headless notebooks -------------------------------------------------------------------

def _check_kernel(kernel_name: str) -> None:
    """The kernel must run this interpreter (jupyter_client swaps a bare ``python`` for sys.executable)."""
    from jupyter_client.kernelspec import KernelSpecManager

    argv0 = KernelSpecManager().get_kernel_spec(kernel_name).argv[0]
    if argv0 not in {"python", "python3", f"python3.{sys.version_info[1]}", sys.executable}:
        raise RuntimeError(f"kernelspec {kernel_name!r} runs {argv0}, not {sys.executable}: "
                           f"run `{sys.executable} -m ipykernel install --sys-prefix`")


def evidence_figure(summary: pd.DataFrame, path: Path, metric: str, scale: str) -> Path:
    """Each method's paired difference to random on ``metric`` with its 95% bootstrap CI (over
    eval examples and seeds; ``analysis.runs.summary_table``), one row per method; a CI that covers
    0 is drawn hollow and marked n.s. ``scale`` (pool, budget, model, eval size) goes in the title."""
    from selectlab.stats import LOWER_IS_BETTER

    fig = Figure(figsize=(7.5, 0.5 + 0.45 * max(3, len(summary))))
    ax = fig.subplots()
    rows = summary[summary[f"{metric} Δ"].notna()] if f"{metric} Δ" in summary else summary.iloc[0:0]
    if rows.empty:
        _say(ax, f"no runs with per-example {metric} and random rows under the run roots\n"
                 "(python src/run.py -m experiment=sweep_cpu_replication)")
        return _save(fig, path)
    rows = rows.sort_values(f"{metric} Δ", ascending=metric not in LOWER_IS_BETTER)
    y = np.arange(len(rows))
    for i, (_, r) in enumerate(rows.iterrows()):
        significant = bool(r[f"{metric} significant"])
        low, high, d = r[f"{metric} CI low"], r[f"{metric} CI high"], r[f"{metric} Δ"]
        ax.errorbar(d, i, xerr=[[d - low], [high - d]], fmt="o", capsize=3, color="C0" if significant else "0.4",
                    mfc="C0" if significant else "white")
        ax.text(high, i, f"  {d:+.3f} [{low:+.3f}, {high:+.3f}]{'' if significant else ' n.s.'}", va="center",
                fontsize=8)
    ax.axvline(0, color="0.6", lw=1, ls="--")
    labels = [f"{r['scorer'] if r['label'] == 'selected' else r['label']} (n={int(r['n_train'])}, "
              f"{int(r['n_seeds'])} seed{'s' if r['n_seeds'] > 1 else ''})" for _, r in rows.iterrows()]
    ax.set_yticks(y, labels)
    better = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
    ax.set_xlabel(f"Δ {metric} vs random at the same size ({better}); 95% bootstrap CI")
    ax.set_title(f"{scale}\nrandom: {int(summary.loc[summary['scorer'] == 'random', 'n_seeds'].max() or 0)} seeds; "
                 f"filled = CI excludes 0", fontsize=9)
    ax.margins(x=0.35)
    return _save(fig, path)


def execute_notebook(notebook: Path, runs: list[str], figures: Path, output: Path | None = None,
                     kernel_name: str = "python3", timeout: int = 1200) -> Path:
    """Execute ``notebook`` headless with ``RUNS``/``FIGURES`` injected after its ``parameters``
    cell (papermill's convention), in the repository root; writes the executed copy to
    ``output`` (default: in place) and returns it. A failing cell raises with its traceback."""
    import nbformat
    from nbclient import NotebookClient

    _check_kernel(kernel_name)
    nb = nbformat.read(notebook, as_version=4)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    at = next((i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])), None)
    if at is None:
        raise ValueError(f"{notebook}: no cell tagged 'parameters'")
    cell = nbformat.v4.new_code_cell(f"# Parameters injected by analysis.figures.execute_notebook\n"
                                     f"RUNS = {[str(r) for r in runs]!r}\nFIGURES = {str(figures)!r}")
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(at + 1, cell)
    NotebookClient(nb, kernel_name=kernel_name, timeout=timeout,
                   resources={"metadata": {"path": str(REPO_ROOT)}}).execute()
    output = Path(output or notebook)
    output.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, output)
    return output


def _for_kernel(path: str | Path) -> str:
    """The kernel runs in the repository root: paths inside it stay relative (so executed
    notebooks do not carry this machine's absolute paths), others become absolute."""
    full = Path(path).resolve()
    return str(full.relative_to(REPO_ROOT)) if full.is_relative_to(REPO_ROOT) else str(full)


def main() -> None:
    """Relative paths in SELECTLAB_RUNS (separated by the OS path separator) and SELECTLAB_FIGURES
    are relative to the current directory."""
    runs = [_for_kernel(r) for r in os.environ.get("SELECTLAB_RUNS", os.pathsep.join(
        [str(REPO_ROOT / d) for d in DEFAULT_RUN_ROOTS])).split(os.pathsep) if r]
    figures = _for_kernel(os.environ.get("SELECTLAB_FIGURES", DEFAULT_FIGURES))
    notebooks = sorted(NOTEBOOKS.glob("*.ipynb"))
    if not notebooks:
        raise SystemExit(f"no notebooks in {NOTEBOOKS}")
    for nb in notebooks:
        print(f"executing {nb.relative_to(REPO_ROOT)} (runs: {', '.join(runs)})", flush=True)
        execute_notebook(nb, runs, figures, EXECUTED / nb.name)
    for png in sorted((REPO_ROOT / figures).glob("*.png")):
        print(f"  {png} ({png.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
