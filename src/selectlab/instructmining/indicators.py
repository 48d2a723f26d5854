"""InstructMining's natural-language indicators (docs/methods.md §2), one small function each.

Pure functions here take texts (and a loaded model) and return one number per example;
the scorer (``selectlab.scorers.instructmining``) caches each indicator as its own artifact.
Units, since the published rule coefficients depend on them:
- lengths: tokens of the backbone tokenizer by default (the paper counts tokens; which
  tokenizer it used is not stated), or whitespace words (``unit: words``);
- perplexity: exp(mean cross-entropy of the response tokens given the prompt), via
  ``selectlab.lm.lm_scoring`` (the loss IFD uses);
- MTLD: McCarthy & Jarvis (2010), forward/backward mean, threshold 0.72;
- KNN-i: Euclidean distance to the i-th nearest other example in a unit-normalised
  SentenceBERT space (so in [0, 2]); ``metric: cosine`` gives 1 - cosine similarity;
- reward: the reward model's raw logit, or (offline substitute) the backbone judge's
  expected 1-6 rating;
- UniEval: P(Yes) / (P(Yes) + P(No)) at the first decoder step, as in UniEval's scorer.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from ..errors import SelectlabError

WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def words(text: str) -> list[str]:
    """Lower-cased word tokens; punctuation is not a word (as in the ``lexicalrichness`` package)."""
    return WORD.findall(text.lower())


def _mtld_one_way(tokens: Sequence[str], threshold: float) -> float:
    factors, types, count, ttr = 0.0, set(), 0, 1.0
    for token in tokens:
        count += 1
        types.add(token)
        ttr = len(types) / count
        if ttr <= threshold:
            factors, types, count, ttr = factors + 1, set(), 0, 1.0
    if count:  # the unfinished last segment counts as the fraction of a factor it got through
        factors += (1 - ttr) / (1 - threshold)
    if factors == 0:
        # Every word differs, so no factor ever starts: MTLD is undefined. Like lexicalrichness,
        # count the whole text as one factor (MTLD = number of words); the scorer counts these.
        factors = 1.0
    return len(tokens) / factors


def mtld(text: str, threshold: float = 0.72) -> float:
    """Measure of Textual Lexical Diversity: mean of the forward and backward passes; NaN for no words."""
    tokens = words(text)
    if not tokens:
        return float("nan")
    return (_mtld_one_way(tokens, threshold) + _mtld_one_way(tokens[::-1], threshold)) / 2


def mtld_undefined(text: str) -> bool:
    """True when every word is distinct, the case where MTLD falls back to the word count."""
    tokens = words(text)
    return bool(tokens) and len(set(tokens)) == len(tokens)


def knn_distances(embeddings: np.ndarray, k: int = 6, block_rows: int = 1024, metric: str = "euclidean") -> np.ndarray:
    """Distance from each row to its k-th nearest OTHER row, exactly, one block of rows at a time.

    Memory is ``block_rows x N`` floats, never ``N x N``.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    n = len(x)
    if n <= k:
        raise SelectlabError(f"KNN-{k} needs more than {k} examples; the pool has {n}")
    if metric not in ("euclidean", "cosine"):
        raise SelectlabError(f"knn metric={metric!r}; choose euclidean or cosine")
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sq = np.einsum("ij,ij->i", x, x)
    out = np.empty(n)
    for start in range(0, n, block_rows):
        rows = slice(start, min(start + block_rows, n))
        gram = x[rows] @ x.T
        if metric == "cosine":
            dist = 1.0 - gram
        else:
            dist = np.sqrt(np.maximum(sq[rows, None] + sq[None, :] - 2 * gram, 0.0))
        dist[np.arange(rows.stop - rows.start), np.arange(rows.start, rows.stop)] = np.inf  # not its own neighbour
        out[rows] = np.partition(dist, k - 1, axis=1)[:, k - 1]
    return out


def sentence_embeddings(model, tokenizer, texts: Sequence[str], max_length: int = 256) -> np.ndarray:
    """SentenceBERT embeddings: attention-masked mean of the last hidden state, L2-normalised."""
    import torch

    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    enc = {k: v.to(model.device) for k, v in enc.items()}
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()


def shared_prefix_length(ids: Sequence[Sequence[int]]) -> int:
    """Tokens every sequence in ``ids`` starts with, leaving each at least one token of its own."""
    first, limit = ids[0], min(len(x) for x in ids) - 1
    n = 0
    while n < limit and all(x[n] == first[n] for x in ids):
        n += 1
    return n


def prompt_ratings(model, tokenizer, prompts: Sequence[str], digit_ids: Sequence[int], batch_size: int,
                   add_special_tokens: bool = True, share_prefix: bool = True) -> np.ndarray:
    """:func:`expected_rating` after each prompt, in order, ``batch_size`` prompts per forward pass.

    The token prefix every prompt shares (the judge template's instructions, a chat template's
    system turn: 46 of 77 tokens of DEITA's complexity prompt through SmolLM2's chat template) runs
    once; each batch runs only the rest of its prompts over a copy of that prefix's key/value cache.
    Causal attention makes the prefix's states the same in every prompt, so the logits are those
    of each whole prompt. Prompts are tokenized whole first, so the shared part is a prefix of the
    very token ids the whole prompt has. Batches group similar lengths (right padding); only the
    last position of each prompt gets vocabulary logits. ``share_prefix=False`` runs every prompt
    whole (bench/bench_judge.py compares the two)."""
    import torch
    from transformers import DynamicCache

    if not prompts:
        return np.empty(0, np.float64)
    device = model.device
    ids = [tokenizer(p, add_special_tokens=add_special_tokens).input_ids for p in prompts]
    shared = shared_prefix_length(ids) if share_prefix else 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = np.empty(len(ids), np.float64)
    with torch.no_grad():
        prefix = []
        if shared:
            cache = model(input_ids=torch.tensor([ids[0][:shared]], device=device), use_cache=True).past_key_values
            prefix = [(layer.keys, layer.values) for layer in cache.layers]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            rest = [ids[i][shared:] for i in rows]
            width = max(map(len, rest))
            input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), shared + width), dtype=torch.long)
            mask[:, :shared] = 1
            for r, seq in enumerate(rest):
                input_ids[r, :len(seq)] = torch.tensor(seq)
                mask[r, shared:shared + len(seq)] = 1
            last = torch.tensor([len(seq) - 1 for seq in rest])
            keep = torch.unique(last)
            past = DynamicCache(ddp_cache_data=[(k.expand(len(rows), -1, -1, -1), v.expand(len(rows), -1, -1, -1))
                                                for k, v in prefix], config=model.config) if shared else None
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), past_key_values=past,
                           logits_to_keep=keep.to(device)).logits
            out[rows] = expected_rating(logits[torch.arange(len(rows)), torch.searchsorted(keep, last)], digit_ids)
    return out


def digit_token_ids(tokenizer, scale: int = 6) -> list[int]:
    ids = []
    for d in range(1, scale + 1):
        tok = tokenizer(str(d), add_special_tokens=False)["input_ids"]
        if len(tok) != 1:
            # SentencePiece tokenizers (LLaMA, Mistral) write "1" as a word-start piece + the digit; the
            # bare digit piece is what the judge emits after "Quality: " (DEITA's released ids, e.g. 29896).
            bare = tokenizer.convert_tokens_to_ids(str(d))
            if bare is None or bare == tokenizer.unk_token_id:
                raise SelectlabError(f"the judge needs '{d}' to be one token in this tokenizer; it is {tok}")
            tok = [bare]
        ids.append(tok[0])
    return ids


def expected_rating(next_logits, digit_ids: Sequence[int]) -> np.ndarray:
    """DEITA-style rating: softmax over the logits of the digits 1..K only, then the expectation."""
    import torch

    p = torch.softmax(next_logits[:, list(digit_ids)].float(), dim=-1)
    scale = torch.arange(1, len(digit_ids) + 1, dtype=p.dtype, device=p.device)
    return (p * scale).sum(-1).cpu().numpy().astype(np.float64)


def judge_prompt(record: dict, question_template: str, tokenizer, use_chat_template: bool) -> str:
    question = record["instruction"] + (f"\n{record['input']}" if record.get("input") else "")
    text = question_template.format(question=question, response=record["output"])
    if not use_chat_template:
        return text
    if not getattr(tokenizer, "chat_template", None):
        raise SelectlabError("scorer.reward.use_chat_template=true but the backbone tokenizer has no chat template")
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


def reward_model_scores(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], max_length: int,
                        input_template: str | None = None) -> np.ndarray:
    """Scalar reward per (prompt, response): logit 0 of a sequence-classification head.

    ``input_template=None`` feeds the pair as two segments (OpenAssistant deberta usage);
    a template such as ``<|prompter|>{prompt}<|endoftext|><|assistant|>{response}`` formats one text.
    """
    import torch

    if input_template is None:
        enc = tokenizer(list(prompts), list(responses), padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
    else:
        texts = [input_template.format(prompt=p, response=r) for p, r in zip(prompts, responses)]
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    enc = {k: v.to(model.device) for k, v in enc.items()}
    with torch.no_grad():
        return model(**enc).logits[:, 0].float().cpu().numpy().astype(np.float64)


UNIEVAL_QUESTIONS = {  # UniEval's dialogue-task inputs (utils.add_question), src = the instruction
    "naturalness": "question: Is this a natural response in the dialogue? </s> response: {output}",
    "coherence": "question: Is this a coherent response given the dialogue history? </s> response: {output} "
                 "</s> dialogue history: {history}",
    "understandability": "question: Is this an understandable response in the dialogue? </s> response: {output}",
}


def unieval_scores(model, tokenizer, dimension: str, histories: Sequence[str], outputs: Sequence[str],
                   max_length: int = 1024) -> np.ndarray:
    """UniEval Boolean-QA score P(Yes)/(P(Yes)+P(No)) of the first decoder token."""
    import torch

    if dimension not in UNIEVAL_QUESTIONS:
        raise SelectlabError(f"UniEval dimension={dimension!r}; choose one of {sorted(UNIEVAL_QUESTIONS)}")
    texts = [UNIEVAL_QUESTIONS[dimension].format(output=o, history=h) for h, o in zip(histories, outputs)]
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    enc = {k: v.to(model.device) for k, v in enc.items()}
    start = torch.full((len(texts), 1), model.config.decoder_start_token_id, device=model.device)
    with torch.no_grad():
        probs = torch.softmax(model(**enc, decoder_input_ids=start).logits[:, 0].float(), dim=-1)
    yes, no = tokenizer("Yes").input_ids[0], tokenizer("No").input_ids[0]
    return (probs[:, yes] / (probs[:, yes] + probs[:, no])).cpu().numpy().astype(np.float64)
