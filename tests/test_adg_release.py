"""ADG as the authors released it (docs/methods.md §1b): the seven cloud metrics on hand-built Gram
matrices, the per-bin quota and the three subsets, empty answers, answer-token pooling, the
release's own bin embedding, and the sampling knobs reaching both samplers."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selectlab.lm.divergence import cloud_metrics, combined_score
from selectlab.config import preset
from selectlab.lm.embedding import embed_answer_sets, embed_texts
from selectlab.lm.models import load_causal_lm, load_tokenizer
from selectlab.lm.reference import reference_embedding
from selectlab.scorers import Scores
from selectlab.selectors import bin_quota, binwise, split_bins
from selectlab.infra.store import ArtifactStore

E = np.eye(3)


def metrics_of(*vectors) -> dict[str, float]:
    out = cloud_metrics(np.array(vectors, dtype=np.float64)[None])
    return {k: float(v[0]) for k, v in out.items()}


# ------------------------------------------------------------------ the seven metrics
def test_metrics_of_three_orthonormal_answers():
    # S = I; S_c = H has eigenvalues 1, 1, 0 (t = 2); without any one answer: two orthonormal
    # vectors, D = 1/2, so LOOD = |2/3 - 1/2| / (2/3) = 1/4.
    m = metrics_of(E[0], E[1], E[2])
    assert m["D"] == pytest.approx(2 / 3) and m["I"] == pytest.approx(1 / 2)
    assert m["H_spec"] == pytest.approx(math.log(2) / math.log(3))
    assert m["SEC"] == pytest.approx(1 / 3) and m["mean_cos"] == pytest.approx(0.0, abs=1e-12)
    assert m["eig_ratio_12"] == pytest.approx(1.0) and m["LOOD_var"] == pytest.approx(0.25)


def test_metrics_of_a_repeated_answer_and_a_third():
    # e1, e1, e2: mean (2/3, 1/3, 0) so D = 1 - 5/9 = 4/9; the centred cloud lies on one line (I = 0,
    # H_spec = 0). S has eigenvalues 2, 1, 0 (SEC = 2/3); cosines 1, 0, 0 (mean 1/3). Dropping the
    # e2 answer leaves no spread: LOOD = |4/9 - 0| / (4/9) = 1.
    m = metrics_of(E[0], E[0], E[1])
    assert m["D"] == pytest.approx(4 / 9) and m["I"] == pytest.approx(0.0, abs=1e-9)
    assert m["H_spec"] == pytest.approx(0.0, abs=1e-9) and m["SEC"] == pytest.approx(2 / 3)
    assert m["mean_cos"] == pytest.approx(1 / 3) and m["LOOD_var"] == pytest.approx(1.0)
    assert m["eig_ratio_12"] > 1e9  # λ1 / (0 + eps)


def test_metrics_of_identical_and_opposite_answers():
    same = metrics_of(E[0], E[0], E[0])  # no spread: D = I = H = LOOD = 0 and the ratio is inf
    assert (same["D"], same["I"], same["H_spec"], same["LOOD_var"]) == (0, 0, 0, 0)
    assert same["eig_ratio_12"] == math.inf and same["SEC"] == pytest.approx(1.0) and same["mean_cos"] == 1
    opposite = metrics_of(E[0], -E[0])  # K = 2: S_c = S, eigenvalues 2, 0; LOOD needs K > 2
    assert opposite["D"] == pytest.approx(1.0) and opposite["I"] == pytest.approx(0.0)
    assert opposite["SEC"] == pytest.approx(1.0) and opposite["mean_cos"] == -1 and opposite["LOOD_var"] == 0


def test_combined_score_accepts_release_and_short_names():
    cols = {"D": np.array([0.5]), "I": np.array([0.25]), "SEC": np.array([1.0])}
    assert combined_score(cols, "Sc.cov_trace", 0.6, "Sc.SED", 0.4)[0] == pytest.approx(0.4)
    assert combined_score(cols, "D", 1.0, "S.SEC", -0.5)[0] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="unknown ADG metric 'cov'"):
        combined_score(cols, "cov", 1.0, "D", 0.0)
    with pytest.raises(ValueError, match="at least 2 answers"):
        cloud_metrics(np.ones((1, 1, 3)))


# ------------------------------------------------------------------ quota and the three subsets
@pytest.mark.parametrize("size, ratio, expected", [
    (10, 0.2, (2, 2, 2)),    # 3 * 2 <= 10: all three get int(10 * 0.2)
    (5, 0.1, (1, 1, 1)),     # max(1, int(0.5)) = 1
    (4, 0.4, (1, 1, 1)),     # max(1, int(1.6)) = 1 each; 3 <= 4: no scaling
    (6, 0.5, (2, 2, 2)),     # 3 * 3 > 6: scale 6/9, top = bottom = int(3 * 2/3) = 2, middle = 6 - 4
    (7, 0.5, (2, 3, 2)),     # each 3, scale 7/9: int(2.33) = 2; middle 3
    (3, 0.9, (1, 1, 1)),     # each 2, scale 3/6: int(1.0) = 1; middle 1
])
def test_bin_quota_as_released(size, ratio, expected):
    assert bin_quota(size, ratio) == expected


def test_top_middle_bottom_on_a_hand_built_pool():
    # Bin 0 (ids 0-5) and bin 1 (ids 6-9) hold >= 3 items; bin 2 (ids 10, 11) is small: whole to middle.
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    score = np.array([.9, .1, .5, .7, .3, .2, .8, .6, .4, .05, .95, .15])
    # r = 4/12 = 1/3: bin 0 (6): each 2, 3*2 <= 6 -> ranked 0(.9) 3(.7) 2(.5) 4(.3) 5(.2) 1(.1):
    # top [0, 3], bottom [5, 1], middle the central 2 of [2, 4] = [2, 4]. Bin 1 (4): each 1 ->
    # ranked 6(.8) 7(.6) 8(.4) 9(.05): top [6], bottom [9], middle central 1 of [7, 8]: start
    # (2 - 1) // 2 = 0 -> [7].
    groups = split_bins(score, labels, 4 / 12, 3)
    assert groups == {"top": [0, 3, 6], "middle": [2, 4, 7, 10, 11], "bottom": [5, 1, 9]}
    # r = 0.5 > 1/3: bin 0 each 3 -> scaled 6/9: top 2, bottom 2, middle 2; bin 1 each 2 -> scale
    # 4/6: top int(1.33) = 1, bottom 1, middle 4 - 2 = 2 = all of [7, 8].
    groups = split_bins(score, labels, 0.5, 3)
    assert groups == {"top": [0, 3, 6], "middle": [2, 4, 7, 8, 10, 11], "bottom": [5, 1, 9]}


def test_binwise_returns_top_with_middle_and_bottom_subsets():
    # Two obvious clusters of six; budget 4 of 12 (r = 1/3): each bin gives 2 / 2 / 2.
    features = np.array([[1.0, 0.0]] * 6 + [[0.0, 1.0]] * 6, dtype=np.float32)
    features += np.random.default_rng(0).normal(0, 0.01, features.shape).astype(np.float32)
    score = np.array([.9, .1, .5, .7, .3, .2, .8, .6, .4, .05, .95, .15])
    cfg = {"n_bins": 2, "min_bin_size": 3, "random_state": 42, "n_init": 3, "max_iter": 100}
    sel = binwise(Scores(ids=[str(i) for i in range(12)], score=score, features=features), 4, cfg)
    # bin A (0-5) ranked 0 3 2 4 5 1; bin B (6-11) ranked 10 6 7 8 11 9
    assert sel.order == [10, 0, 6, 3]  # the top group re-sorted by score (within budget: all 4)
    assert sorted(sel.subsets["middle"]) == [2, 4, 7, 8]
    assert sel.subsets["bottom"] == [9, 1, 11, 5]  # lowest first
    assert len(set(sel.bins[:6])) == 1 and len(set(sel.bins[6:])) == 1 and sel.bins[0] != sel.bins[6]


# ------------------------------------------------------------------ embedding rules on the tiny llama
@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_causal_lm(str(tiny_model_dir), "float32", "cpu"), load_tokenizer(str(tiny_model_dir))


INSTR = ["Name three primary colors.", "What is 12 times 3?"]


def test_empty_answer_is_the_instruction_alone_or_zero(tiny):
    model, tok = tiny
    answers = [["Red, blue and yellow.", ""], ["", "36"]]
    as_instruction = embed_answer_sets(model, tok, INSTR, answers, preset("embedding", "release", empty_answer="instruction"))
    alone = embed_texts(model, tok, INSTR, preset("embedding", "release"))
    np.testing.assert_allclose(as_instruction.answers[0, 1], alone[0], atol=1e-6)
    np.testing.assert_allclose(as_instruction.answers[1, 0], alone[1], atol=1e-6)
    assert as_instruction.counts["empty_answers_as_instruction"] == 2
    as_zero = embed_answer_sets(model, tok, INSTR, answers, preset("embedding", "release", empty_answer="zero"))
    assert not as_zero.answers[0, 1].any() and not as_zero.answers[1, 0].any()
    assert as_zero.counts["empty_answers_as_zero"] == 2
    np.testing.assert_array_equal(as_zero.answers[0, 0], as_instruction.answers[0, 0])


@pytest.mark.parametrize("prefix_reuse", [True, False])
def test_answer_pooling_pools_only_the_answer_tokens_of_the_joint_pass(tiny, prefix_reuse):
    import torch

    model, tok = tiny
    instruction, answer = INSTR[0], "Red, blue and yellow."
    cfg = preset("embedding", "release", pool="answer", prefix_reuse=prefix_reuse)
    got = embed_answer_sets(model, tok, [instruction], [[answer, answer + " Done."]], cfg).answers[0, 0]
    # by hand: one forward of the joint text, weighted mean over positions after the instruction's tokens
    n_instr = len(tok(instruction, add_special_tokens=False)["input_ids"])
    ids = tok(instruction + " " + answer, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    h = torch.stack([hs[i][0] for i in (-4, -3, -2)]).mean(0)[n_instr:].double()
    from selectlab.lm.embedding import piece_weight

    w = torch.tensor([piece_weight(tok.decode([t])) for t in ids[0, n_instr:].tolist()], dtype=torch.float64)
    v = (h * w[:, None]).sum(0) / w.sum()
    np.testing.assert_allclose(got, (v / v.norm()).numpy(), atol=1e-5)
    everything = embed_answer_sets(model, tok, [instruction], [[answer, answer]], preset("embedding", "release")).answers[0, 0]
    assert np.abs(everything - got).max() > 1e-3  # all-token pooling differs


def test_release_bin_embedding_uses_special_tokens_512_and_uniform_fallback(tiny):
    model, tok = tiny
    texts = ["  Name three primary colors.  ", "...", "x " * 700]
    cfg = preset("embedding", "release", max_length=512)
    got = embed_texts(model, tok, [t.strip() for t in texts], cfg, add_special_tokens=True, unweighted="uniform")
    for row, text in zip(got, texts):
        ref = reference_embedding(model, tok, text.strip(), (-4, -3, -2), 512, add_special_tokens=True,
                                  uniform_fallback=True)
        np.testing.assert_allclose(row, ref, atol=1e-5)
    assert got[1].any()  # "..." weighs 0 everywhere: the uniform mean, not the zero vector
    assert not embed_texts(model, tok, ["..."], cfg).any()


# ------------------------------------------------------------------ through the real configs
def test_sampler_top_k_eos_and_empty_answer_defaults_are_the_release(compose):
    from selectlab.lm.sampling import vllm_request_params

    for sampler in ("vllm", "hf"):
        cfg = compose("scorer=adg", f"sampler={sampler}")
        assert cfg.sampler.top_k == 50 and cfg.sampler.eos == "tokenizer"
    assert compose("scorer=adg").embedding.empty_answer == "instruction"
    assert compose("scorer=adg", "backbone=qwen2_5_7b").embedding.empty_answer == "zero"
    params = vllm_request_params(compose("scorer=adg").sampler, repetition_penalty=1.0)
    assert params["top_k"] == 50 and params["n"] == 5 and params["top_p"] == 0.9
    assert vllm_request_params(compose("scorer=adg", "sampler.top_k=0").sampler, 1.0)["top_k"] == -1


def test_hf_sampler_applies_top_k(tiny_model_dir, tmp_path, compose):
    """top_k=1 leaves one candidate token per step: all K answers are the greedy one, whatever the
    temperature; with top_k off the same seed draws K different answers."""
    from selectlab.pools import load_pool
    from selectlab.config import plain
    from selectlab.lm.sampling import sample_answers
    from selectlab.infra.store import ArtifactStore

    store = ArtifactStore(tmp_path / "cache")
    cfg = compose("scorer=adg", "sampler=hf", "pool=self_instruct_seed", "pool.limit=2", "sampler.k=3",
                  "sampler.max_new_tokens=8", "sampler.dtype=float32")
    records = load_pool(plain(cfg.pool), seed=1).records
    greedy = sample_answers(records, str(tiny_model_dir), {**plain(cfg.sampler), "top_k": 1}, store, seed=1)
    free = sample_answers(records, str(tiny_model_dir), {**plain(cfg.sampler), "top_k": 0}, store, seed=1)
    assert all(len(set(r["answers"])) == 1 for r in greedy)
    assert any(len(set(r["answers"])) > 1 for r in free)


@pytest.mark.slow
def test_bins_are_shared_across_embedding_ablations_and_reach_the_run(compose, tiny_model_dir, caplog):
    """A real scorer=adg run writes bins.npy, the three subsets and a report with the bin panel; a
    rerun with embedding=last4 reuses the bin artifact and gets identical bins."""
    import logging

    from selectlab.pipeline import run

    base = ["scorer=adg", "sampler=hf", "pool=alpaca", "pool.limit=12", f"backbone.path={tiny_model_dir}",
            "sampler.k=3", "sampler.max_new_tokens=8", "sampler.dtype=float32", "sampler.batch_size=6",
            "scorer.batch_size=6", "selection.budget=4", "logger=none"]
    cfg = compose(*base)
    first = run(cfg)
    run_dir = Path(first["run_dir"])
    assert first["extra_subsets"].keys() == {"middle", "bottom"}
    bins = np.load(ArtifactStore(Path(cfg.cache_dir)).path("subsets", first["artifacts"]["subset"]) / "bins.npy")
    assert bins.shape == (12,)
    bottom = [json.loads(line) for line in (run_dir / "subset_bottom.jsonl").read_text().splitlines()]
    assert bottom and [r["score"] for r in bottom] == sorted(r["score"] for r in bottom)
    assert first["counts"]["empty_answers_as_zero"] == 0
    panels = Image.open(run_dir / "selection_report.png").text["Description"]
    assert panels.startswith("panels: score, D, I") and panels.endswith("bins")

    caplog.set_level(logging.INFO)
    second = run(compose(*base, "embedding=last4"))
    assert any("bin embeddings" in m and "reused" in m for m in caplog.messages)
    stages = {(s["stage"], s["reused"]) for s in second["stages"]}
    assert ("adg_bins", True) in stages and ("adg_embeddings", False) in stages
