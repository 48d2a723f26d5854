"""Baselines from the ADG paper (IFD, SuperFiltering, length, perplexity) and diverse_topk.

The losses are checked against a direct per-example transformers forward on the tiny
seeded llama; IFD filtering and the diverse greedy against hand-worked cases; every
scorer runs from the real configs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from selectlab.lm.backbone import BackboneError
from selectlab.selectors.diverse import diverse_topk, greedy_diverse
from selectlab.lm.lm_scoring import answer_losses
from selectlab.lm.models import load_causal_lm, load_tokenizer
from selectlab.pools import Pool
from selectlab.lm.prompts import render_prompt
from selectlab.context import RunContext
from selectlab.scorers import Scores, get_scorer
from selectlab.scorers.ifd import ifd_from_losses
from selectlab.infra.store import ArtifactStore, read_jsonl

PAIRS = [  # (prefix, answer): lengths differ so the batch needs padding
    ("Below is an instruction.\n\n### Instruction:\nName a color.\n\n### Response:", "Blue."),
    ("Question: what is 2 + 2?\nAnswer:", "2 + 2 is 4, because adding two and two gives four."),
    ("", "An answer with no prompt before it at all."),
    ("Translate 'chat' into English.", "Cat"),
]


def _direct_loss(model, tok, prefix: str, answer: str, add_bos: bool) -> float:
    """One example, no padding: transformers' own shifted mean loss with the prefix masked."""
    import torch

    prefix_ids = ([tok.bos_token_id] if add_bos else []) + tok(prefix, add_special_tokens=False).input_ids
    answer_ids = tok(answer, add_special_tokens=False).input_ids
    ids = torch.tensor([prefix_ids + answer_ids])
    labels = ids.clone()
    labels[0, : len(prefix_ids)] = -100
    with torch.no_grad():
        return model(input_ids=ids, labels=labels).loss.item()


@pytest.mark.parametrize("add_bos", [True, False])
def test_batched_answer_losses_match_per_example_forward(tiny_model_dir, add_bos):
    model, tok = load_causal_lm(str(tiny_model_dir), "float32", "cpu"), load_tokenizer(str(tiny_model_dir))
    prefixes, answers = zip(*PAIRS)
    batched = answer_losses(model, tok, prefixes, answers, max_length=512, batch_size=3, add_bos=add_bos)
    direct = [_direct_loss(model, tok, p, a, add_bos) for p, a in PAIRS]
    np.testing.assert_allclose(batched, direct, rtol=0, atol=1e-5)


PINNED_LOSS = 10.782475  # mean answer-token loss of PAIRS[1] on the seeded tiny llama


def test_answer_losses_pinned_and_truncation(tiny_model_dir):
    model, tok = load_causal_lm(str(tiny_model_dir), "float32", "cpu"), load_tokenizer(str(tiny_model_dir))
    prefix, answer = PAIRS[1]
    full = answer_losses(model, tok, [prefix], [answer], max_length=512, batch_size=1)
    np.testing.assert_allclose(full, [PINNED_LOSS], atol=1e-4)
    n_prefix = 1 + len(tok(prefix, add_special_tokens=False).input_ids)
    cut = answer_losses(model, tok, [prefix], [answer], max_length=n_prefix + 3, batch_size=1)
    three = tok.decode(tok(answer, add_special_tokens=False).input_ids[:3])
    assert cut[0] == pytest.approx(_direct_loss(model, tok, prefix, three, True), abs=1e-5)
    assert np.isnan(answer_losses(model, tok, [prefix], [answer], max_length=n_prefix, batch_size=1)[0])



def test_ifd_arithmetic_filters_and_counts():
    records = [{"output": o} for o in ["a", "b", "c", "d", "", "f", "g"]]
    loss_cond = np.array([1.0, 2.0, 3.0, 2.0, np.nan, np.nan, 1.0])
    loss_uncond = np.array([2.0, 2.0, 1.5, 4.0, np.nan, 1.0, 0.0])
    n_tokens = np.array([5, 5, 5, 5, 0, 0, 5])
    ifd, score, counts = ifd_from_losses(records, loss_cond, loss_uncond, n_tokens)
    np.testing.assert_allclose(ifd[:4], [0.5, 1.0, 2.0, 0.5])
    np.testing.assert_array_equal(np.isnan(score), [False, True, True, False, True, True, True])
    np.testing.assert_allclose(score[[0, 3]], [0.5, 0.5])
    assert counts == {"empty_answer": 1, "truncated_away": 1, "nonfinite": 1, "ifd_ge_1": 2}
    # SuperFiltering's released ratio of perplexities ranks by the loss difference instead.
    ifd_ppl, score_ppl, _ = ifd_from_losses(records, loss_cond, loss_uncond, n_tokens, ratio="perplexity")
    np.testing.assert_allclose(ifd_ppl[[0, 3]], [np.exp(-1.0), np.exp(-2.0)])
    assert score_ppl[3] < score_ppl[0]
    with pytest.raises(ValueError, match="scorer.ratio"):
        ifd_from_losses(records, loss_cond, loss_uncond, n_tokens, ratio="log")


# ------------------------------------------------------------------ scorers on the real configs
def _context(compose, *overrides) -> RunContext:
    from selectlab.lm.backbone import resolve_backbone
    from selectlab.config import plain
    from selectlab.stages.scoring import pool_content_key
    from selectlab.pools import load_pool

    cfg = compose("pool=self_instruct_seed", *overrides)  # a small pool file: quick to load
    store = ArtifactStore(cfg.cache_dir)
    pool = load_pool(plain(cfg.pool), seed=int(cfg.seed))
    return RunContext(cfg=cfg, store=store, pool=pool, pool_key=pool_content_key(pool.records),
                        backbone=lambda: resolve_backbone(plain(cfg.backbone), store))


def _alpaca_losses(tiny_model_dir, records, add_bos=True):
    model, tok = load_causal_lm(str(tiny_model_dir), "float32", "cpu"), load_tokenizer(str(tiny_model_dir))
    prompts = [render_prompt(r, "alpaca") for r in records]
    return answer_losses(model, tok, prompts, [r["output"] for r in records], 512, 4, add_bos)


@pytest.mark.slow
def test_ifd_scorer_runs_from_config_and_resumes(compose, tiny_model_dir):
    ctx = _context(compose, "scorer=ifd", f"backbone.path={tiny_model_dir}", "pool.limit=8", "scorer.chunk_size=3",
                   "scorer.tokenize=apart")  # the hand computation tokenizes prompt and answer apart
    scores = get_scorer("ifd")(ctx)
    assert len(scores.ids) == 8 and scores.ids == [r["id"] for r in ctx.pool.records]
    np.testing.assert_allclose(scores.columns["loss_cond"], _alpaca_losses(tiny_model_dir, ctx.pool.records),
                               atol=1e-5)
    np.testing.assert_allclose(scores.columns["ifd"], scores.columns["loss_cond"] / scores.columns["loss_uncond"])
    # seed_task_62's prompt (a long news article) fills max_length=512: no answer token is left.
    truncated = [r["id"] == "seed_task_62" for r in ctx.pool.records]
    assert scores.counts["truncated_away"] == 1 and np.isnan(scores.columns["loss_cond"][truncated]).all()
    ifd = scores.columns["ifd"]
    selectable = np.isfinite(ifd) & (ifd < 1)
    assert np.isnan(scores.score[~selectable]).all() and np.array_equal(scores.score[selectable], ifd[selectable])
    assert scores.counts["ifd_ge_1"] == int((ifd >= 1).sum())
    assert sum(scores.counts.values()) + int(selectable.sum()) == 8
    assert scores.meta["template"] == "alpaca" and scores.meta["template_hash"]
    (event,) = [e for e in ctx.store.events if e.stage == "answer_losses"]
    assert (event.reused, event.batches_computed) == (False, 3)
    again = get_scorer("ifd")(ctx)
    assert ctx.store.events[-1].reused
    assert np.array_equal(again.columns["ifd"], scores.columns["ifd"], equal_nan=True)


@pytest.mark.slow
def test_superfiltering_uses_its_own_model_and_release_defaults(compose, tiny_model_dir):
    ctx = _context(compose, "scorer=superfiltering", f"scorer.model.path={tiny_model_dir}", "pool.limit=6")
    scores = get_scorer("superfiltering")(ctx)
    lc, lu = scores.columns["loss_cond"], scores.columns["loss_uncond"]
    np.testing.assert_allclose(scores.columns["ifd"], np.exp(lc - lu))
    assert scores.meta["model_path"] == str(tiny_model_dir) and scores.meta["template"] == "plain"
    assert scores.meta["ratio"] == "perplexity" and not scores.meta["add_bos"]
    assert np.isnan(scores.score[lc >= lu]).all()


def test_superfiltering_gpt2_offline_names_the_config_key(compose, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: gpt2 cannot be there
    ctx = _context(compose, "scorer=superfiltering_gpt2", "pool.limit=2")
    assert ctx.cfg.scorer.model.hub_id == "gpt2"
    with pytest.raises(BackboneError, match=r"scorer.model.hub_id=gpt2 .*set scorer.model.path="):
        get_scorer("superfiltering")(ctx)


@pytest.mark.parametrize("order, sign", [("desc", 1.0), ("asc", -1.0)])
def test_length_scorer_counts_backbone_tokens(compose, tiny_model_dir, order, sign):
    ctx = _context(compose, "scorer=length", f"backbone.path={tiny_model_dir}", "pool.limit=8",
                   f"scorer.order={order}")
    scores = get_scorer("length")(ctx)
    tok = load_tokenizer(str(tiny_model_dir))
    expected = [len(tok(r["output"], add_special_tokens=False).input_ids) for r in ctx.pool.records]
    np.testing.assert_array_equal(scores.columns["n_answer_tokens"], expected)
    np.testing.assert_array_equal(scores.score, sign * np.array(expected, dtype=float))


def test_perplexity_scorer(compose, tiny_model_dir):
    ctx = _context(compose, "scorer=perplexity", f"backbone.path={tiny_model_dir}", "pool.limit=6")
    scores = get_scorer("perplexity")(ctx)
    expected = np.exp(_alpaca_losses(tiny_model_dir, ctx.pool.records))
    np.testing.assert_allclose(scores.columns["perplexity"], expected, rtol=1e-5)
    np.testing.assert_allclose(scores.score, -expected, rtol=1e-5)  # order: asc = lowest first
    with pytest.raises(ValueError, match="scorer.order"):
        get_scorer("perplexity")(_context(compose, "scorer=perplexity", f"backbone.path={tiny_model_dir}",
                                          "pool.limit=2", "scorer.order=up"))


# ------------------------------------------------------------------ diverse_topk
# Hand-worked: visiting by score, 0 is taken; 1 has cos 0.99 with 0 (> 0.9): skipped; 2 is
# orthogonal: taken; 3 has cos 0.6 with 0 and 0.8 with 2: taken; 4 has a NaN score: never;
# 5 has cos 0.96 with 3: skipped; 6 has cos 0.8 with 2 and 0.28 with 3: taken.
VECS = np.array([[1, 0], [0.99, 0.141], [0, 1], [0.6, 0.8], [-1, 0], [0.8, 0.6], [-0.6, 0.8]], dtype=np.float32)
SCORE = np.array([0.9, 0.8, 0.7, 0.6, np.nan, 0.5, 0.4])


@pytest.mark.parametrize("block_size", [1, 2, 1024])
def test_greedy_diverse_hand_worked(block_size):
    order = [0, 1, 2, 3, 5, 6]
    assert greedy_diverse(VECS, order, budget=4, threshold=0.9, block_size=block_size) == ([0, 2, 3, 6], 2)
    assert greedy_diverse(VECS, order, budget=3, threshold=0.9, block_size=block_size) == ([0, 2, 3], 1)
    assert greedy_diverse(VECS, order, budget=6, threshold=0.5, block_size=block_size) == ([0, 2], 4)


def test_diverse_topk_on_scorer_features_is_scale_free():
    scores = Scores(ids=[str(i) for i in range(7)], score=SCORE, features=3.0 * VECS)
    cfg = {"threshold": 0.9, "embeddings": "features", "block_size": 2}
    assert diverse_topk(scores, 10, cfg).order == [0, 2, 3, 6]
    with pytest.raises(ValueError, match="selector.embeddings=features"):
        diverse_topk(Scores(ids=["0"], score=SCORE[:1]), 1, cfg)


def test_diverse_topk_sbert_skips_a_paraphrase(compose, tmp_path):
    cfg = compose("selector=diverse_topk").selector
    records = [
        {"id": "a", "instruction": "Give three tips for staying healthy.", "input": "", "output": "x"},
        {"id": "b", "instruction": "Give three tips for staying healthy!", "input": "", "output": "x"},
        {"id": "c", "instruction": "Write a short poem about the sea.", "input": "", "output": "x"},
        {"id": "d", "instruction": "Sort these numbers.", "input": "5, 3, 9", "output": "x"},
    ]
    ctx = RunContext(cfg=None, store=ArtifactStore(tmp_path), pool=Pool("t", records), pool_key="t",
                       backbone=lambda: "")
    scores = Scores(ids=["a", "b", "c", "d"], score=np.array([0.9, 0.8, 0.7, 0.6]))
    assert diverse_topk(scores, 4, dict(cfg), ctx).order == [0, 2, 3]
    emb = np.load(next((tmp_path / "sbert_embeddings").glob("*/array.npy")))
    assert emb.shape == (4, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert emb[0] @ emb[1] > 0.9 > emb[0] @ emb[2]


@pytest.mark.slow
def test_ifd_with_diverse_topk_end_to_end(compose, tiny_model_dir, monkeypatch):
    from selectlab import pipeline
    from selectlab.selectors import SELECTORS

    monkeypatch.setitem(SELECTORS, "diverse_topk", diverse_topk)  # harmless once selectors.py registers it
    cfg = compose("pool=self_instruct_seed", "pool.limit=8", "scorer=ifd", f"backbone.path={tiny_model_dir}",
                  "selector=diverse_topk", "selection.budget=4", "logger=none")
    manifest = pipeline.run(cfg)
    subset = read_jsonl(Path(manifest["subset_path"]))
    ifd = [r["ifd"] for r in subset]
    assert 1 <= len(subset) <= 4 and all(x < 1 for x in ifd) and ifd == sorted(ifd, reverse=True)
    assert manifest["counts"]["truncated_away"] == 1 and "ifd_ge_1" in manifest["counts"]


def test_joined_tokenization_is_the_releases_answer_span(smol_tokenizer_dir):
    """scorer.tokenize=joined (IFD's and SuperFiltering's default): the answer's tokens are those of
    the joined prompt + answer after as many tokens as the prompt alone has (Cherry LLM's
    get_perplexity_and_embedding_part_text); on real Alpaca records with the Alpaca template a few
    per cent differ from tokenizing the answer apart (a token straddles the boundary: the release then
    scores from the joined text's split, not the prompt's own last token)."""
    import json

    from selectlab.lm.lm_scoring import encode_pair
    from selectlab.infra.paths import data_dir

    tok = load_tokenizer(str(smol_tokenizer_dir))
    rows = []
    for part in sorted((data_dir() / "pools/alpaca_52k").glob("*.json"))[:1]:
        rows += json.loads(part.read_text())
    differ = 0
    for r in rows[:3000]:
        prompt = render_prompt(r, "alpaca", tok)
        whole = tok.encode(prompt + r["output"], add_special_tokens=False)[:512]
        start = len(tok.encode(prompt, add_special_tokens=False))
        joined = encode_pair(tok, prompt, r["output"], 512, add_bos=False, tokenize="joined")
        apart = encode_pair(tok, prompt, r["output"], 512, add_bos=False, tokenize="apart")
        assert joined == (whole[:start], whole[start:]) and len(joined[0]) == len(apart[0])
        differ += joined[1] != apart[1]
    assert 0.005 < differ / 3000 < 0.1  # 2.9% when this test was written
