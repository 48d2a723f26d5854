"""ADG's answer embedding (docs/methods.md §1 "Embedding of one answer").

An answer's vector is the token-weighted mean of a few of the backbone's hidden-state
layers over the text ``instruction + " " + answer``, L2-normalised. The K answer vectors
of one instruction are scored by :mod:`selectlab.lm.divergence`.

Speed, with results equal to one forward per text (tests/test_adg.py pins the equality):
- texts are batched by length under a token budget (right padding + attention mask);
- the decoder runs only as deep as the deepest chosen layer, and the LM head never runs;
- token weights come from a table built once per vocabulary (one decode per id);
- optional ``prefix_reuse``: the K texts of one instruction share its tokens, whose hidden
  states under causal attention do not depend on what follows. The instruction is run once,
  its keys/values are reused for the K answer suffixes, and its pooled sum (which is also the
  instruction embedding the bins need) is added to each answer's. A text is reused only if
  its joint tokenization really starts with the instruction's own tokens; otherwise it is
  computed in full.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import SelectlabError
from ..schema.run import EmbeddingConfig

PUNCTUATION = set(",.;:!?()[]{}\"'`~-_/\\")
NUMERIC_MARKS = set("%℃°")
NUMERIC_WEIGHT = 1.3


def piece_weight(piece: str) -> float:
    """Weight of one token from its decoded text: 0 punctuation/blank, 1.3 numeric, else 1."""
    s = piece.strip()
    if not s or all(c in PUNCTUATION or c.isspace() for c in s):
        return 0.0
    if any(c.isdigit() or c in NUMERIC_MARKS for c in s):
        return NUMERIC_WEIGHT
    return 1.0


def token_weight_table(tokenizer) -> np.ndarray:
    """One weight per token id, each id decoded alone as the release does (``decode([id])``)."""
    pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return np.array([piece_weight(p) for p in pieces], dtype=np.float32)


def embedded_text(instruction: str, answer: str, mode: str) -> str:
    return instruction + " " + answer if mode == "instruction+answer" else answer


# ---------------------------------------------------------------- forward passes

class _EnoughLayers(Exception):
    """Raised by a hook once the deepest chosen layer has run: deeper layers are not needed."""


def _decoder(model):
    base = model.get_decoder() if hasattr(model, "get_decoder") else model
    if not (hasattr(base, "layers") and hasattr(base, "norm") and hasattr(base, "embed_tokens")):
        raise TypeError(f"{type(model).__name__}: ADG embedding needs a decoder with embed_tokens, layers and norm")
    return base


def _layer_modules(model, layers: Sequence[int]) -> dict[int, Any]:
    """For each chosen ``hidden_states`` index (made non-negative), the module whose output it is.

    HF's ``hidden_states`` = (embeddings, output of layer 0, ..., of layer n-2, final-normed output).
    """
    base = _decoder(model)
    n = len(base.layers)
    modules = {}
    for i in layers:
        if not -(n + 1) <= i <= n:
            raise SelectlabError(f"embedding.layers: {i} is out of range for a {n}-layer model (hidden_states has {n + 1})")
        j = i % (n + 1)
        modules[j] = base.embed_tokens if j == 0 else base.norm if j == n else base.layers[j - 1]
    return modules


def _mean_layers(model, layers, input_ids, attention_mask, position_ids=None, cache=None):
    """Mean of the chosen hidden-state layers, shape (B, T, d), float32."""
    import torch

    modules = _layer_modules(model, layers)
    base = _decoder(model)
    captured: dict[int, torch.Tensor] = {}
    deepest = max(modules)

    def hook_for(j):
        def hook(_module, _inputs, output):
            captured[j] = output[0] if isinstance(output, tuple) else output
            if j == deepest:
                raise _EnoughLayers
        return hook

    handles = [m.register_forward_hook(hook_for(j)) for j, m in modules.items()]
    try:
        base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
             past_key_values=cache, use_cache=cache is not None)
    except _EnoughLayers:
        pass
    finally:
        for h in handles:
            h.remove()
    states = [captured[i % (len(base.layers) + 1)].float() for i in layers]
    return torch.stack(states).mean(0)


def _weighted_sums(h, ids, mask, weights):
    """Per row: Σ_t w_t h_t and Σ_t w_t over real tokens."""
    w = weights[ids] * mask.to(weights.dtype)
    return (h * w.unsqueeze(-1)).sum(1), w.sum(1)


def _length_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices sorted by length (longest first) cut into batches of at most ``budget`` padded tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * lengths[cur[0]] > budget:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def _pad(rows: Sequence[Sequence[int]], width: int, device):
    import torch

    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[r, : len(row)] = 1
    return ids.to(device), mask.to(device)


def _pooled_sums(model, weights, token_lists, cfg: EmbeddingConfig, keep_cache: bool = False,
                 starts: Sequence[int] | None = None):
    """Weighted sums (M, d), weight sums (M,) and, if asked, each row's own keys/values per layer.

    ``starts``: per row, the first position that is pooled (the whole text still runs through the
    model); None pools every token."""
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    d = model.config.hidden_size
    sums = torch.zeros(len(token_lists), d, dtype=torch.float64)
    wsum = torch.zeros(len(token_lists), dtype=torch.float64)
    kv: list = [None] * len(token_lists)
    todo = [i for i, t in enumerate(token_lists) if t]
    for batch in _length_batches([len(token_lists[i]) for i in todo], cfg.token_budget):
        rows = [todo[b] for b in batch]
        ids, mask = _pad([token_lists[r] for r in rows], len(token_lists[rows[0]]), device)
        pooled = mask
        if starts is not None:
            first = torch.tensor([starts[r] for r in rows], device=device)[:, None]
            pooled = mask * (torch.arange(mask.shape[1], device=device)[None] >= first)
        cache = DynamicCache() if keep_cache else None
        with torch.inference_mode():
            h = _mean_layers(model, cfg.layers, ids, mask, cache=cache)
            s, w = _weighted_sums(h, ids, pooled, weights)
        sums[rows], wsum[rows] = s.double().cpu(), w.double().cpu()
        if keep_cache:
            for b, r in enumerate(rows):
                n = len(token_lists[r])
                kv[r] = [(layer.keys[b : b + 1, :, :n].clone(), layer.values[b : b + 1, :, :n].clone())
                         for layer in cache.layers if layer.keys is not None]
    return sums, wsum, kv


def _suffix_sums(model, weights, prefix_kv, prefix_lens, suffixes, cfg: EmbeddingConfig):
    """Weighted sums over each suffix's tokens, attending to its (already computed) prefix."""
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    d = model.config.hidden_size
    sums = torch.zeros(len(suffixes), d, dtype=torch.float64)
    wsum = torch.zeros(len(suffixes), dtype=torch.float64)
    total = [prefix_lens[i] + len(s) for i, s in enumerate(suffixes)]
    for batch in _length_batches(total, cfg.token_budget):
        p_max = max(prefix_lens[i] for i in batch)
        s_max = max(len(suffixes[i]) for i in batch)
        ids, s_mask = _pad([suffixes[i] for i in batch], s_max, device)
        p_mask = torch.zeros(len(batch), p_max, dtype=torch.long, device=device)
        layers = []
        for l in range(len(prefix_kv[batch[0]])):
            k0, v0 = prefix_kv[batch[0]][l]
            keys = k0.new_zeros(len(batch), k0.shape[1], p_max, k0.shape[3])
            values = v0.new_zeros(len(batch), v0.shape[1], p_max, v0.shape[3])
            for b, i in enumerate(batch):
                k, v = prefix_kv[i][l]
                keys[b, :, : k.shape[2]], values[b, :, : v.shape[2]] = k[0], v[0]
            layers.append((keys, values))
        for b, i in enumerate(batch):
            p_mask[b, : prefix_lens[i]] = 1
        # Padded prefix slots are masked out; rotary positions continue each text's own prefix.
        positions = torch.tensor([prefix_lens[i] for i in batch], device=device)[:, None] + torch.arange(s_max, device=device)
        with torch.inference_mode():
            h = _mean_layers(model, cfg.layers, ids, torch.cat([p_mask, s_mask], 1), positions,
                             DynamicCache(ddp_cache_data=layers))
            s, w = _weighted_sums(h, ids, s_mask, weights)
        sums[batch], wsum[batch] = s.double().cpu(), w.double().cpu()
    return sums, wsum


def _unit(sums, wsum) -> np.ndarray:
    """Weighted mean, L2-normalised; a text with no weighted token gives the zero vector."""
    v = sums / wsum.clamp_min(1e-300)[:, None]
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
    v[wsum == 0] = 0
    return v.float().numpy()


def _token_lists(tokenizer, texts: Sequence[str], max_length: int) -> tuple[list[list[int]], int]:
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    return [t[:max_length] for t in ids], sum(len(t) > max_length for t in ids)


def count_truncated(tokenizer, texts: Sequence[str], max_length: int) -> int:
    """How many texts have more than ``max_length`` tokens (they are cut, as in the release)."""
    return _token_lists(tokenizer, texts, max_length)[1]


def _weights_tensor(model, tokenizer, weights):
    import torch

    table = token_weight_table(tokenizer) if weights is None else weights
    return torch.as_tensor(table, device=next(model.parameters()).device)


def embed_texts(model, tokenizer, texts: Sequence[str], cfg: EmbeddingConfig, weights: np.ndarray | None = None,
                add_special_tokens: bool = False, unweighted: str = "zero") -> np.ndarray:
    """(N, d) unit vectors of whole texts; an empty text gives the zero vector.

    ``add_special_tokens``: tokenize as ``tokenizer(text)`` does (BOS for LLaMA-3), as the release's
    bin embedding (embed.py) does. ``unweighted``: a text whose tokens all weigh 0 gives the zero
    vector (``zero``) or the plain mean of its tokens (``uniform``, embed.py's fallback).
    """
    if unweighted not in ("zero", "uniform"):
        raise SelectlabError(f"unweighted={unweighted!r}; choose zero or uniform")
    w = _weights_tensor(model, tokenizer, weights)
    kept = [t if t.strip() else "" for t in texts]
    ids = tokenizer(kept, add_special_tokens=add_special_tokens)["input_ids"] if kept else []
    lists = [t[: cfg.max_length] if text else [] for t, text in zip(ids, kept)]
    sums, wsum, _ = _pooled_sums(model, w, lists, cfg)
    if unweighted == "uniform":
        import torch

        unweighted_rows = [i for i, t in enumerate(lists) if t and float(w[t].sum()) == 0]
        if unweighted_rows:
            s, ws, _ = _pooled_sums(model, torch.ones_like(w), [lists[i] for i in unweighted_rows], cfg)
            sums[unweighted_rows], wsum[unweighted_rows] = s, ws
    return _unit(sums, wsum)


@dataclass
class AnswerSetEmbedding:
    answers: np.ndarray  # (N, K, d) unit vectors; zero for an empty answer
    instructions: np.ndarray  # (N, d): the same pooling over the instruction alone
    counts: dict[str, int]


def embed_answer_sets(model, tokenizer, instructions: Sequence[str], answer_sets: Sequence[Sequence[str]],
                      cfg: EmbeddingConfig, weights: np.ndarray | None = None) -> AnswerSetEmbedding:
    """Embed the K answers of each instruction (and the instruction itself) per ``cfg``."""
    import torch

    if len(instructions) != len(answer_sets):
        raise ValueError(f"{len(instructions)} instructions but {len(answer_sets)} answer sets")
    k = len(answer_sets[0]) if answer_sets else 0
    for n, answers in enumerate(answer_sets):
        if len(answers) != k:
            raise ValueError(f"answer set {n} has {len(answers)} answers, the first has {k}")
    w = _weights_tensor(model, tokenizer, weights)
    d = model.config.hidden_size
    pairs = [(n, j) for n in range(len(answer_sets)) for j in range(k)
             if answer_sets[n][j].strip() or cfg.embeds_empty_answers]
    texts = [embedded_text(instructions[n], answer_sets[n][j], cfg.text) for n, j in pairs]
    joint, n_cut = _token_lists(tokenizer, texts, cfg.max_length)
    prefixes, n_prefix_cut = _token_lists(tokenizer, list(instructions), cfg.max_length)
    # Layer 0 alone (token embeddings) has no context to share.
    can_reuse = cfg.prefix_reuse and cfg.text == "instruction+answer" and max(_layer_modules(model, cfg.layers)) > 0
    reuse = [can_reuse and len(joint[m]) > len(prefixes[n])
             and joint[m][: len(prefixes[n])] == prefixes[n] for m, (n, _) in enumerate(pairs)]

    # The instructions are always run: their pooled sums are the bin features and, under
    # prefix reuse, the shared head of every answer text.
    p_sums, p_wsum, p_kv = _pooled_sums(model, w, prefixes, cfg, keep_cache=any(reuse))
    sums = torch.zeros(len(pairs), d, dtype=torch.float64)
    wsum = torch.zeros(len(pairs), dtype=torch.float64)
    full = [m for m in range(len(pairs)) if not reuse[m]]
    answer_only = cfg.pool == "answer" and cfg.text == "instruction+answer"
    if full:
        starts = [min(len(prefixes[pairs[m][0]]), len(joint[m])) for m in full] if answer_only else None
        s, ws, _ = _pooled_sums(model, w, [joint[m] for m in full], cfg, starts=starts)
        sums[full], wsum[full] = s, ws
    shared = [m for m in range(len(pairs)) if reuse[m]]
    if shared:
        owner = [pairs[m][0] for m in shared]
        s, ws = _suffix_sums(model, w, [p_kv[n] for n in owner], [len(prefixes[n]) for n in owner],
                             [joint[m][len(prefixes[pairs[m][0]]):] for m in shared], cfg)
        if answer_only:
            sums[shared], wsum[shared] = s, ws
        else:
            sums[shared], wsum[shared] = s + p_sums[owner], ws + p_wsum[owner]

    answers = np.zeros((len(answer_sets), k, d), dtype=np.float32)
    vecs = _unit(sums, wsum)
    for m, (n, j) in enumerate(pairs):
        answers[n, j] = vecs[m]
    n_empty = sum(not a.strip() for answers in answer_sets for a in answers)
    counts = {
        "empty_answers": n_empty,
        **cfg.empty_answer_counts(n_empty),
        "truncated_texts": n_cut,
        "truncated_instructions": n_prefix_cut,
        "zero_weight_texts": int((wsum == 0).sum()),
        "prefix_reused_texts": len(shared),
    }
    return AnswerSetEmbedding(answers, _unit(p_sums, p_wsum), counts)


# ---------------------------------------------------------------- score
