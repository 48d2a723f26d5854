"""Results a researcher can trust: the bootstrap CI on constructed cases, mean ± std over seeds,
the held-out set disjoint from the pool, per-example held-out losses, and a seeded pipeline run
on the tiny model whose per-example scores reach analysis and whose CI columns reach W&B."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from selectlab.lm.heldout import heldout_records
from selectlab.outputs.stats import difference_replicates, interval, paired_difference, summarize

# --- the bootstrap ---------------------------------------------------------------------------


def test_bootstrap_two_examples_by_hand():
    # differences (0, 1) over two examples: a resample's mean is 0, 0.5 or 1 with probabilities
    # 1/4, 1/2, 1/4, so the 2.5 % and 97.5 % quantiles are 0 and 1
    reps = difference_replicates(np.array([[5.0, 6.0]]), np.array([[5.0, 5.0]]), np.random.default_rng(0), 4000)
    assert set(np.unique(reps)) == {0.0, 0.5, 1.0}
    assert np.mean(reps == 0.5) == pytest.approx(0.5, abs=0.03)
    assert interval(reps) == (0.0, 1.0)


def _constructed(n: int, diff: float, seeds: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Baseline scores with spread, and method = baseline + diff + noise whose mean is exactly 0
    (±0.5 alternating), so the sample difference is ``diff`` exactly; with several seeds each seed
    adds an offset (-0.1, 0, +0.1) that also averages to 0."""
    base = np.linspace(0.0, 3.0, n)
    noise = np.where(np.arange(n) % 2 == 0, 0.5, -0.5)
    offsets = np.linspace(-0.1, 0.1, seeds) if seeds > 1 else np.zeros(1)
    method = np.stack([base + diff + noise + o for o in offsets])
    baseline = np.stack([base - o for o in offsets])
    return method, baseline


@pytest.mark.parametrize("seeds", [1, 3])
def test_ci_covers_a_known_large_difference_and_excludes_zero(seeds):
    method, baseline = _constructed(400, diff=0.3, seeds=seeds)
    out = paired_difference(method, baseline)
    assert out["diff"] == pytest.approx(0.3)
    assert out["low"] < 0.3 < out["high"]
    assert out["low"] > 0 and out["significant"]
    # the pairing: the per-example differences have sd 0.5, so one seed's CI is ±1.96·0.5/√400 =
    # ±0.049 wide, not the ±0.085 the baseline's own spread (sd 0.87) would give. Three seeds add
    # each side's seed resampling: offsets (-0.1, 0, 0.1) have population variance 0.02/3, a mean
    # of 3 draws sd √(0.02/9) = 0.047 per side, so sd √(2·0.047² + 0.025²) = 0.071, width ±0.139
    expected_width = 2 * 1.96 * (0.5 / 20 if seeds == 1 else math.sqrt(2 * 0.02 / 9 + (0.5 / 20) ** 2))
    assert out["high"] - out["low"] == pytest.approx(expected_width, rel=0.15)


def test_ci_covers_zero_for_a_small_difference_and_identical_inputs():
    method, baseline = _constructed(400, diff=0.01)
    small = paired_difference(method, baseline)
    assert small["low"] < 0.01 < small["high"] and small["low"] < 0 and not small["significant"]
    same = paired_difference(baseline, baseline)
    assert same == {"diff": 0.0, "low": 0.0, "high": 0.0, "significant": False}


def _row(label, scorer, seed, per_example: dict[str, dict], groups=None):
    metrics = {m: float(np.mean(list(v.values()))) for m, v in per_example.items()}
    return {"label": label, "scorer": scorer, "n_train": 4, "seed": seed, "model": f"{scorer}-{seed}",
            "metrics": metrics, "groups": groups or {}, "avg": None, "per_example": per_example}


def test_summarize_mean_std_over_seeds_and_difference_to_random():
    ids = [f"e{i}" for i in range(200)]
    rows = []
    for seed, shift in zip([1, 2, 3], [2.0, 2.2, 2.4]):  # random's held-out loss per seed: 2.0, 2.2, 2.4
        rows.append(_row("random", "random", seed, {"heldout_loss": {i: shift + (k % 2) * 0.2 - 0.1 for k, i in enumerate(ids)}}))
    for seed in [1, 2, 3]:  # the method is 1.0 lower on every example, every seed
        rows.append(_row("selected", "adg", seed, {"heldout_loss": {i: v - 1.0 for i, v in rows[seed - 1]["per_example"]["heldout_loss"].items()}}))
    rows.append(rows[0])  # a random row a second run of the sweep shares: counted once
    summary = {s["scorer"]: s for s in summarize(rows)}
    assert summary["random"]["heldout_loss"] == pytest.approx(2.2)
    assert summary["random"]["heldout_loss std"] == pytest.approx(0.2)  # sd of (2.0, 2.2, 2.4), ddof 1
    assert summary["random"]["n_seeds"] == 3 and "heldout_loss Δ" not in summary["random"]
    adg = summary["adg"]
    assert adg["heldout_loss"] == pytest.approx(1.2) and adg["heldout_loss Δ"] == pytest.approx(-1.0)
    assert adg["heldout_loss CI low"] < -1.0 < adg["heldout_loss CI high"] < 0 and adg["heldout_loss significant"]


def test_a_methods_interval_does_not_depend_on_the_other_rows_of_its_table():
    """The pipeline summarises one run, analysis.runs a whole sweep: a method's CI must be the same in both."""
    rng = np.random.default_rng(3)
    ids = [f"e{i}" for i in range(50)]
    noisy = lambda: {"heldout_loss": dict(zip(ids, rng.normal(2.0, 0.3, len(ids))))}  # noqa: E731
    randoms = [_row("random", "random", s, noisy()) for s in (1, 2)]
    adg, ifd = _row("selected", "adg", 1, noisy()), _row("selected", "ifd", 1, noisy())
    alone = {s["scorer"]: s for s in summarize([*randoms, adg])}["adg"]
    for table in ([*randoms, ifd, adg], [adg, *randoms, ifd]):
        with_others = {s["scorer"]: s for s in summarize(table)}["adg"]
        assert (with_others["heldout_loss CI low"], with_others["heldout_loss CI high"]) == \
            (alone["heldout_loss CI low"], alone["heldout_loss CI high"])


# --- the held-out set -------------------------------------------------------------------------


def _json_pool(path: Path, rows: list[tuple[str, str]]) -> dict:
    path.write_text(json.dumps([{"instruction": i, "input": "", "output": o} for i, o in rows]))
    return {"name": path.stem, "loader": "json", "path": str(path), "limit": None, "sample": "random",
            "empty_instruction": "drop"}


def test_heldout_is_disjoint_from_the_pool(tmp_path):
    pool = [{"id": "p0", "instruction": "A", "input": "", "output": "a"},
            {"id": "p1", "instruction": "B", "input": "", "output": "b"}]
    cfg = _json_pool(tmp_path / "held.json", [("A", "other answer"), ("C", "c"), ("B", "b"), ("D", "d"), ("E", "e")])
    # same (instruction, input) as a pool example = the same example, whatever its answer or id
    assert [r["instruction"] for r in heldout_records(cfg, pool, seed=0)] == ["C", "D", "E"]
    assert [r["instruction"] for r in heldout_records({**cfg, "limit": 2, "sample": "head"}, pool, 0)] == ["C", "D"]
    sampled = heldout_records({**cfg, "limit": 2}, pool, 0)
    assert len(sampled) == 2 and {r["instruction"] for r in sampled} <= {"C", "D", "E"}


@pytest.mark.slow
def test_cpu_replication_heldout_alpaca_slice_is_disjoint_from_its_pool(compose):
    from omegaconf import OmegaConf

    from selectlab.pools import load_pool

    cfg = OmegaConf.to_container(compose("experiment=sweep_cpu_replication"), resolve=True)
    assert cfg["heldout"]["loader"] == cfg["pool"]["loader"] == "alpaca"  # the same 52K source
    pool = load_pool(cfg["pool"], seed=cfg["seed"]).records
    held = heldout_records(cfg["heldout"], pool, cfg["seed"])
    assert len(pool) == cfg["pool"]["limit"] and len(held) == cfg["heldout"]["limit"]
    assert not {r["id"] for r in held} & {r["id"] for r in pool}
    assert not {(r["instruction"], r["input"]) for r in held} & {(r["instruction"], r["input"]) for r in pool}
    # a plain seeded sample of the same size would have overlapped the pool (the same seed draws
    # the same first indices), which is why the slice is drawn from what the pool left
    plain = load_pool({**cfg["heldout"]}, seed=cfg["seed"]).records
    assert {r["id"] for r in plain} & {r["id"] for r in pool}


# --- per-example held-out losses --------------------------------------------------------------

RECORDS = [
    {"id": "r0", "instruction": "What is the capital of France?", "input": "", "output": "The capital of France is Paris."},
    {"id": "r1", "instruction": "Add the two numbers.", "input": "17 and 25", "output": "17 + 25 = 42"},
    {"id": "r2", "instruction": "Name a colour.", "input": "", "output": "Blue, the colour of a clear sky, is one."},
]


def _hand_losses(model_dir: Path) -> list[float]:
    """Mean response-token NLL of each record, one forward per record (token t predicted at t - 1)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selectlab.lm.prompts import render_prompt

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for r in RECORDS:
        prompt = tok(render_prompt(r, "alpaca"))["input_ids"]
        ids = torch.tensor([prompt + tok(r["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0], -1)
        nll = [-logp[t - 1, ids[0, t]].item() for t in range(len(prompt), ids.shape[1])]
        out.append(sum(nll) / len(nll))
    return out


def test_response_losses_per_example_match_hand_computation(tiny_model_dir):
    from selectlab.lm.heldout import heldout_loss_eval
    from selectlab.schema.evaluation import HeldoutLoss
    from selectlab.lm.train import eval_loss, response_loss_sums, response_losses

    hand = _hand_losses(tiny_model_dir)
    batched = response_losses(str(tiny_model_dir), RECORDS, batch_size=3, device="cpu")  # padded together
    np.testing.assert_allclose(batched, hand, rtol=1e-5)
    out = heldout_loss_eval(str(tiny_model_dir), RECORDS, HeldoutLoss(template="alpaca", max_length=512, batch_size=2, dtype="float32"))
    assert out["per_example"] == pytest.approx(dict(zip(["r0", "r1", "r2"], hand)), rel=1e-5)
    assert out["score"] == pytest.approx(sum(hand) / 3, rel=1e-5)  # a mean over examples, not tokens
    sums = response_loss_sums(str(tiny_model_dir), RECORDS)
    tokens = [n for _, n in sums]
    assert eval_loss(str(tiny_model_dir), RECORDS) == pytest.approx(sum(l * n for l, n in zip(hand, tokens)) / sum(tokens),
                                                                    rel=1e-5)


def test_heldout_loss_eval_on_the_tiny_model(tiny_model_dir, compose):
    """eval=heldout_loss alone: one metric, the mean of the per-example losses, lower is better."""
    from selectlab.pipeline import run

    cfg = compose("scorer=length", f"backbone.path={tiny_model_dir}", "pool=self_instruct_seed", "pool.limit=12",
                  "selection.budget=4", "train=none", "eval=heldout_loss", "heldout.limit=5", "logger=none")
    run(cfg)
    (row,) = json.loads((Path(cfg.run_dir) / "results.json").read_text())["rows"]
    assert row["label"] == "untrained" and list(row["metrics"]) == ["heldout_loss"]
    losses = row["per_example"]["heldout_loss"]
    assert len(losses) == 5 and row["metrics"]["heldout_loss"] == pytest.approx(np.mean(list(losses.values())))
    assert 10.0 < row["metrics"]["heldout_loss"] < 11.5  # the untrained tiny llama: about ln(49152) = 10.8


# --- a seeded pipeline run: per-example scores reach analysis, CI columns reach W&B --------------

TINY_DOCS = [
    {"question": "The sky on a clear day is", "choices": ["blue", "green", "loud"], "answer": 0},
    {"question": "Two plus two equals", "choices": ["three", "four", "a fish"], "answer": 1},
    {"question": "Water freezes at zero degrees", "choices": ["Fahrenheit", "Kelvin", "Celsius"], "answer": 2},
    {"question": "A cat says", "choices": ["meow", "moo", "quack"], "answer": 0},
]


def _tiny_task(tmp_path: Path) -> Path:
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in TINY_DOCS))
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    (task_dir / "tiny_mc.yaml").write_text(yaml.safe_dump({
        "task": "tiny_mc", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "output_type": "multiple_choice", "test_split": "test", "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }))
    return task_dir


@pytest.mark.slow
def test_seeded_rows_per_example_scores_reach_analysis_and_wandb(tiny_model_dir, compose, tmp_path):
    from omegaconf import open_dict

    from analysis import runs
    from selectlab.pipeline import run
    from selectlab.outputs.wandb_offline import find_runs, read_run

    cfg = compose(
        "scorer=length", f"backbone.path={tiny_model_dir}", "pool=self_instruct_seed", "pool.limit=16",
        "selection.budget=4", "train=cpu_small", "train.max_steps=2", "train.max_length=128", "train.lr=1e-3",
        "eval=heldout_loss", "eval.batch_size=4", "eval.device=cpu", "heldout.limit=6",
        "compare.baselines=[untrained,random]", "compare.seeds=[1,2]",
    )
    with open_dict(cfg):
        cfg.eval.task_dirs = [str(_tiny_task(tmp_path))]
        cfg.eval.tasks = {"tiny": {"lm_eval": "tiny_mc", "num_fewshot": 0, "metric": "acc", "filter": "none"}}
        cfg.eval.groups = {"all": ["tiny"]}
    run(cfg)
    rows = json.loads((Path(cfg.run_dir) / "results.json").read_text())["rows"]
    assert [(r["label"], r["scorer"], r["seed"]) for r in rows] == [
        ("untrained", "none", None), ("random", "random", 1), ("random", "random", 2),
        ("selected", "length", 1), ("selected", "length", 2)]
    assert len({r["model"] for r in rows}) == 5  # every seed trains its own model
    for r in rows:  # the per-example scores are what the row's numbers are the mean of
        assert sorted(r["per_example"]["tiny"]) == [f"tiny_mc/{i}" for i in range(4)]
        assert set(r["per_example"]["tiny"].values()) <= {0.0, 100.0}
        assert r["metrics"]["tiny"] == pytest.approx(np.mean(list(r["per_example"]["tiny"].values())))
        assert len(r["per_example"]["heldout_loss"]) == 6
        assert r["metrics"]["heldout_loss"] == pytest.approx(np.mean(list(r["per_example"]["heldout_loss"].values())))
    eval_dirs = list((Path(cfg.cache_dir) / "evals").glob("*/per_doc_tiny.json"))
    assert eval_dirs and json.loads(eval_dirs[0].read_text()).keys() == rows[0]["per_example"]["tiny"].keys()

    # analysis: mean ± std over the two seeds and the paired difference to random, by hand
    table = runs.summary_table(Path(cfg.run_dir))
    length = table.set_index("scorer").loc["length"]
    sel = [r for r in rows if r["scorer"] == "length"]
    rnd = [r for r in rows if r["scorer"] == "random"]
    mean = lambda rs, m: np.mean([r["metrics"][m] for r in rs])  # noqa: E731
    assert length["heldout_loss"] == pytest.approx(mean(sel, "heldout_loss"))
    assert length["heldout_loss std"] == pytest.approx(np.std([r["metrics"]["heldout_loss"] for r in sel], ddof=1))
    assert length["heldout_loss Δ"] == pytest.approx(mean(sel, "heldout_loss") - mean(rnd, "heldout_loss"))
    assert length["heldout_loss CI low"] <= length["heldout_loss Δ"] <= length["heldout_loss CI high"]
    assert length["tiny Δ"] == pytest.approx(mean(sel, "tiny") - mean(rnd, "tiny"))
    markdown = runs.summary_markdown(table)
    assert "±" in markdown and "[" in markdown and "heldout_loss" in markdown

    # W&B: the per-model table carries the seed, the summary table the new columns
    logged = read_run(find_runs(Path(cfg.run_dir) / "wandb")[0])
    assert [row[-1] for row in logged.tables["results"]["data"]] == [None, 1, 2, 1, 2]
    summary = logged.tables["results_summary"]
    for column in ["heldout_loss", "heldout_loss std", "heldout_loss Δ", "heldout_loss CI low", "heldout_loss CI high",
                   "heldout_loss significant", "tiny Δ", "Avg Δ", "n_seeds"]:
        assert column in summary["columns"], column
    by_scorer = {r[summary["columns"].index("scorer")]: dict(zip(summary["columns"], r)) for r in summary["data"]}
    assert by_scorer["length"]["heldout_loss Δ"] == pytest.approx(length["heldout_loss Δ"])
    assert by_scorer["length"]["n_seeds"] == 2 and by_scorer["none"]["n_seeds"] == 1
    assert by_scorer["random"]["heldout_loss Δ"] is None or math.isnan(by_scorer["random"]["heldout_loss Δ"])


def test_summarize_compares_with_random_at_the_same_size():
    """A bin-wise selector may return fewer than the budget; its run draws random at that size."""
    ids = ["a", "b", "c", "d"]
    rnd13 = _row("random", "random", 1, {"acc": dict(zip(ids, [0.0, 0.0, 100.0, 100.0]))})
    rnd16 = _row("random", "random", 1, {"acc": dict(zip(ids, [0.0, 100.0, 100.0, 100.0]))})
    rnd13["n_train"], rnd16["n_train"], rnd16["model"] = 13, 16, "random-16"
    adg = {**_row("selected", "adg", 1, {"acc": dict(zip(ids, [100.0] * 4))}), "n_train": 13}
    ifd = {**_row("selected", "ifd", 1, {"acc": dict(zip(ids, [100.0] * 4))}), "n_train": 16}
    summary = {(s["scorer"], s["n_train"]): s for s in summarize([rnd13, adg, rnd16, ifd])}
    assert summary[("random", 13)]["acc"] == 50.0 and summary[("random", 16)]["acc"] == 75.0  # not one pooled row
    assert summary[("adg", 13)]["acc Δ"] == 50.0 and summary[("ifd", 16)]["acc Δ"] == 25.0


def test_comparison_seeds_from_config(compose):
    from selectlab.stages.compare import comparison_seeds

    assert comparison_seeds(compose()) == [None] == comparison_seeds(compose(), "selected_seeds")
    cfg = compose("compare.seeds=[1,2,3]")
    assert comparison_seeds(cfg) == [1, 2, 3] == comparison_seeds(cfg, "selected_seeds")
    assert comparison_seeds(compose("compare.seeds=[1,2,3]", "compare.selected_seeds=[1]"), "selected_seeds") == [1]
    with pytest.raises(ValueError, match=r"compare.seeds=\[1, 1\]"):
        comparison_seeds(compose("compare.seeds=[1,1]"))
