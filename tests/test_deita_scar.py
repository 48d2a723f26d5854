"""DEITA and SCAR against their definitions.

DEITA: the complexity x quality product and the score-first selection that skips an example
more than 0.9 cosine-similar to one already taken (hand-worked case); the judge ratings
against a direct forward of the tiny llama; the release's hub scorers fail offline naming
the key; a whole run with the backbone-judge substitute and last-token embeddings.
SCAR: the release's pre-ranking filters (hand-worked); the released StyleRanker class on a
tiny randomly initialised ranker built here, its output against the definition written out
with the ranker's own weights; offline error; a whole run.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from selectlab.selectors.diverse import diverse_topk
from selectlab.texts import example_text
from selectlab.scorers import Scores, get_scorer
from selectlab.scorers.deita import DeitaConfigError, combined_score
from selectlab.scorers.scar import ScarError, english_percent, ranker_scores, release_filters
from selectlab.infra.store import read_jsonl

from test_baselines import _context


# ------------------------------------------------------------------ DEITA
# Hand-worked: complexity x quality = [6, 7.5, 5, 7, 8.25, NaN], so the score order is 4, 1, 3, 0, 2
# (5 is unrated: never). 4 is taken; 1 is orthogonal to 4: taken; 3 has cosine 0.95 with 4
# (> 0.9): skipped; 0 has cosine 0.85 with 1 and 0 with 4: taken; 2 is e_z: cosine 0.527 with 0:
# taken. Plain top-3 would be 4, 1, 3.
COMPLEXITY = np.array([2.0, 3.0, 5.0, 4.0, 1.5, 2.0])
QUALITY = np.array([3.0, 2.5, 1.0, 1.75, 5.5, np.nan])
EMBEDDINGS = np.array([[0, 0.85, np.sqrt(1 - 0.85**2)], [0, 1, 0], [0, 0, 1], [0.95, np.sqrt(1 - 0.95**2), 0],
                       [1, 0, 0], [1, 0, 0]], dtype=np.float32)


def test_deita_product_and_threshold_skip_hand_worked(compose):
    from selectlab.config import plain

    score = combined_score(COMPLEXITY, QUALITY)
    np.testing.assert_array_equal(score[:5], [6.0, 7.5, 5.0, 7.0, 8.25])
    assert np.isnan(score[5])
    selector = plain(compose("scorer=deita").selector)  # the scorer picks conf/selector/deita.yaml
    assert (selector["name"], selector["threshold"], selector["embeddings"]) == ("diverse_topk", 0.9, "last_token")
    offline = plain(compose("scorer=deita_judge").selector)  # -> conf/selector/deita_minilm.yaml
    assert (offline["name"], offline["threshold"], offline["embeddings"]) == ("diverse_topk", 0.9, "sbert")
    scores = Scores(ids=[str(i) for i in range(6)], score=score, features=EMBEDDINGS)
    cfg = {**selector, "embeddings": "features"}
    assert diverse_topk(scores, 3, cfg).order == [4, 1, 0]
    picked = diverse_topk(scores, 10, cfg)
    assert picked.order == [4, 1, 0, 2] and picked.meta == {"skipped_similar": 1}
    assert diverse_topk(scores, 3, {**cfg, "threshold": 0.96}).order == [4, 1, 3]  # 0.95 no longer skips


def test_conversation_text_is_vicuna_v1_1():
    record = {"instruction": "Sort these.", "input": "3, 1", "output": "1, 3"}
    assert example_text(record, "conversation") == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Sort these.\n3, 1 ASSISTANT: 1, 3")


def _expected_rating(model, tok, prompt: str) -> float:
    """One prompt, no padding: softmax over the logits of "1".."6" at the last position, expectation."""
    import torch

    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1].double()
    digits = [tok(str(d), add_special_tokens=False).input_ids[0] for d in range(1, 7)]
    p = torch.softmax(logits[digits], dim=0)
    return float((p * torch.arange(1, 7, dtype=torch.float64)).sum())


def test_deita_judge_ratings_match_a_direct_forward(compose, tiny_model_dir):
    from selectlab.lm.models import load_causal_lm, load_tokenizer

    ctx = _context(compose, "scorer=deita_judge", f"backbone.path={tiny_model_dir}", "pool.limit=3")
    scores = get_scorer("deita")(ctx)
    model, tok = load_causal_lm(str(tiny_model_dir), "float32", "cpu"), load_tokenizer(str(tiny_model_dir))
    chat = lambda text: tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,  # noqa: E731
                                                add_generation_prompt=True)
    for n, r in enumerate(ctx.pool.records):
        question = r["instruction"] + (f"\n{r['input']}" if r["input"] else "")
        complexity = _expected_rating(model, tok, chat(
            "You are a helpful assistant. Please identify the complexity score of the following user query. "
            f"\n##Query: {question}  \n##Complexity: "))
        quality = _expected_rating(model, tok, chat(
            "You are a helpful assistant. Please identify the quality score of the Response corresponding to the "
            f"Question. \n #Question#:\n{question}\n#Response#:\n{r['output']} \n##Quality: "))
        assert scores.columns["complexity"][n] == pytest.approx(complexity, rel=1e-5)
        assert scores.columns["quality"][n] == pytest.approx(quality, rel=1e-5)
        assert scores.score[n] == pytest.approx(complexity * quality, rel=1e-5)
    assert scores.meta["substitute"] == ["complexity", "quality"]
    assert "SUBSTITUTE" in scores.meta["judges"]["quality"]


def test_deita_release_scorers_offline_error_names_the_key(compose, tiny_model_dir):
    ctx = _context(compose, "scorer=deita", f"backbone.path={tiny_model_dir}", "pool.limit=2")
    with pytest.raises(DeitaConfigError, match=r"scorer\.complexity_model\.hub_id=hkust-nlp/deita-complexity-scorer"):
        get_scorer("deita")(ctx)
    ctx = _context(compose, "scorer=deita", f"scorer.complexity_model.path={tiny_model_dir}", "pool.limit=2")
    with pytest.raises(DeitaConfigError, match=r"scorer\.quality_model\.hub_id=hkust-nlp/deita-quality-scorer"):
        get_scorer("deita")(ctx)


def _cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_deita_judge_end_to_end_with_last_token_embeddings(compose, tiny_model_dir, tmp_path):
    from selectlab import pipeline

    cfg = compose("pool=self_instruct_seed", "pool.limit=8", "scorer=deita_judge", f"backbone.path={tiny_model_dir}",
                  "selector=deita_backbone", "selection.budget=4", "logger=none")
    manifest = pipeline.run(cfg)
    subset = read_jsonl(Path(manifest["subset_path"]))
    assert manifest["selector"]["threshold"] == 0.9 and manifest["selector"]["embeddings"] == "last_token"
    for r in subset:
        assert r["score"] == pytest.approx(r["complexity"] * r["quality"], rel=1e-9)
        assert 1 <= r["complexity"] <= 6 and 1 <= r["quality"] <= 6
    assert [r["score"] for r in subset] == sorted((r["score"] for r in subset), reverse=True)
    # The definition, checked on the stored embeddings: taken examples are pairwise <= 0.9 similar;
    # every example scored above the last one taken but not taken is > 0.9 similar to one taken before it.
    emb_dir = next((tmp_path / "cache" / "last_token_embeddings").glob("*/array.npy"))
    stored = np.load(emb_dir)
    assert stored.shape == (8, 64)
    assert manifest["counts"]["deita_complexity_nan"] == manifest["counts"]["deita_quality_nan"] == 0
    all_rows = {r["id"]: r for r in read_jsonl(next((tmp_path / "cache" / "scores").glob("*/scores.jsonl")))}
    ids = list(all_rows)
    emb = _embeddings_by_id(stored, cfg, ids)
    taken = [r["id"] for r in subset]
    for i, a in enumerate(taken):
        assert all(_cosine(emb[a], emb[b]) <= 0.9 for b in taken[:i])
    last = subset[-1]["score"]
    for rid, row in all_rows.items():
        if rid not in taken and row["score"] > last:
            before = [t for t in taken if all_rows[t]["score"] >= row["score"]]
            assert max(_cosine(emb[rid], emb[t]) for t in before) > 0.9


def _embeddings_by_id(stored: np.ndarray, cfg, ids: list[str]) -> dict[str, np.ndarray]:
    """The stored rows are in the order of the texts, shortest first (as the embedder runs them)."""
    from selectlab.config import plain
    from selectlab.pools import load_pool

    records = {r["id"]: r for r in load_pool(plain(cfg.pool), seed=int(cfg.seed)).records}
    texts = [example_text(records[i], "conversation") for i in ids]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    return {ids[j]: stored[k] for k, j in enumerate(order)}


# ------------------------------------------------------------------ SCAR
def test_scar_release_filters_hand_worked():
    assert english_percent("ab cd") == 80.0 and english_percent("") == 0.0
    questions = ["Name a colour.", "Name a colour.", "Name a colour. ", "12 + 30 = ?", "Say hi.", "Say hi."]
    answers = ["Blue.", "Blue.", "Red.", "The sum is 42.", "", "Hello there"]
    keep, counts = release_filters(questions, answers, dedupe=True, english_min_percent=70)
    # 1 duplicates 0; 2 differs in the answer (stripping only); 3's question is 2 letters of 11 characters;
    # 4's empty answer has no letters; "Blue." is 4 of 5 = 80% letters, "Hello there" 10 of 11.
    assert keep.tolist() == [True, False, True, False, False, True]
    assert counts == {"duplicate_pair": 1, "non_english": 2}
    keep, counts = release_filters(questions, answers, dedupe=False, english_min_percent=None)
    assert keep.all() and counts == {"duplicate_pair": 0, "non_english": 0}


WORDS = ("the a of to and is in it write give name list three tips poem sea sort these numbers colour blue "
         "red hello there say hi sum what how why . , ! ? 1 2 3 4 5").split()


@pytest.fixture(scope="module")
def tiny_ranker_dir(tmp_path_factory) -> Path:
    """A StyleRanker (the release's class) over a 2-layer, 16-wide BERT, all weights random and seeded."""
    import torch
    from style_ranker.ranker.config import StyleRankerConfig
    from style_ranker.ranker.model import StyleRanker
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny_ranker")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=32, max_position_embeddings=512))
    encoder.save_pretrained(root / "encoder")
    torch.manual_seed(1)
    ranker = StyleRanker(StyleRankerConfig(encoder_name=str(root / "encoder"), hidden_dim=16, linear_dim=8))
    out = root / "ranker"
    ranker.save_pretrained(str(out))
    tokenizer.save_pretrained(out)
    return out


def _ranker_by_definition(state: dict, encoder, tok, question: str, answer: str) -> float:
    """score = out(relu-MLP)[rel(relu-MLP)[pool(q); pool(a)]; max over answer tokens of h(a)], written out."""
    import torch

    def encode(text):
        enc = tok(text, return_tensors="pt", truncation=True, max_length=512)
        with torch.no_grad():
            out = encoder(**enc)
        return out.pooler_output[0].double(), out.last_hidden_state[0].double()

    def mlp(prefix, x):
        w0, b0 = state[f"{prefix}.0.weight"].double(), state[f"{prefix}.0.bias"].double()
        w2, b2 = state[f"{prefix}.2.weight"].double(), state[f"{prefix}.2.bias"].double()
        return w2 @ torch.relu(w0 @ x + b0) + b2

    q_pool, _ = encode(question)
    a_pool, a_tokens = encode(answer)
    creativity = mlp("relation_network", torch.cat([q_pool, a_pool]))
    presentation = a_tokens.max(dim=0).values  # one unpadded text: every token counts
    return float(mlp("output_layer", torch.cat([creativity, presentation]))[0])


def test_scar_ranker_output_matches_its_definition(tiny_ranker_dir):
    import torch
    from transformers import AutoTokenizer, BertModel

    from selectlab.scorers.scar import load_ranker

    model, tok = load_ranker(str(tiny_ranker_dir), "cpu")
    state = torch.load(tiny_ranker_dir / "pytorch_model.bin", weights_only=True)
    encoder = BertModel.from_pretrained(tiny_ranker_dir.parent / "encoder").eval()
    encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")})
    questions = ["Name a colour.", "Write a poem of the sea, three tips and a list.", "Say hi."]
    answers = ["Blue.", "The sea is blue and the sea is red.", "Hello there, hello!"]
    expected = [_ranker_by_definition(state, encoder, AutoTokenizer.from_pretrained(tiny_ranker_dir), q, a)
                for q, a in zip(questions, answers)]
    batched = ranker_scores(model, tok, questions, answers, max_length=512, batch_size=3)  # padded batch
    one_by_one = ranker_scores(model, tok, questions, answers, max_length=512, batch_size=1)
    np.testing.assert_allclose(batched, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one_by_one, expected, rtol=1e-5, atol=1e-6)
    assert len(set(np.round(expected, 6))) == 3  # a random ranker still tells the pairs apart


def test_scar_offline_error_names_the_key(compose):
    ctx = _context(compose, "scorer=scar", "pool.limit=2")
    with pytest.raises(ScarError, match=r"scorer\.model\.hub_id=lizhuang144/scar-gte-base"):
        get_scorer("scar")(ctx)


def test_scar_end_to_end_on_the_tiny_ranker(compose, tiny_ranker_dir):
    from selectlab import pipeline

    cfg = compose("pool=self_instruct_seed", "pool.limit=8", "scorer=scar", f"scorer.model.path={tiny_ranker_dir}",
                  "selection.budget=4", "logger=none")
    manifest = pipeline.run(cfg)
    subset = read_jsonl(Path(manifest["subset_path"]))
    assert manifest["selector"]["name"] == "topk" and len(subset) == 4
    assert [r["score"] for r in subset] == sorted((r["score"] for r in subset), reverse=True)
    assert all(r["score"] == r["ranker"] for r in subset)
    assert {"duplicate_pair", "non_english", "ranker_nan"} <= set(manifest["counts"])


def test_digit_ids_of_a_sentencepiece_style_tokenizer_are_the_bare_digits():
    """LLaMA/Mistral tokenizers write "1" as ["▁", "1"]; the judge reads the bare "1" (DEITA's ids)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from selectlab.instructmining.indicators import digit_token_ids

    vocab = {"<unk>": 0, "▁": 1, **{str(d): 1 + d for d in range(1, 7)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    assert fast("1", add_special_tokens=False).input_ids == [1, 2]
    assert digit_token_ids(fast, 6) == [2, 3, 4, 5, 6, 7]


def test_deita_selector_embeds_with_the_releases_mistral_or_fails_offline_naming_the_key(compose):
    """selector=deita's embedder is the release's Mistral-7B-v0.1 (bf16); offline and not cached it is
    one error naming selector.model before any work; the backbone stand-in has its own option name."""
    from selectlab.errors import SelectlabError
    from selectlab.validate import validate

    cfg = compose("scorer=deita", "logger=none")
    assert cfg.selector.model.hub_id == "mistralai/Mistral-7B-v0.1" and cfg.selector.dtype == "bfloat16"
    with pytest.raises(SelectlabError, match=r"selector.model.hub_id=mistralai/Mistral-7B-v0.1 is not in the local"):
        validate(cfg)
    stand_in = compose("scorer=deita_judge", "selector=deita_backbone", "logger=none")
    assert stand_in.selector.model is None and stand_in.selector.embeddings == "last_token"
