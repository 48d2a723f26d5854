"""InstructMining's natural-language indicators (METHODS.md §2), one small function each.

Pure functions here take texts (and a loaded model) and return one number per example;
the scorer (``selectlab.scorers.instructmining``) caches each indicator as its own artifact.
Units, since the published rule coefficients depend on them:
- lengths: tokens of the backbone tokenizer by default (the paper counts tokens; which
  tokenizer it used is not stated), or whitespace words (``unit: words``);
- perplexity: exp(mean cross-entropy of the response tokens given the prompt), via
  ``selectlab.lm_scoring`` (the loss IFD uses);
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


def last_token_logits(model, tokenizer, prompts: Sequence[str], add_special_tokens: bool = True):
    """Next-token logits after each prompt (right padding, gathered at each prompt's last token)."""
    import torch

    enc = tokenizer(list(prompts), padding=True, add_special_tokens=add_special_tokens, return_tensors="pt")
    enc = {k: v.to(model.device) for k, v in enc.items()}
    last = enc["attention_mask"].sum(1) - 1
    if tokenizer.padding_side == "left":
        last = torch.full_like(last, enc["input_ids"].shape[1] - 1)
    # Vocabulary logits only at the positions read below (logits_to_keep), not batch x length x vocab.
    keep = torch.unique(last)
    with torch.no_grad():
        logits = model(**enc, logits_to_keep=keep).logits.float()
    return logits[torch.arange(len(prompts)), torch.searchsorted(keep, last)]


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
