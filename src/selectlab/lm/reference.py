"""ADG scoring written the way the authors' release does it: the yardstick for tests and benches.

One forward per text through the full causal LM with ``output_hidden_states=True``, each
token's weight decoded at run time, one numpy eigen-decomposition per instruction.
Slow and plainly correct; :mod:`selectlab.lm.embedding` must give the same numbers.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .embedding import embedded_text, piece_weight


def reference_embedding(model, tokenizer, text: str, layers: Sequence[int], max_length: int = 1024,
                        add_special_tokens: bool = False, uniform_fallback: bool = False) -> np.ndarray:
    """One text's vector; ``add_special_tokens``/``uniform_fallback`` (and max_length 512) are the
    release's bin recipe (embed.py ``sentence_vec``)."""
    import torch

    d = model.config.hidden_size
    if not text.strip():
        return np.zeros(d, dtype=np.float32)
    ids = tokenizer(text, add_special_tokens=add_special_tokens, return_tensors="pt")["input_ids"][:, :max_length]
    with torch.no_grad():
        out = model(input_ids=ids.to(model.device), output_hidden_states=True)
    hidden = torch.stack([out.hidden_states[l][0].float() for l in layers]).mean(0).cpu().double()
    weights = torch.tensor([piece_weight(tokenizer.decode([t])) for t in ids[0].tolist()], dtype=torch.float64)
    if weights.sum() == 0 and uniform_fallback:
        weights = torch.ones_like(weights)
    if weights.sum() == 0:
        return np.zeros(d, dtype=np.float32)
    v = (hidden * weights[:, None]).sum(0) / weights.sum()
    return (v / v.norm()).float().numpy()


def reference_divergence(V: np.ndarray) -> tuple[float, float]:
    V = np.asarray(V, dtype=np.float64)
    k = V.shape[0]
    H = np.eye(k) - np.ones((k, k)) / k
    Sc = H @ V @ V.T @ H
    trace = float(np.trace(Sc))
    if trace < 1e-12:
        return 0.0, 0.0
    eig = np.clip(np.sort(np.linalg.eigvalsh(Sc))[::-1], 0, None)
    return trace / k, float(1 - eig[0] / eig.sum())


def reference_scores(model, tokenizer, instructions: Sequence[str], answer_sets: Sequence[Sequence[str]],
                     layers: Sequence[int] = (-4, -3, -2), text_mode: str = "instruction+answer",
                     max_length: int = 1024, lam: float = 0.4, empty_answer: str = "instruction") -> dict[str, np.ndarray]:
    """D, I, s and the answer vectors (N, K, d), one instruction at a time. ``empty_answer``:
    ``instruction`` embeds the joint text whenever it is non-empty (ADG_llama.py), ``zero`` gives an
    empty answer the zero vector (ADG_qwen.py)."""
    D, I, V = [], [], []
    for instruction, answers in zip(instructions, answer_sets):
        vecs = np.stack([
            reference_embedding(model, tokenizer, embedded_text(instruction, a, text_mode), layers, max_length)
            if a.strip() or empty_answer == "instruction" else np.zeros(model.config.hidden_size, dtype=np.float32)
            for a in answers
        ])
        d, i = reference_divergence(vecs)
        D.append(d)
        I.append(i)
        V.append(vecs)
    D, I = np.array(D), np.array(I)
    return {"D": D, "I": I, "score": (1 - lam) * D + lam * I, "vectors": np.stack(V)}
