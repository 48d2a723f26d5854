"""ADG embedding and score: analytic clouds, the token-weight rule on SmolLM2's vocabulary, and
the batched / prefix-reuse paths against the one-forward-per-text reference on the tiny llama."""
from __future__ import annotations

import numpy as np
import pytest

from selectlab.lm.divergence import adg_score, divergence
from selectlab.config import preset
from selectlab.lm.embedding import embed_answer_sets, embed_texts, piece_weight, token_weight_table
from selectlab.lm.models import load_causal_lm, load_tokenizer
from selectlab.lm.reference import reference_divergence, reference_embedding, reference_scores

INSTRUCTIONS = [
    "Give three tips for staying healthy.",
    "What is 2+2?",
    "List two colors:\n",  # its joint tokenization with " Sure" / "\nSure" does not start with its own tokens
    "Translate 'chat' from French, then explain in one long sentence why the word is a false friend for English speakers.",
]
ANSWERS = [
    ["Eat well, sleep 8 hours and exercise.", "Drink water.", "", "1. Sleep. 2. Eat. 3. Run 5 km at 20% more.", "..."],
    ["4", "It is 4.", "The answer is four, because 2 plus 2 equals 4 (in base 10).", "2+2=4", "Four"],
    ["Sure", " Sure", "\nSure", "Red and blue.", "Red; green"],
    ["cat", "The French word 'chat' means cat, while in English 'chat' means an informal talk.", "cat", "Cat.", "  "],
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_causal_lm(str(tiny_model_dir), "float32", "cpu"), load_tokenizer(str(tiny_model_dir))


# ------------------------------------------------------------------ score on analytic clouds
def test_identical_answers_have_no_spread():
    v = np.random.default_rng(0).normal(size=16)
    D, I = divergence(np.tile(v / np.linalg.norm(v), (1, 5, 1)))
    assert D[0] == 0 and I[0] == 0


def test_two_opposite_answers():
    v = np.eye(8)[3]
    D, I = divergence(np.stack([v, -v])[None])
    np.testing.assert_allclose([D[0], I[0]], [1.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("k", [3, 5, 7])
def test_orthonormal_simplex_is_isotropic(k):
    # Centred Gram of K orthonormal vectors = H: eigenvalue 1 (K-1 times) and 0.
    D, I = divergence(np.eye(k, 10)[None])
    np.testing.assert_allclose([D[0], I[0]], [1 - 1 / k, 1 - 1 / (k - 1)], atol=1e-12)


def test_zero_vector_counts_as_a_point_at_the_origin():
    D, I = divergence(np.stack([np.eye(4)[0], np.zeros(4)])[None])
    np.testing.assert_allclose([D[0], I[0]], [0.25, 0.0], atol=1e-12)


def test_batched_divergence_equals_per_instruction_reference():
    rng = np.random.default_rng(1)
    V = rng.normal(size=(6, 5, 32))
    V /= np.linalg.norm(V, axis=2, keepdims=True)
    V[2] = V[2, :1]  # one cloud collapsed to a point
    D, I = divergence(V)
    ref = np.array([reference_divergence(v) for v in V])
    np.testing.assert_allclose(D, ref[:, 0], atol=1e-12)
    np.testing.assert_allclose(I, ref[:, 1], atol=1e-12)
    assert D[2] == 0 and I[2] == 0
    np.testing.assert_array_equal(np.stack(divergence(V, chunk=4)), np.stack([D, I]))  # chunking is exact
    np.testing.assert_allclose(adg_score(D, I), 0.6 * D + 0.4 * I)
    np.testing.assert_allclose(adg_score(D, I, lam=0.0), D)


# ------------------------------------------------------------------ token weights
def test_piece_weight_rule():
    assert [piece_weight(s) for s in ["", "  ", ",", " (", "...", " -- ", "\\", "`", '"', "_/", ". ,"]] == [0.0] * 11
    assert [piece_weight(s) for s in ["5", " 2023", "%", "℃", "°", "a1", "1."]] == [1.3] * 7
    assert [piece_weight(s) for s in [" the", "#", "'s", "C", "+", "�"]] == [1.0] * 6


def test_token_weight_table_on_smollm2(smol_tokenizer_dir):
    tok = load_tokenizer(str(smol_tokenizer_dir))
    table = token_weight_table(tok)
    assert table.shape == (49152,) and table.dtype == np.float32
    known = {28: 0.0, 30: 0.0, 365: 0.0, 25: 0.0, 4563: 0.0, 76: 0.0, 80: 0.0, 731: 0.0,  # , . ␣( ) ␣... \ ` ␣-
             260: 1.0, 19: 1.0, 506: 1.0, 51: 1.0,  # ␣the # 's C
             37: 1.3, 21: 1.3, 4742: 1.3}  # 5 % °
    assert {i: float(np.float32(table[i])) for i in known} == {i: float(np.float32(w)) for i, w in known.items()}
    # pinned counts over the whole vocabulary
    assert (int((table == 0).sum()), int((table == 1).sum()), int(np.isclose(table, 1.3).sum())) == (823, 48281, 48)
    # the table is exactly the release's run-time rule: decode each id alone
    sample = range(0, 49152, 97)
    assert [table[i] for i in sample] == [np.float32(piece_weight(tok.decode([i]))) for i in sample]


# ------------------------------------------------------------------ pooling = reference
@pytest.mark.parametrize("layers", [(-4, -3, -2), (-4, -3, -2, -1), (0, 2)])
@pytest.mark.parametrize("prefix_reuse", [False, True])
@pytest.mark.parametrize("token_budget", [64, 4096])  # 64: many small ragged batches
def test_batched_embedding_equals_reference(tiny, layers, prefix_reuse, token_budget):
    model, tok = tiny
    cfg = preset("embedding", "release", layers=layers, prefix_reuse=prefix_reuse, token_budget=token_budget, max_length=64)
    emb = embed_answer_sets(model, tok, INSTRUCTIONS, ANSWERS, cfg)
    ref = reference_scores(model, tok, INSTRUCTIONS, ANSWERS, layers=layers, max_length=64)
    assert emb.answers.shape == (4, 5, 64)
    assert np.abs(emb.answers - ref["vectors"]).max() <= 1e-5
    # "" and "  " are empty: under the default (LLaMA) rule the joint text, i.e. the instruction, is embedded
    assert emb.answers[0, 2].any() and emb.counts["empty_answers_as_instruction"] == 2
    np.testing.assert_allclose(np.linalg.norm(emb.answers[1], axis=1), 1, atol=1e-6)
    ref_instr = np.stack([reference_embedding(model, tok, t, layers, 64) for t in INSTRUCTIONS])
    assert np.abs(emb.instructions - ref_instr).max() <= 1e-5
    assert emb.counts["empty_answers"] == 2 and emb.counts["truncated_texts"] == 0
    # 18 non-empty texts; with reuse all but the two whose tokenization breaks the prefix share it
    # 16 answers plus the two empty ones, embedded as their instruction (the default, LLaMA rule)
    assert emb.counts["prefix_reused_texts"] == (18 if prefix_reuse else 0)
    D, I = divergence(emb.answers)
    np.testing.assert_allclose(D, ref["D"], atol=1e-5)
    np.testing.assert_allclose(I, ref["I"], atol=1e-5)


def test_truncation_is_exact_and_counted(tiny):
    model, tok = tiny
    for reuse in (False, True):
        cfg = preset("embedding", "release", max_length=12, token_budget=40, prefix_reuse=reuse)
        emb = embed_answer_sets(model, tok, INSTRUCTIONS, ANSWERS, cfg)
        ref = reference_scores(model, tok, INSTRUCTIONS, ANSWERS, max_length=12)
        assert np.abs(emb.answers - ref["vectors"]).max() <= 1e-5
        # joint lengths 17, 31, 28, 13, 26, 45, 26, 27 exceed 12 tokens, and the 4th instruction's joint
        # text with its empty answer "  "; so does the 25-token 4th instruction alone
        assert emb.counts["truncated_texts"] == 9 and emb.counts["truncated_instructions"] == 1


def test_embed_texts_matches_reference_and_empty_is_zero(tiny):
    model, tok = tiny
    texts = ["Write a haiku about autumn.", "", "...", "Compute 15% of 80."]
    got = embed_texts(model, tok, texts, preset("embedding", "release", token_budget=1024))
    ref = np.stack([reference_embedding(model, tok, t, (-4, -3, -2)) for t in texts])
    assert np.abs(got - ref).max() <= 1e-5
    assert not got[1].any() and not got[2].any()  # "..." has only zero-weight tokens


def test_scores_pinned_on_hand_made_sets(tiny):
    """Pinned under the Qwen script's rule (an empty answer is the zero vector)."""
    model, tok = tiny
    emb = embed_answer_sets(model, tok, INSTRUCTIONS, ANSWERS, preset("embedding", "release", prefix_reuse=True, empty_answer="zero"))
    D, I = divergence(emb.answers)
    s = adg_score(D, I, 0.4)
    ref = reference_scores(model, tok, INSTRUCTIONS, ANSWERS, empty_answer="zero")
    np.testing.assert_allclose(s, ref["score"], atol=1e-5)
    np.testing.assert_allclose(D, PINNED_D, atol=1e-5)
    np.testing.assert_allclose(I, PINNED_I, atol=1e-5)


# computed once on the seeded tiny llama (release layers, fp32, CPU)
PINNED_D = [0.275764, 0.046949, 0.057961, 0.168212]
PINNED_I = [0.445682, 0.443382, 0.416726, 0.060813]


def test_errors_only_the_model_can_find_name_the_key(tiny):
    """(An unknown embedding key or choice fails at composition or in validate: tests/test_config_domains.py.)"""
    model, tok = tiny
    with pytest.raises(ValueError, match="embedding.layers: 9 is out of range for a 4-layer model"):
        embed_texts(model, tok, ["hi"], preset("embedding", "release", layers=[9]))
    with pytest.raises(ValueError, match="answer set 1 has 2 answers"):
        embed_answer_sets(model, tok, ["a", "b"], [["x", "y", "z"], ["x", "y"]], preset("embedding", "release"))


# ------------------------------------------------------------------ the scorer on the real configs
def test_adg_scorer_from_config_equals_reference_and_resumes(compose, tiny_model_dir):
    from selectlab.config import plain
    from selectlab.stages.scoring import pool_content_key
    from selectlab.pools import load_pool
    from selectlab.context import RunContext
    from selectlab.scorers import get_scorer
    from selectlab.infra.store import ArtifactStore

    cfg = compose("scorer=adg", "selector=binwise", "sampler=hf", "pool=self_instruct_seed", "pool.limit=5",
                  f"backbone.path={tiny_model_dir}", "sampler.k=3", "sampler.max_new_tokens=10",
                  "sampler.dtype=float32", "sampler.batch_size=2", "scorer.batch_size=2",
                  "embedding.prefix_reuse=true")
    store = ArtifactStore(cfg.cache_dir)
    pool = load_pool(plain(cfg.pool), seed=int(cfg.seed))
    ctx = RunContext(cfg=cfg, store=store, pool=pool, pool_key=pool_content_key(pool.records),
                       backbone=lambda: str(tiny_model_dir))
    scores = get_scorer("adg")(ctx)

    from selectlab.lm.sampling import sample_answers

    samples = sample_answers(pool.records, str(tiny_model_dir), cfg.sampler, store, seed=int(cfg.seed))
    model, tok = load_causal_lm(str(tiny_model_dir), "float32", "cpu"), load_tokenizer(str(tiny_model_dir))
    instructions = [r["instruction"] for r in pool.records]
    ref = reference_scores(model, tok, instructions, [s["answers"] for s in samples], lam=float(cfg.scorer.lam))
    assert scores.ids == [r["id"] for r in pool.records]
    np.testing.assert_allclose(scores.score, ref["score"], atol=1e-5)
    np.testing.assert_allclose(scores.columns["D"], ref["D"], atol=1e-5)
    np.testing.assert_allclose(scores.columns["I"], ref["I"], atol=1e-5)
    # bins: the release's embed.py recipe (stripped, special tokens, 512 tokens, uniform fallback)
    ref_instr = np.stack([reference_embedding(model, tok, t.strip(), (-4, -3, -2), 512, add_special_tokens=True,
                                              uniform_fallback=True) for t in instructions])
    assert scores.features.shape == (5, 64) and np.abs(scores.features - ref_instr).max() <= 1e-5
    assert {"zero_spread", "truncated_texts", "answers_empty", "zero_weight_texts", "empty_answers_as_instruction",
            "empty_answers_as_zero"} <= set(scores.counts)
    assert scores.meta["layers"] == [-4, -3, -2] and scores.meta["score"] == "0.6*Sc.cov_trace + 0.4*Sc.SED"

    before = len(store.events)
    again = get_scorer("adg")(ctx)
    assert [e.reused for e in store.events[before:] if e.stage in ("adg_embeddings", "adg_bins")] == [True, True]
    np.testing.assert_array_equal(again.score, scores.score)
