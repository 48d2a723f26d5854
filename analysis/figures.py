"""Figures drawn from the tidy tables of :mod:`analysis.runs`, and the headless notebook runner.

    python -m analysis.figures          # = make figures: executes every notebook in notebooks/
    SELECTLAB_RUNS=outputs:multirun SELECTLAB_FIGURES=analysis/figures python -m analysis.figures

Each figure function takes tables, writes one PNG and returns its path. They use
matplotlib's object API (no pyplot state), so they run the same in a kernel, a test or a
headless job. A panel with nothing to show says so in the picture instead of vanishing.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from . import published

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO_ROOT / "notebooks"
DEFAULT_FIGURES = REPO_ROOT / "analysis" / "figures"
# Executed copies of the notebooks (with their outputs) go here, not over the committed sources,
# so `make figures` changes no tracked file but the PNGs whose pictures changed.
EXECUTED = REPO_ROOT / "build" / "notebooks"
# Where make figures looks for runs: your own, and the evidence committed with the repository
# (analysis/evidence/: the CPU replication's run folders, manifests and per-example results).
DEFAULT_RUN_ROOTS = ("outputs", "multirun", "analysis/evidence")


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


EMPTY_PANELS: list[str] = []  # what each panel drawn with nothing to show said (tests read it)


def _say(ax, message: str, empty: bool = True) -> None:
    """Write ``message`` in the panel instead of a plot: an empty panel (recorded in
    EMPTY_PANELS), or with ``empty=False`` a measured finding told in words."""
    if empty:
        EMPTY_PANELS.append(message)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes, fontsize=9,
            color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])


def double_descent_figure(curve: pd.DataFrame, steps: pd.DataFrame, trials: pd.DataFrame, path: Path,
                          scale: str, metric: str = "heldout_loss") -> Path:
    """InstructMining's quality vs subset size from committed runs (``analysis.runs.size_curve``).
    Left: ``metric`` of the rule's top-n and of random n-subsets (mean over seeds, 95% bootstrap CI),
    BlendSearch's trials and chosen n on the same axes, the paper's best fraction scaled to this
    pool. Right: the rule minus random at each size (paired CI; filled = CI excludes 0). The title
    says whether the rule's curve descends twice (a significant fall, rise, fall between sizes)."""
    from .runs import descends_twice

    fig = Figure(figsize=(13, 4.8))
    left, right = fig.subplots(1, 2, gridspec_kw={"wspace": 0.5})
    if curve is None or curve.empty or curve["n_train"].nunique() < 2:
        _say(left, "no committed runs with per-example held-out loss at two or more sizes\n"
                   "(python src/run.py -m experiment=sweep_double_descent_cpu)")
        _say(right, "nothing to compare")
        return _save(fig, path)
    names = {"selected": "rule top-n", "random": "random n"}
    for label, color in (("selected", "C0"), ("random", "0.45")):
        g = curve[curve["label"] == label].sort_values("n_train")
        if g.empty:
            continue
        seeds = f"{g['n_seeds'].min()}" if g["n_seeds"].min() == g["n_seeds"].max() else \
            f"{g['n_seeds'].min()}-{g['n_seeds'].max()}"
        left.plot(g["n_train"], g["mean"], "o-", ms=4, color=color,
                  label=f"{names[label]} ({g['scorer'].iloc[0]}, {seeds} seeds)")
        left.fill_between(g["n_train"], g["low"], g["high"], color=color, alpha=0.15, lw=0)
    if trials is not None and not trials.empty:
        # The search's objective is the token-weighted held-out loss of one fine-tune (train.eval_loss), not the
        # per-example mean of the curves: its trials get their own axis, its chosen n the shared x axis.
        search = left.twinx()
        search.plot(trials["n"], trials["loss"], "x", color="C3", ms=7)
        search.set_ylabel("BlendSearch objective: token-weighted held-out loss (1 seed)", color="C3", fontsize=8)
        search.tick_params(axis="y", colors="C3", labelsize=7)
        best = trials.loc[trials["loss"].idxmin()]
        left.axvline(best["n"], color="C3", ls="--", lw=1,
                     label=f"BlendSearch's n = {int(best['n'])} ({len(trials)} trials, x: right axis)")
    im = published.INSTRUCTMINING_SIZE_SEARCH
    pool_n = curve.attrs.get("pool_n")
    if pool_n:
        scaled = im["best_n"] / im["pool_n"] * pool_n
        left.axvline(scaled, color="C2", ls=":", lw=1.5,
                     label=f"paper's best fraction ({im['best_n']:,}/{im['pool_n']:,}) x this pool = {scaled:.0f}")
    sizes = sorted(curve["n_train"].unique())
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xticks(sizes, [f"{n:g}" for n in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("training examples n (log)")
    left.set_ylabel(f"{metric} (95% bootstrap CI over examples and seeds)")
    left.legend(fontsize=7)
    left.set_title("paper: quality vs size descends twice (double descent);\nits BlendSearch picked "
                   f"n = {im['best_n']:,} of {im['pool_n']:,}. Ours:", fontsize=9)
    d = curve[(curve["label"] == "selected") & curve["Δ"].notna()].sort_values("n_train") if "Δ" in curve \
        else curve.iloc[0:0]
    for _, r in d.iterrows():
        sig = bool(r["significant"])
        right.errorbar(r["n_train"], r["Δ"], yerr=[[r["Δ"] - r["Δ low"]], [r["Δ high"] - r["Δ"]]], fmt="o",
                       capsize=3, color="C0", mfc="C0" if sig else "white")
    right.plot(d["n_train"], d["Δ"], "-", color="C0", lw=0.8)
    right.axhline(0, color="0.6", ls="--", lw=1)
    right.set_ylabel(f"Δ {metric}: rule − random at the same n (lower is better)")
    twice = descends_twice(steps)
    moves = ", ".join(f"{int(s['from'])}->{int(s['to'])} {s['change']:+.3f} [{s['low']:+.3f}, {s['high']:+.3f}]"
                      f"{'' if s['direction'] == 'n.s.' else '*'}" for _, s in steps.iterrows())
    right.set_title(f"rule minus random (filled: 95% CI excludes 0)\nrule's curve descends twice: "
                    f"{'YES' if twice else 'NO'}", fontsize=9)
    fig.suptitle(scale, fontsize=9, y=1.04)
    fig.text(0.01, -0.04, "rule's steps between sizes (paired CI; * = excludes 0): " + moves, fontsize=6.5,
             color="0.3", wrap=True)
    return _save(fig, path)


def _knob_values(values: pd.Series) -> list:
    def order(v):
        try:
            return (0, float(str(v).split(",")[0]))
        except ValueError:
            return (1, str(v))
    return sorted(values.dropna().unique(), key=order)


# The ablation axes drawn: (knob, what it is); the release's value of each is analysis.runs.ABLATION_DEFAULTS
ABLATION_AXES = (("layers", "embedding.layers (hidden_states indices)"),
                 ("k", "sampler.k (answers per instruction)"),
                 ("lam", "scorer.lam (0 = D only, 1 = I only)"))


def _knob_value(variant: str, knob: str) -> str:
    value = variant.split(f"{knob}=", 1)[1]
    try:
        return f"{float(value):g}"
    except ValueError:
        return value


def _ablation_points(table: pd.DataFrame, knob: str, metric: str) -> pd.DataFrame:
    """The selected rows of one axis with their knob value, Δ and CI, in the knob's order."""
    if table is None or table.empty or f"{metric} Δ" not in table:
        return pd.DataFrame()
    rows = table[(table["label"] == "selected") & table[f"{metric} Δ"].notna()].copy()
    if "variant" not in rows or rows.empty:
        return pd.DataFrame()
    rows = rows[rows["variant"].fillna("").str.startswith(f"{knob}=")]
    rows["value"] = [_knob_value(v, knob) for v in rows["variant"]]
    order = _knob_values(rows["value"])
    if knob == "layers":  # negative indices count from the top: after every window given from the bottom
        order = sorted(order, key=lambda v: float(str(v).split(",")[0]) < 0)
    return rows.set_index("value").loc[order].reset_index()


def _ours_delta(ax, table: pd.DataFrame, knob: str, title: str, metric: str) -> None:
    """Δ ``metric`` vs random at the same size per value of ``knob`` (95% CI; filled = excludes 0)."""
    from selectlab.outputs.stats import LOWER_IS_BETTER

    from .runs import ABLATION_DEFAULTS

    points = _ablation_points(table, knob, metric)
    if len(points) < 2:
        _say(ax, f"fewer than two evaluated values of {knob} at the other knobs' release defaults")
        ax.set_title(title, fontsize=9)
        return
    for i, r in points.iterrows():
        sig = bool(r[f"{metric} significant"])
        d, low, high = r[f"{metric} Δ"], r[f"{metric} CI low"], r[f"{metric} CI high"]
        ax.errorbar(i, d, yerr=[[d - low], [high - d]], fmt="o", capsize=3, color="C0", mfc="C0" if sig else "white")
        ax.annotate(f"{d:+.3f}\n[{low:+.3f}, {high:+.3f}]", (i, high), textcoords="offset points", xytext=(0, 4),
                    ha="center", fontsize=6.5)
    ax.axhline(0, color="0.6", ls="--", lw=1)
    default = _knob_value(f"{knob}={ABLATION_DEFAULTS[knob]}", knob)
    labels = [f"{v}\n(release)" if v == default else str(v) for v in points["value"]]
    ax.set_xticks(range(len(points)), labels, fontsize=7)
    ax.set_xlim(-0.6, len(points) - 0.4)
    ax.margins(y=0.25)
    seeds = f"{points['n_seeds'].min()}" if points["n_seeds"].min() == points["n_seeds"].max() else \
        f"{points['n_seeds'].min()}-{points['n_seeds'].max()}"
    better = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
    ax.set_ylabel(f"Δ {metric} vs random ({better})", fontsize=8)
    ax.set_title(f"{title}\nours: {seeds} training seeds per point, 95% CI; filled = excludes 0", fontsize=8)


def _published_delta(ax, knob: str, title: str) -> None:
    """The paper's Avg for each value of ``knob`` minus its random row (Alpaca-GPT4, LLaMA3-8B)."""
    if knob not in published.ADG_ABLATIONS:
        _say(ax, "the paper reports no numbers for this axis\n(docs/methods.md names it among the\n"
                 "ablations the paper runs, without values)", empty=False)
        ax.set_title(f"published: {title}", fontsize=9)
        return
    pub = published.adg_ablation(knob)
    random_avg = published.adg_random_avg("alpaca_gpt4")
    bars = ax.bar(range(len(pub)), pub["Avg"] - random_avg, color="0.7")
    ax.bar_label(bars, fmt="%+.2f", fontsize=7)
    ax.set_xticks(range(len(pub)), [str(v) for v in pub["value"]], fontsize=7)
    ax.axhline(0, color="0.6", ls="--", lw=1)
    ax.set_ylabel(f"Δ Avg vs random ({random_avg:.2f}), points", fontsize=8)
    ax.set_title(f"published: {title}", fontsize=9)


def ablations_figure(tables: dict[str, pd.DataFrame], path: Path, scale: str, metric: str = "heldout_loss",
                     versus: dict[str, pd.DataFrame] | None = None) -> Path:
    """ADG's ablations, one row per axis (layer window, K, λ): the paper's Avg minus random (grey
    bars, LLaMA3-8B on Alpaca-GPT4) beside ours, each point Δ ``metric`` vs random at the same
    size with its 95% CI (``analysis.runs.ablation_table``). The level cannot be compared (other
    model, pool, metric), the shape can."""
    pub_titles = {"layers": "layer window (decoder layers of 32)", "k": "K answers per instruction",
                  "lam": "λ (D/I weighting)"}
    # an axis without two evaluated points gets no row: the title names it instead of an empty panel
    drawn = [axis for axis in ABLATION_AXES if len(_ablation_points(tables.get(axis[0]), axis[0], metric)) >= 2]
    missing = [knob for knob, _ in ABLATION_AXES if knob not in {a[0] for a in drawn}]
    rows = drawn or ABLATION_AXES[:1]
    fig = Figure(figsize=(11, 3.6 * len(rows) + 0.6))
    axes = fig.subplots(len(rows), 2, squeeze=False, gridspec_kw={"hspace": 0.75, "wspace": 0.3})
    for row, (knob, title) in enumerate(rows):
        _published_delta(axes[row, 0], knob, pub_titles[knob])
        _ours_delta(axes[row, 1], tables.get(knob), knob, f"ours: {title}", metric)
        pairs = (versus or {}).get(knob)
        if pairs is not None and len(pairs):
            text = "; ".join(f"{_knob_value(f'{knob}=' + str(p['value']), knob)}: {p['diff']:+.3f} "
                             f"[{p['low']:+.3f}, {p['high']:+.3f}]{'*' if p['significant'] else ' n.s.'}"
                             for _, p in pairs.iterrows())
            axes[row, 1].set_xlabel(f"paired against the release's value (Δ {metric}, 95% CI, * excludes 0):\n{text}",
                                    fontsize=7)
    note = f"\nnot run yet at this scale (no row): {', '.join(missing)}" if missing else ""
    fig.suptitle(f"ADG ablations ({published.ADG_SOURCE})\nours: {scale}{note}", fontsize=9,
                 y=1.0 + 0.16 / len(rows))
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


def _judge_accuracy_panel(ax, check: dict) -> None:
    """Each category judge's accuracy on the labelled check set (95% CI), the majority-class line."""
    judges = check["category_judges"]
    names = list(judges)
    acc = np.array([judges[n]["accuracy"] for n in names])
    err = np.array([[judges[n]["accuracy"] - judges[n]["ci"][0], judges[n]["ci"][1] - judges[n]["accuracy"]]
                    for n in names]).T
    colors = ["C0" if n == check["chosen"] else "0.6" for n in names]
    bars = ax.bar(range(len(names)), acc, yerr=err, capsize=3, color=colors)
    ax.bar_label(bars, labels=[f"{a:.2f}" for a in acc], fontsize=7, padding=2)
    majority = judges[names[0]]["majority_accuracy"]
    ax.axhline(majority, color="C3", ls="--", lw=1)
    ax.text(-0.4, majority + 0.01, f"majority class ({judges[names[0]]['majority_class']}) {majority:.2f}",
            ha="left", va="bottom", fontsize=7, color="C3")
    ax.set_xticks(range(len(names)), [n.replace("_", "\n", 1) for n in names], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% bootstrap CI)")
    ax.set_title(f"category judges on the labelled check set (n={judges[names[0]]['n']})", fontsize=9)


def _confusion_panel(ax, check: dict) -> None:
    """The chosen judge's confusion matrix, rows normalised (counts written in the cells)."""
    cats = check["categories"]
    counts = np.asarray(check["category_judges"][check["chosen"]]["confusion"], dtype=float)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i, j in zip(*np.nonzero(counts)):
        ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=6,
                color="white" if share[i, j] > 0.6 else "black")
    short = [c.replace("Instruction_Following", "Instr_Follow").replace("Discrete_Decision", "Discrete")
             .replace("Summarization", "Summary") for c in cats]
    ax.set_xticks(range(len(cats)), short, fontsize=6, rotation=60, ha="right")
    ax.set_yticks(range(len(cats)), short, fontsize=6)
    ax.set_xlabel("judged", fontsize=8)
    ax.set_ylabel("label", fontsize=8)
    ax.set_title(f"{check['chosen']}: confusion on the check set (rows: label)", fontsize=9)


def _rating_panel(ax, table: pd.DataFrame, check: dict, subsets: list[str]) -> None:
    """Ratings that separate their constructed contrast, per subset; the rest named with why not."""
    contrasts = check["rating_contrasts"]
    separable = [name for name, c in contrasts.items() if c["separable"]]
    failing = [f"{name}: {c['high_mean']:.2f} vs {c['low_mean']:.2f}, diff {c['diff']:+.2f} "
               f"[{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}]\n    ({c['contrast']})"
               for name, c in contrasts.items() if not c["separable"]]
    if not separable:
        _say(ax, f"no rating shown: the judge ({check['lm_judge']}) cannot separate\n"
                 "constructed contrasts where one side must rate higher (n=" +
                 f"{next(iter(contrasts.values()))['n']} pairs each, 95% CI):\n\n" + "\n".join(failing), empty=False)
        ax.set_title("ratings (1-6): not a finding at this judge", fontsize=9)
        return
    _grouped_bars(ax, table[table["kind"] == "rating"], separable, subsets, label_values=True)
    ax.set_xticklabels([f"{r.replace('_', ' ')}\ncontrast {contrasts[r]['diff']:+.2f} "
                        f"[{contrasts[r]['ci'][0]:+.2f}, {contrasts[r]['ci'][1]:+.2f}]" for r in separable], fontsize=7)
    ax.set_ylim(1, 6.3)
    ax.set_ylabel("mean rating (1-6)")
    note = ("\nnot shown (contrast not separated): " + "; ".join(failing)) if failing else ""
    ax.set_title(f"ratings by {check['lm_judge']}, only those that separate their contrast\n"
                 f"(a contrast's difference on the 1-6 scale is under its label){note}", fontsize=7)


def complexity_figure(folder: Path, path: Path, cfg: dict, scale: str = "") -> Path:
    """The cognitive-complexity analysis from its evidence folder (``analysis.complexity.run_analysis``):
    the category judges' measured accuracy, the chosen judge's confusion matrix, the category shares
    per subset (bootstrap CIs) and the ratings whose contrast check passed."""
    from .complexity import summary

    folder = Path(folder)
    check = json.loads((folder / "judge_check.json").read_text())
    frame = pd.read_csv(folder / "judged.csv")
    table = summary(frame, cfg)
    subsets = list(dict.fromkeys(table["subset"]))
    chosen = check["category_judges"][check["chosen"]]
    fig = Figure(figsize=(15, 10))
    grid = fig.add_gridspec(2, 3, width_ratios=[1, 1, 1.4], hspace=0.5)
    _judge_accuracy_panel(fig.add_subplot(grid[0, 0]), check)
    _confusion_panel(fig.add_subplot(grid[0, 1]), check)
    _rating_panel(fig.add_subplot(grid[0, 2]), table, check, subsets)
    shares = fig.add_subplot(grid[1, :])
    _grouped_bars(shares, table[table["kind"] == "share"], check["categories"], subsets, label_values=False)
    shares.set_xticklabels([c.replace("_", "\n") for c in check["categories"]], fontsize=8)
    shares.set_ylabel("share of the subset (95% bootstrap CI)")
    shares.legend(fontsize=7, loc="upper right")
    shares.set_title(f"task categories by {check['chosen']} (a substitute for the release's GPT-4o-mini judge)",
                     fontsize=9)
    lo, hi = chosen["minus_majority_ci"]
    verdict = "beats" if chosen["beats_majority"] else "does NOT beat"
    fig.suptitle(f"Cognitive-complexity analysis (ADG paper) of the subsets of {scale or 'the compared runs'}\n"
                 f"category judge {check['chosen']}: accuracy {chosen['accuracy']:.2f} "
                 f"[{chosen['ci'][0]:.2f}, {chosen['ci'][1]:.2f}] on {chosen['n']} labelled items; it {verdict} the "
                 f"majority class ({chosen['majority_accuracy']:.2f}) by {chosen['minus_majority']:+.2f} "
                 f"[{lo:+.2f}, {hi:+.2f}]", fontsize=10)
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
    from selectlab.outputs.stats import LOWER_IS_BETTER

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


# ---- the committed figures, each from its evidence folder --------------------------------

def build_evidence(out: Path, evidence: Path, *more_seeds: Path, metric: str = "heldout_loss") -> Path:
    """evidence.png: each method's Δ vs random on the CPU replication; ``more_seeds``: runs of the same
    protocol that add training seeds to its selectors (``compare.selected_seeds=[2,3]``, no baselines)."""
    from .runs import scale_line, summary_table

    return evidence_figure(summary_table([evidence, *more_seeds]), out / "evidence.png", metric,
                           "CPU replication: " + scale_line([evidence]))


def build_double_descent(out: Path, evidence: Path, search: Path | None = None, metric: str = "heldout_loss") -> Path:
    """The size grid's runs (``evidence``) and BlendSearch's run (``search``: its trials)."""
    from .runs import pool_size, scale_line, size_curve, size_search_table, size_steps

    curve = size_curve([evidence], metric)
    curve.attrs["pool_n"] = pool_size([evidence])
    trials = size_search_table([search]) if search is not None else None
    return double_descent_figure(curve, size_steps([evidence], "selected", metric), trials,
                                 out / "double_descent.png", "InstructMining double descent: " + scale_line([evidence]),
                                 metric)


def build_complexity(out: Path, evidence: Path) -> Path:
    from .complexity import load_config
    from .runs import scale_line

    cfg = load_config([f"evidence={evidence}"])
    roots = [Path(REPO_ROOT) / r for r in cfg["runs"]]
    return complexity_figure(evidence, out / "cognitive_complexity.png", cfg, "the CPU replication: " + scale_line(roots))


def build_ablations(out: Path, *folders: Path, metric: str = "heldout_loss") -> Path:
    """ablations.png: each axis from the evidence folders (the release's point is in the λ sweep)."""
    from .runs import ablation_table, scale_line, versus_release

    tables = {knob: ablation_table(folders, knob) for knob, _ in ABLATION_AXES}
    versus = {knob: versus_release(folders, knob, metric=metric) for knob, _ in ABLATION_AXES}
    return ablations_figure(tables, out / "ablations.png", scale_line(folders), metric, versus)


# figure -> (the evidence folders it is drawn from, its builder: builder(out, *folders)). Every
# committed PNG is one of these (tests/test_figures_evidence.py), and each notebook calls its builder.
COMMITTED = {
    "evidence.png": (("analysis/evidence/cpu_replication", "analysis/evidence/cpu_replication_seeds"), build_evidence),
    "double_descent.png": (("analysis/evidence/double_descent", "analysis/evidence/double_descent_search"),
                           build_double_descent),
    "cognitive_complexity.png": (("analysis/evidence/complexity",), build_complexity),
    "ablations.png": (("analysis/evidence/adg_ablation_lambda", "analysis/evidence/adg_ablation_layers",
                       "analysis/evidence/adg_ablation_k"), build_ablations),
}


def build_committed(name: str, out: Path, root: Path = REPO_ROOT) -> Path:
    """One committed figure drawn into ``out`` from its evidence folders under ``root``."""
    folders, build = COMMITTED[name]
    return build(Path(out), *(Path(root) / f for f in folders))


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
