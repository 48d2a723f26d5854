"""analysis/ (tidy tables, figures, notebooks, judge ratings) and the per-run selection report,
on run folders written in the pipeline's real formats."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import complexity, figures, published, runs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _config(scorer: str, seed: int, k: int = 5, lam: float | None = 0.4, layers=(-4, -3, -2),
            backbone: str = "smollm2_135m") -> dict:
    return {"seed": seed, "selection": {"budget": 3}, "pool": {"name": "alpaca"}, "backbone": {"name": backbone},
            "scorer": {"name": scorer, **({"lam": lam} if lam is not None else {})}, "selector": {"name": "topk"},
            "sampler": {"name": "vllm", "k": k}, "embedding": {"name": "release", "layers": list(layers)}}


def _run(root: Path, name: str, config: dict, results: list[dict] | None = None, size_search: dict | None = None,
         subset: list[dict] | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({
        "run": name, "run_dir": str(d), "config": config, "pool": {"name": "alpaca", "key": "k", "n": 48,
                                                                   "n_total": 52002},
        "artifacts": {"scores": "s", "subset": "t"}, "counts": {}, "n_selected": 3}))
    if results is not None:
        (d / "results.json").write_text(json.dumps({"rows": results}))
    if size_search is not None:
        (d / "size_search.json").write_text(json.dumps(size_search))
    if subset is not None:
        (d / "subset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in subset))
    return d


def _row(label: str, scorer: str, n_train: int, gsm8k: float, avg: float | None, code: float | None = 30.0) -> dict:
    """A results.json row as selectlab.pipeline writes it (group keys from the eval config)."""
    groups = {"reasoning": gsm8k, "knowledge": 40.0, "code": code}
    row = {"label": label, "scorer": scorer, "n_train": n_train, "metrics": {"gsm8k": gsm8k, "mmlu": 40.0},
           "groups": groups, "complete": code is not None}
    return row if avg is None else {**row, "avg": avg}


@pytest.fixture
def run_root(tmp_path) -> Path:
    root = tmp_path / "outputs"
    _run(root, "2026-01-01/adg_k5", _config("adg", 1), results=[
        _row("untrained", "none", 0, 10.0, 20.0), _row("random", "random", 3, 12.0, 25.0),
        _row("selected", "adg", 3, 15.0, 30.0)])
    _run(root, "2026-01-01/adg_k3", _config("adg", 1, k=3, layers=(-5, -4)), results=[
        _row("selected", "adg", 3, 15.0, None, code=None)])  # no "avg" (older files): mean of the groups that ran
    _run(root, "2026-01-02/im", _config("instructmining", 2, lam=None), size_search={
        "trials": [{"n": 10, "loss": 1.2, "seconds": 3.0}, {"n": 100, "loss": 1.4, "seconds": 4.0},
                   {"n": 1000, "loss": 1.1, "seconds": 9.0}], "best_n": 1000, "source": "grid"})
    bad = root / "2026-01-03/broken"
    bad.mkdir(parents=True)
    (bad / "manifest.json").write_text("{not json")
    return root


def test_runs_table_values(run_root):
    with pytest.warns(runs.RunFileWarning, match="broken/manifest.json"):
        table = runs.runs_table([run_root, run_root / "missing"])
    assert len(runs.find_run_dirs(run_root)) == 4  # the broken one is found, then warned about
    assert len(table) == 5  # 3 evaluated rows + 1 + 1 run without results
    sel = table[(table["label"] == "selected") & (table["k"] == 5)].iloc[0]
    assert (sel["pool"], sel["backbone"], sel["scorer"], sel["layers"]) == ("alpaca", "smollm2_135m", "adg", "-4,-3,-2")
    assert (sel["seed"], sel["budget"], sel["lam"], sel["n_selected"], sel["n_train"]) == (1, 3, 0.4, 3, 3)
    assert (sel["gsm8k"], sel["mmlu"], sel["Reasoning"], sel["Code"], sel["Avg"]) == (15.0, 40.0, 15.0, 30.0, 30.0)
    k3 = table[table["k"] == 3].iloc[0]
    assert k3["layers"] == "-5,-4" and math.isnan(k3["Code"]) and k3["Avg"] == 27.5  # (15 + 40) / 2
    im = table[table["scorer"] == "instructmining"].iloc[0]
    assert pd.isna(im["label"]) and math.isnan(im["Avg"]) and math.isnan(im["lam"])
    assert sorted(table["label"].dropna()) == ["random", "selected", "selected", "untrained"]
    md = runs.results_markdown(table).splitlines()
    # led by the knobs that vary between the evaluated rows (here layers and K)
    assert md[0] == "| layers | k | label | eval_scorer | n_train | gsm8k | mmlu | Reasoning | Knowledge | Code | Avg |"
    assert "| -4,-3,-2 | 5 | selected | adg | 3 | 15.00 | 40.00 | 15.00 | 40.00 | 30.00 | 30.00 |" in md
    assert len(md) == 2 + 4  # header + 4 models


def test_size_search_table(run_root):
    trials = runs.size_search_table(run_root)
    assert trials["n"].tolist() == [10, 100, 1000]
    assert trials["loss"].tolist() == [1.2, 1.4, 1.1]
    assert set(trials["best_n"]) == {1000} and set(trials["scorer"]) == {"instructmining"}
    assert trials["seconds"].sum() == 16.0


def test_malformed_results_warn_with_path(tmp_path):
    d = _run(tmp_path, "r", _config("adg", 0), results=None)
    (d / "results.json").write_text(json.dumps({"rows": [{"no_label": 1}]}))
    with pytest.warns(runs.RunFileWarning, match=r"r/results.json"):
        table = runs.runs_table(tmp_path)
    assert len(table) == 1 and pd.isna(table["label"].iloc[0])


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1024


def test_figures_write_pngs(run_root, tmp_path):
    with pytest.warns(runs.RunFileWarning):
        table_runs, trials = runs.runs_table(run_root), runs.size_search_table(run_root)
    out = tmp_path / "fig"
    curve = runs.size_curve(run_root)
    pngs = [figures.double_descent_figure(curve, runs.size_steps(run_root), trials, out / "dd.png", "scale"),
            figures.double_descent_figure(curve.iloc[0:0], curve.iloc[0:0], None, out / "dd_empty.png", "scale"),
            figures.ablations_figure({}, out / "abl_empty.png", "scale")]
    assert all(_is_png(p) for p in pngs)
    assert figures.EMPTY_PANELS[-1] == "fewer than two evaluated values of layers at the other knobs' release defaults"


def _heldout_row(label: str, scorer: str, seed: int, losses: list[float], model: str) -> dict:
    per = {f"h{i}": x for i, x in enumerate(losses)}
    return {"label": label, "scorer": scorer, "n_train": 3, "seed": seed, "model": model,
            "metrics": {"heldout_loss": float(np.mean(losses))}, "per_example": {"heldout_loss": per}}


def test_ablation_table_keeps_one_axis_at_the_release_defaults_and_the_figure_draws_it(tmp_path):
    """λ runs and a layer-window run share one random baseline; each axis sees only its own points."""
    rng = np.random.default_rng(0)
    base = rng.uniform(1.0, 2.0, 40)
    randoms = [_heldout_row("random", "random", s, list(base + rng.normal(0, 0.01, 40)), f"r{s}") for s in (1, 2, 3)]
    shift = {(0.4, (-4, -3, -2)): -0.10, (0.0, (-4, -3, -2)): 0.0, (1.0, (-4, -3, -2)): -0.30, (0.4, (1, 2, 3, 4)): 0.05}
    for n, ((lam, layers), d) in enumerate(shift.items()):
        rows = randoms + [_heldout_row("selected", "adg", s, list(base + d + rng.normal(0, 0.01, 40)), f"a{n}{s}")
                          for s in (1, 2, 3)]
        _run(tmp_path, f"sweep/{n}", _config("adg", 42, lam=lam, layers=layers), results=rows)
    lam = runs.ablation_table(tmp_path, "lam").set_index("variant")
    assert sorted(lam.index.dropna()) == ["lam=0.0", "lam=0.4", "lam=1.0"]
    assert lam.loc["lam=1.0", "heldout_loss Δ"] == pytest.approx(-0.30, abs=0.01)
    assert bool(lam.loc["lam=1.0", "heldout_loss significant"]) and not bool(lam.loc["lam=0.0", "heldout_loss significant"])
    assert (lam.loc["lam=0.4", "n_seeds"], lam[lam["label"] == "random"]["n_seeds"].iloc[0]) == (3, 3)  # shared rows once
    layers = runs.ablation_table(tmp_path, "layers").set_index("variant")
    assert sorted(layers.index.dropna()) == ["layers=-4,-3,-2", "layers=1,2,3,4"]  # the λ = 0, 1 runs are off-axis
    assert layers.loc["layers=1,2,3,4", "heldout_loss Δ"] == pytest.approx(0.05, abs=0.01)

    versus = runs.versus_release(tmp_path, "lam").set_index("value")  # paired with the release's λ = 0.4
    assert versus.loc["1.0", "diff"] == pytest.approx(-0.20, abs=0.01) and versus.loc["1.0", "significant"]
    assert versus.loc["0.0", "diff"] == pytest.approx(0.10, abs=0.01) and "0.4" not in versus.index

    figures.EMPTY_PANELS.clear()
    tables = {knob: runs.ablation_table(tmp_path, knob) for knob in ("layers", "k", "lam")}
    png = figures.ablations_figure(tables, tmp_path / "abl.png", "scale")
    assert _is_png(png)
    assert figures.EMPTY_PANELS == []  # K has one value here: no row for it, the title says so
    assert figures._ablation_points(tables["layers"], "layers", "heldout_loss")["value"].tolist() == ["1,2,3,4", "-4,-3,-2"]


def test_published_numbers():
    main = published.adg_main_table()
    adg = main[(main["method"] == "ADG") & (main["pool"] == "alpaca_gpt4")].iloc[0]
    assert (adg["Reasoning"], adg["Knowledge"], adg["Code"], adg["Avg"]) == (50.11, 60.31, 42.14, 50.85)
    # docs/methods.md: the reported Avg is the mean of the three group means
    assert np.allclose(main[["Reasoning", "Knowledge", "Code"]].mean(axis=1), main["Avg"], atol=0.011)
    assert published.adg_ablation("k")["Avg"].tolist() == [49.32, 50.85, 46.79, 45.72]
    assert published.adg_ablation("layers")["value"].tolist() == ["0-3", "16-19", "24-27", "28-31"]


def test_notebook_executes_headless(run_root, tmp_path):
    fig_dir = tmp_path / "figures"
    executed = figures.execute_notebook(figures.NOTEBOOKS / "evidence.ipynb", [str(run_root)], fig_dir,
                                        output=tmp_path / "evidence.ipynb")
    assert _is_png(fig_dir / "evidence.png") and "injected-parameters" in executed.read_text()


def test_summary_shares_means_and_bootstrap_intervals():
    """Means and shares worked out by hand; a constant column has a zero-width interval; an
    interval holds its mean; the same seed gives the same intervals."""
    cfg = complexity.load_config(["bootstrap.samples=500"])
    frame = pd.DataFrame({"subset": ["s"] * 4 + ["t"] * 2, "id": list("abcdef"),
                          "category": ["Math", "Math", "Coding", "Others", "Writing", "Writing"],
                          "cognitive_complexity": [1, 2, 3, 6, 4, 4], "instruction_precision": [2, 2, 2, 2, 5, np.nan],
                          "educational_value": [1, 1, 1, 1, 1, 1]})
    table = complexity.summary(frame, cfg)
    row = table.set_index(["subset", "measure"])
    assert len(table) == 2 * (3 + 10)
    assert row.loc[("s", "cognitive_complexity"), "value"] == 3.0      # (1 + 2 + 3 + 6) / 4
    assert row.loc[("s", "Math"), "value"] == 0.5 and row.loc[("s", "Coding"), "value"] == 0.25
    assert row.loc[("t", "Writing"), "value"] == 1.0 and row.loc[("t", "Math"), "value"] == 0.0
    assert row.loc[("t", "instruction_precision"), ["value", "lo", "hi", "n"]].tolist() == [5.0, 5.0, 5.0, 1]
    assert row.loc[("s", "instruction_precision"), ["lo", "hi"]].tolist() == [2.0, 2.0]
    lo, hi = row.loc[("s", "cognitive_complexity"), ["lo", "hi"]]
    assert 1.0 <= lo < 3.0 < hi <= 6.0
    assert complexity.summary(frame, cfg).equals(table)


def _adg_run_with_pool(tmp_path: Path) -> tuple[Path, list[dict]]:
    """An ADG run folder (top 3 of a 10-example JSONL pool) whose scores artifact is in the store."""
    from selectlab.scorers import Scores
    from selectlab.infra.store import ArtifactStore

    pool = [{"id": f"p{i}", "instruction": f"Task number {i}: add {i} and {i + 1}.", "input": "", "output": str(2 * i + 1)}
            for i in range(10)]
    pool_path = tmp_path / "pool.jsonl"
    pool_path.write_text("".join(json.dumps(r) + "\n" for r in pool))
    cache = tmp_path / "cache"
    scores = Scores(ids=[r["id"] for r in pool], score=np.array([5, 1, 9, np.nan, 0, 7, 3, 8, 2, 6]))
    ArtifactStore(cache).build("scores", "k1", scores.save)   # as the pipeline's score stage stores it
    config = {**_config("adg", 0), "cache_dir": str(cache),
              "pool": {"name": "mine", "loader": "json", "path": str(pool_path), "limit": None}}
    run = _run(tmp_path / "outputs", "2026-01-01/adg", config, subset=[pool[2], pool[7], pool[5]])
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "artifacts": {"scores": "k1", "subset": "t"}}))
    return run, pool


def test_comparison_subsets_from_run_folders(tmp_path):
    """The newest ADG run gives its top subset, its bottom subset (subset_bottom.jsonl, else the
    lowest scores in its scores artifact) and a uniform sample of its pool of the same size."""
    run, pool = _adg_run_with_pool(tmp_path)
    subsets = complexity.comparison_subsets([str(tmp_path / "outputs")], ["adg", "instructmining"], None, 0)
    assert list(subsets) == ["adg: top 3", "adg: lowest 3 by score", "uniform 3 of the pool"]
    assert [r["id"] for r in subsets["adg: top 3"]] == ["p2", "p7", "p5"]
    assert [r["id"] for r in subsets["adg: lowest 3 by score"]] == ["p4", "p1", "p8"]  # scores 0, 1, 2; NaN never
    assert len({r["id"] for r in subsets["uniform 3 of the pool"]}) == 3

    (run / "subset_bottom.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [pool[0], pool[1], pool[4]]))
    subsets = complexity.comparison_subsets([str(tmp_path / "outputs")], ["adg"], 2, 0)
    assert [r["id"] for r in subsets["adg: bottom 2"]] == ["p0", "p1"] and len(subsets["adg: top 2"]) == 2


@pytest.mark.parametrize("name", sorted(figures.COMMITTED))
def test_notebook_draws_its_committed_figure_from_evidence(name, tmp_path):
    """make figures' path: each committed figure's notebook draws it from its evidence folder alone."""
    notebook = figures.NOTEBOOKS / name.replace(".png", ".ipynb")
    fig_dir = tmp_path / "figures"
    figures.execute_notebook(notebook, [], fig_dir, output=tmp_path / notebook.name)
    assert _is_png(fig_dir / name)


def test_selection_report_png(tmp_path):
    from selectlab.outputs.report import selection_report
    from selectlab.scorers import Scores

    rng = np.random.default_rng(0)
    n = 40
    ids = [f"x{i}" for i in range(n)]
    D, I = rng.uniform(0, 1, n), rng.uniform(0, 0.75, n)
    score = 0.6 * D + 0.4 * I
    score[3] = np.nan
    scores = Scores(ids=ids, score=score, columns={"D": D, "I": I})
    top = np.argsort(-np.nan_to_num(score, nan=-1))[:8]
    subset = [{"id": ids[i], "rank": r, "score": score[i]} for r, i in enumerate(top)]
    records = {i: {"id": i, "instruction": f"instruction number {i} " * 5, "input": "", "output": "o"} for i in ids}
    path = selection_report(scores, subset, records, tmp_path / "run", bins=np.arange(n) % 7,
                            answers={ids[top[0]]: ["a sampled answer"]})
    assert path == tmp_path / "run" / "selection_report.png" and _is_png(path)
    with pytest.raises(ValueError, match="bin labels"):
        selection_report(scores, subset, records, tmp_path / "run", bins=np.arange(3))


def test_evidence_figure_marks_what_its_interval_decides(tmp_path):
    """A method whose every held-out loss is 0.5 below random's is significant; one that differs from
    random only by zero-mean noise (sd 0.3 over 40 examples) covers 0 and is drawn as n.s."""
    root = tmp_path / "evidence"
    ids = [f"h{i}" for i in range(40)]
    rng = np.random.default_rng(0)
    base = {i: float(v) for i, v in zip(ids, rng.uniform(1.0, 2.0, len(ids)))}

    noise = dict(zip(ids, rng.normal(0.0, 0.3, len(ids))))

    def row(label, scorer, seed, shift, noisy=False):
        losses = {i: v + shift + 0.01 * seed + (noise[i] if noisy else 0.0) for i, v in base.items()}
        return {"label": label, "scorer": scorer, "n_train": 3, "seed": seed, "groups": {}, "complete": True,
                "metrics": {"heldout_loss": float(np.mean(list(losses.values())))}, "avg": None,
                "per_example": {"heldout_loss": losses}}

    _run(root, "0_adg", _config("adg", 1), results=[row("random", "random", s, 0.0) for s in (1, 2, 3)]
         + [row("selected", "adg", 1, -0.5)])
    _run(root, "1_length", _config("length", 1, lam=None), results=[row("selected", "length", 1, 0.0, noisy=True)])
    summary = runs.summary_table([root], n_boot=500)
    by_scorer = summary.set_index("scorer")
    assert by_scorer.loc["adg", "heldout_loss significant"]
    assert by_scorer.loc["adg", "heldout_loss CI high"] < 0
    assert not by_scorer.loc["length", "heldout_loss significant"]
    png = figures.evidence_figure(summary, tmp_path / "evidence.png", "heldout_loss", "tiny scale")
    assert png.read_bytes().startswith(PNG_MAGIC)


def test_variant_names_only_the_knobs_a_scorer_varies(tmp_path):
    """A λ sweep of ADG beside a length run: the ADG rows are told apart by λ, and the length row
    (a scorer without λ) gets no variant (it was named 'lam=nan')."""
    root = tmp_path / "sweep"
    row = {"n_train": 3, "seed": 1, "groups": {}, "complete": True, "avg": None,
           "per_example": {"heldout_loss": {"h0": 1.0, "h1": 2.0}}, "metrics": {"heldout_loss": 1.5}}
    for lam in (0.4, 0.7):
        _run(root, f"adg_{lam}", _config("adg", 1, lam=lam),
             results=[{**row, "label": "random", "scorer": "random"}, {**row, "label": "selected", "scorer": "adg"}])
    _run(root, "length", _config("length", 1, lam=None), results=[{**row, "label": "selected", "scorer": "length"}])
    summary = runs.summary_table([root], n_boot=50)
    selected = summary[summary["label"] == "selected"]
    assert sorted(selected[selected["scorer"] == "adg"]["variant"]) == ["lam=0.4", "lam=0.7"]
    assert selected[selected["scorer"] == "length"]["variant"].fillna("").tolist() == [""]




def test_summary_markdown_shows_a_repeated_column_once():
    """A group of one task (and the Avg of one group) equals the task in every row: shown once."""
    import pandas as pd

    table = pd.DataFrame([{"label": "random", "scorer": "random", "n_train": 3, "n_seeds": 2,
                           "arc_challenge": 27.5, "arc_challenge std": 0.2, "arc": 27.5, "arc std": 0.2,
                           "Avg": 27.5, "Avg std": 0.2, "heldout_loss": 1.9, "heldout_loss std": 0.04}])
    header = runs.summary_markdown(table).splitlines()[0]
    assert header == "| label | scorer | n_train | n_seeds | arc_challenge | heldout_loss ↓ |"


def test_the_same_fine_tune_under_two_keys_counts_once():
    from selectlab.outputs.stats import dedupe_rows

    row = _heldout_row("random", "random", 1, [1.0, 2.0], "cache:checkpoints/a")
    same_losses_new_key = {**row, "model": "cache:checkpoints/b"}
    other_losses = {**_heldout_row("random", "random", 1, [1.0, 2.5], "cache:checkpoints/c")}
    more_metrics_same_model = {**row, "per_example": {**row["per_example"], "arc": {"x": 1.0}}}
    assert dedupe_rows([row, same_losses_new_key, other_losses, more_metrics_same_model]) == [row, other_losses]
