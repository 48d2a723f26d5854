"""InstructMining: indicators, rules, rule fitting, subset-size search and the scorer."""
from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

import selectlab.config  # noqa: F401  (registers the ${cache_dir:} resolver the composed configs use)
from selectlab.instructmining import fit_experiment, fit_rule, predicted_loss, save_rule_yaml, search_subset_size
from selectlab.instructmining import indicators as ind
from selectlab.instructmining.rules import RuleError

# ---------------------------------------------------------------- MTLD


def test_mtld_hand_computed():
    # "one two one three four", threshold 0.72.
    # forward: one (TTR 1/1), two (2/2), one (2/3 = .667 <= .72 -> factor 1, reset), three (1/1), four (2/2):
    #   leftover segment TTR 1 -> partial (1 - 1)/.28 = 0; factors 1 -> MTLD 5/1 = 5.
    # backward: four, three, one, two (all TTR 1), one (4/5 = .8, above .72): no full factor;
    #   partial (1 - .8)/.28 = .714285...; MTLD 5/.714285... = 7.
    # mean (5 + 7)/2 = 6.
    assert ind.mtld("One two, one three four.") == pytest.approx(6.0, abs=1e-12)
    # "a a b b": a (1), a (1/2 -> factor, reset), b (1), b (1/2 -> factor); 4 words / 2 factors, both ways.
    assert ind.mtld("a a b b") == pytest.approx(2.0)


def test_mtld_degenerate_cases():
    # all words distinct: no factor starts in either direction -> the whole text is one factor (lexicalrichness)
    assert ind.mtld("alpha beta gamma") == 3.0 and ind.mtld_undefined("alpha beta gamma")
    assert not ind.mtld_undefined("a a b b")
    assert math.isnan(ind.mtld("  ... !!")) and not ind.mtld_undefined("...")


# ---------------------------------------------------------------- KNN-i


def test_knn_distance_on_a_line():
    # points at 0, 1, 3, 6, 10, 15, 21, 28; the 2nd nearest OTHER point of each, by hand:
    # 0 -> {1, 3} -> 3; 1 -> {1, 2} -> 2; 3 -> {2, 3} -> 3; 6 -> {3, 4} -> 4; 10 -> {4, 5} -> 5;
    # 15 -> {5, 6} -> 6; 21 -> {6, 7} -> 7; 28 -> {7, 13} -> 13
    x = np.array([[p, 0.0] for p in (0, 1, 3, 6, 10, 15, 21, 28)])
    for block_rows in (1, 3, 100):
        np.testing.assert_allclose(ind.knn_distances(x, k=2, block_rows=block_rows), [3, 2, 3, 4, 5, 6, 7, 13])


def test_knn6_matches_brute_force_and_cosine():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5))
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_allclose(ind.knn_distances(x, k=6, block_rows=7), np.sort(d, axis=1)[:, 5], rtol=1e-9)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = 1 - u @ u.T
    np.fill_diagonal(c, np.inf)
    np.testing.assert_allclose(ind.knn_distances(x, k=6, metric="cosine"), np.sort(c, axis=1)[:, 5], atol=1e-12)
    with pytest.raises(ValueError, match="more than 6"):
        ind.knn_distances(x[:6], k=6)


# ---------------------------------------------------------------- rules


def _rule(compose, name: str) -> dict:
    return OmegaConf.to_container(compose("scorer=instructmining", f"scorer/rule={name}").scorer.rule)


def test_published_rules_arithmetic(compose):
    b = _rule(compose, "paper_b")
    # 1.0694 - 0.1498*4 + 8.257e-5*100 - 0.9350*0.5 = 1.0694 - 0.5992 + 0.008257 - 0.4675 = 0.010957
    cols = {"reward": np.array([4.0, np.nan]), "output_length": np.array([100.0, 1.0]), "knn6": np.array([0.5, 0.1])}
    out = predicted_loss(cols, b)
    assert out[0] == pytest.approx(0.010957, abs=1e-12) and math.isnan(out[1])
    a = _rule(compose, "paper_a")
    # 0.0274 - 0.0078*2 + 0.4421*0.9 - 0.3212*0.8 - 0.1520*0.7 = 0.0274 - 0.0156 + 0.39789 - 0.25696 - 0.1064 = 0.04633
    cols = {"reward": np.array([2.0]), "understandability": np.array([0.9]), "naturalness": np.array([0.8]),
            "coherence": np.array([0.7])}
    assert predicted_loss(cols, a)[0] == pytest.approx(0.04633, abs=1e-12)
    assert "could not be checked" in a["provenance"] and a["scaling"].startswith("Unknown")
    with pytest.raises(RuleError, match=r"needs indicators \['knn6'\]"):
        predicted_loss({"reward": np.ones(1), "output_length": np.ones(1)}, b)


# ---------------------------------------------------------------- fitting


def test_fit_rule_recovers_planted_rule(tmp_path):
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.uniform(1, 6, 80), rng.uniform(50, 400, 80), rng.uniform(0.2, 1.2, 80)])
    beta0, beta = 1.07, np.array([-0.15, 8e-4, -0.9])
    loss = np.exp(beta0 + X @ beta + rng.normal(0, 0.002, 80))
    fit = fit_rule(X, loss)
    np.testing.assert_allclose(fit["coefficients"], beta, rtol=0.05)
    assert fit["intercept"] == pytest.approx(beta0, rel=0.05) and fit["r2"] > 0.99 and fit["n"] == 80

    path = save_rule_yaml(fit, ["reward", "output_length", "knn6"], tmp_path / "fitted_demo.yaml", "synthetic")
    rule = yaml.safe_load(path.read_text())
    assert rule["name"] == "fitted_demo" and "scorer/rule=fitted_demo" in path.read_text()
    cols = dict(zip(["reward", "output_length", "knn6"], X.T))
    np.testing.assert_allclose(predicted_loss(cols, rule), np.log(loss), atol=0.01)
    with pytest.raises(ValueError, match="need more than 4"):
        fit_rule(X[:4], loss[:4])


def test_fit_rule_adjusted_r2_and_standard_errors_by_hand():
    # One indicator, five fine-tunes: y = log(loss) = 1, 2, 2, 3, 5 at x = 0..4.
    x, y = np.arange(5.0), np.array([1.0, 2.0, 2.0, 3.0, 5.0])
    fit = fit_rule(x[:, None], np.exp(y))
    # slope = Sxy / Sxx = 9 / 10, intercept 2.6 - 0.9 * 2; residuals 0.2, 0.3, -0.6, -0.5, 0.6 -> SSE 1.1, SST 9.2
    assert fit["coefficients"][0] == pytest.approx(0.9) and fit["intercept"] == pytest.approx(0.8)
    assert fit["r2"] == pytest.approx(1 - 1.1 / 9.2)
    assert fit["adj_r2"] == pytest.approx(1 - (1.1 / 9.2) * 4 / 3)
    assert fit["std_errors"][0] == pytest.approx(np.sqrt(1.1 / 3 / 10))   # sqrt(sigma^2 / Sxx)


def test_fit_experiment_with_planted_eval_loss():
    rng = np.random.default_rng(2)
    records = [{"id": f"r{i}"} for i in range(200)]
    columns = {"a": rng.uniform(0, 1, 200), "b": rng.uniform(0, 10, 200)}
    by_id = {r["id"]: i for i, r in enumerate(records)}
    calls = []

    def train_and_eval(subset):  # stands for fine-tune + held-out loss: log-linear in the subset means
        calls.append(len(subset))
        idx = [by_id[r["id"]] for r in subset]
        return math.exp(0.5 - 0.8 * columns["a"][idx].mean() + 0.03 * columns["b"][idx].mean())

    result, table = fit_experiment(records, columns, M=12, subset_size=20, seed=0, train_and_eval=train_and_eval)
    assert calls == [20] * 12 and len(table) == 12 and result["names"] == ["a", "b"]
    np.testing.assert_allclose(result["coefficients"], [-0.8, 0.03], rtol=1e-6)
    assert result["intercept"] == pytest.approx(0.5, rel=1e-6)
    again, _ = fit_experiment(records, columns, 12, 20, 0, train_and_eval)
    assert [t["ids"] for t in table] == [t["ids"] for t in _]  # seeded subsets


# ---------------------------------------------------------------- BlendSearch (real FLAML)


def test_blendsearch_finds_known_minimum():
    best, trials = search_subset_size(lambda n: (math.log(n) - math.log(300)) ** 2, low=10, high=5000,
                                      num_samples=40, time_budget_s=None, seed=0)
    assert len(trials) <= 40 and all(10 <= t["n"] <= 5000 for t in trials)
    assert abs(math.log(best) - math.log(300)) < 0.05, (best, [t["n"] for t in trials])
    assert best == min(trials, key=lambda t: t["loss"])["n"] and trials[0]["n"] == 10  # starts cheap


# ---------------------------------------------------------------- model-based indicators (tiny llama)

RECORDS = [
    {"id": "a", "instruction": "Name a primary colour.", "input": "", "output": "Red."},
    {"id": "b", "instruction": "Add the numbers.", "input": "2 and 3", "output": "2 + 3 = 5, so the answer is 5."},
]


def _rating_by_hand(model, tok, prompt: str, digits) -> float:
    """One prompt alone, no padding, no cache: softmax over the digit logits at its last position."""
    import torch

    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    p = torch.softmax(logits[digits].double(), dim=0).numpy()
    return float(np.dot(p, np.arange(1, 7)))


def test_judge_rating_equals_hand_computation(tiny_model_dir):
    from selectlab.lm.models import load_causal_lm, load_tokenizer

    model, tok = load_causal_lm(str(tiny_model_dir), device="cpu"), load_tokenizer(str(tiny_model_dir))
    template = "Rate the answer.\n#Question#:\n{question}\n#Response#:\n{response}\n##Quality: "
    prompts = [ind.judge_prompt(r, template, tok, True) for r in RECORDS]
    digits = ind.digit_token_ids(tok)
    batched = ind.prompt_ratings(model, tok, prompts, digits, batch_size=8, add_special_tokens=False)
    assert np.all((batched >= 1) & (batched <= 6))
    assert batched[1] == pytest.approx(_rating_by_hand(model, tok, prompts[1], digits), abs=1e-5)
    assert "<|im_start|>user" in prompts[1] and "2 and 3" in prompts[1]


def test_shared_prefix_runs_once_and_changes_no_rating(tiny_model_dir):
    """Prompts of different lengths sharing a long template prefix, in batches of 2 (so several batches
    reuse the prefix's cache, with right padding): every rating equals its whole prompt's, alone."""
    from selectlab.lm.models import load_causal_lm, load_tokenizer

    model, tok = load_causal_lm(str(tiny_model_dir), device="cpu"), load_tokenizer(str(tiny_model_dir))
    template = "You are a careful grader of answers.\n#Question#:\n{question}\n#Response#:\n{response}\n##Quality: "
    records = RECORDS + [{"id": "c", "instruction": "Write one long sentence about rivers and their deltas.",
                          "input": "", "output": "Rivers carry silt to the sea, where it settles into deltas " * 3},
                         {"id": "d", "instruction": "Say hi.", "input": "", "output": "Hi."}]
    prompts = [ind.judge_prompt(r, template, tok, True) for r in records]
    ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    shared = ind.shared_prefix_length(ids)
    assert shared >= 10 and all(x[:shared] == ids[0][:shared] for x in ids)
    digits = ind.digit_token_ids(tok)
    ratings = ind.prompt_ratings(model, tok, prompts, digits, batch_size=2, add_special_tokens=False)
    assert ratings == pytest.approx([_rating_by_hand(model, tok, p, digits) for p in prompts], abs=1e-5)
    assert ind.shared_prefix_length([[1, 2, 3], [1, 2]]) == 1  # each keeps a token of its own
    assert ind.shared_prefix_length([[5, 2], [1, 2]]) == 0


# ---------------------------------------------------------------- the scorer, composed from the real configs


def _context(cfg, records):
    from selectlab.pools import Pool
    from selectlab.context import RunContext
    from selectlab.infra.store import ArtifactStore, content_hash

    store = ArtifactStore(cfg.cache_dir)
    return RunContext(cfg=cfg, store=store, pool=Pool("t", records, [], len(records)),
                        pool_key=content_hash(records), backbone=lambda: str(cfg.backbone.path))


def _pool(cfg, n):
    from selectlab.pools import load_pool

    pool = OmegaConf.to_container(cfg.pool, resolve=True)
    return load_pool({**pool, "limit": n, "sample": "head"}, seed=0).records


@pytest.mark.slow
def test_scorer_rule_b_with_judge_on_tiny_model(compose, tiny_model_dir):
    from selectlab.scorers import get_scorer

    cfg = compose("scorer=instructmining", f"backbone.path={tiny_model_dir}", "scorer.log_indicators=[mtld,perplexity]")
    records = _pool(cfg, 10)
    ctx = _context(cfg, records)
    scores = get_scorer("instructmining")(ctx)
    cols = scores.columns
    assert list(cols) == ["reward", "output_length", "knn6", "mtld", "perplexity", "predicted_loss"]
    assert np.all((cols["reward"] >= 1) & (cols["reward"] <= 6))
    assert np.all((cols["knn6"] > 0) & (cols["knn6"] < 2))
    from selectlab.lm.lm_scoring import answer_losses
    from selectlab.lm.models import load_causal_lm, load_tokenizer
    from selectlab.lm.prompts import render_prompt

    tok = load_tokenizer(str(tiny_model_dir))
    model = load_causal_lm(str(tiny_model_dir), device="cpu")
    loss = answer_losses(model, tok, [render_prompt(r, "alpaca") for r in records], [" " + r["output"] for r in records],
                         max_length=1024, batch_size=3, add_bos=True)
    np.testing.assert_allclose(cols["perplexity"], np.exp(loss), rtol=1e-5)
    np.testing.assert_allclose(cols["mtld"], [ind.mtld(r["output"]) for r in records])
    assert cols["output_length"].tolist() == [len(tok(r["output"], add_special_tokens=False)["input_ids"])
                                              for r in records]
    expected = 1.0694 - 0.1498 * cols["reward"] + 8.257e-5 * cols["output_length"] - 0.9350 * cols["knn6"]
    np.testing.assert_allclose(cols["predicted_loss"], expected, rtol=1e-12)
    np.testing.assert_array_equal(scores.score, -cols["predicted_loss"])
    assert scores.counts["predicted_loss_nan"] == 0 and "mtld_all_words_distinct" in scores.counts
    assert scores.meta["reward_is_substitute"] and scores.meta["rule"]["name"] == "paper_b"
    # pinned (computed once): the seeded tiny llama's judge ratings (near 3.5: random weights) and
    # all-MiniLM-L6-v2's KNN-6 distances on the first 3 of the first 10 Alpaca rows
    np.testing.assert_allclose(cols["reward"][:3], [3.390938, 3.397014, 3.374897], atol=1e-4)
    np.testing.assert_allclose(cols["knn6"][:3], [1.434052, 1.399577, 1.399656], atol=1e-4)

    # changing one indicator's config recomputes only that indicator
    n_events = len(ctx.store.events)
    cfg2 = compose("scorer=instructmining", f"backbone.path={tiny_model_dir}", "scorer.indicators.knn6.k=3")
    ctx2 = _context(cfg2, records)
    ctx2.store = ctx.store
    get_scorer("instructmining")(ctx2)
    fresh = [(e.stage, e.reused) for e in ctx.store.events[n_events:]]
    assert fresh == [("im_indicator", True), ("im_indicator", True), ("im_sbert_embeddings", True),
                     ("im_indicator", False)]


def test_rule_a_offline_names_the_missing_model_key(compose, tiny_model_dir):
    from selectlab.scorers import get_scorer
    from selectlab.scorers.instructmining import IndicatorConfigError

    cfg = compose("scorer=instructmining", "scorer/rule=paper_a", f"backbone.path={tiny_model_dir}")
    with pytest.raises(IndicatorConfigError, match=r"scorer.indicators.understandability.model.hub_id="
                                                   r"MingZhong/unieval-dialog is not in the local"):
        get_scorer("instructmining")(_context(cfg, _pool(cfg, 8)))
    cfg = compose("scorer=instructmining", "scorer/reward=oasst_deberta", f"backbone.path={tiny_model_dir}")
    with pytest.raises(IndicatorConfigError, match=r"scorer.reward.model.hub_id=OpenAssistant"):
        get_scorer("instructmining")(_context(cfg, _pool(cfg, 8)))


@pytest.mark.slow
def test_size_grid_through_the_pipeline_fine_tunes_each_size(compose, tiny_model_dir, tmp_path):
    """selector=size_grid: a real fine-tune and held-out loss per n; the best n is the subset."""
    import json
    from pathlib import Path

    from selectlab import pipeline
    from selectlab.infra.store import read_jsonl

    overrides = ["pool=alpaca", "pool.limit=8", "scorer=length", f"backbone.path={tiny_model_dir}",
                 "selector=size_grid", "selector.grid=[2,4,50]", "train=cpu_small", "train.max_steps=2",
                 "train.grad_accum=1", "train.save_steps=100", "heldout.limit=4"]  # W&B offline
    manifest = pipeline.run(compose(*overrides))
    search = json.loads((tmp_path / "run" / "size_search.json").read_text())
    trials = search["trials"]
    assert [t["n"] for t in trials] == [2, 4, 8]  # 50 capped at the 8 scored examples
    assert all(math.isfinite(t["loss"]) and t["seconds"] > 0 for t in trials)
    assert search["best_n"] == min(trials, key=lambda t: t["loss"])["n"] and search["source"] == "grid"
    subset = read_jsonl(Path(manifest["subset_path"]))
    lengths = [r["score"] for r in subset]
    assert len(subset) == search["best_n"] and lengths == sorted(lengths, reverse=True)  # the top-n by score
    assert sum(s["stage"] == "eval_loss" and not s["reused"] for s in manifest["stages"]) == 3

    from selectlab.outputs.wandb_offline import find_runs, read_run

    (wandb_run,) = [read_run(d) for d in find_runs(tmp_path / "run")]
    live = [(h["size_search/n"], h["size_search/loss"]) for h in wandb_run.history if "size_search/n" in h]
    assert live == [(t["n"], t["loss"]) for t in trials]  # each trial logged as it finished
    assert wandb_run.tables["size_search"]["data"] == [[t["n"], t["loss"], t["seconds"]] for t in trials]

    # A cached rerun (a new run folder) still logs the size_search table, from the subset artifact.
    rerun_dir = tmp_path / "rerun"
    manifest = pipeline.run(compose(*overrides, f"run_dir={rerun_dir}"))
    assert [s["reused"] for s in manifest["stages"] if s["stage"] == "subsets"] == [True]
    (rerun,) = [read_run(d) for d in find_runs(rerun_dir)]
    assert rerun.tables["size_search"]["data"] == [[t["n"], t["loss"], t["seconds"]] for t in trials]
    assert json.loads((rerun_dir / "size_search.json").read_text()) == search
    # Another train.lr is another size search: the subset is recomputed, not reused.
    manifest = pipeline.run(compose(*overrides, "train.lr=3e-4", f"run_dir={tmp_path / 'lr'}"))
    assert [s["reused"] for s in manifest["stages"] if s["stage"] == "subsets"] == [False]
