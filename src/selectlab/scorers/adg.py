"""ADG: sample K answers per instruction, embed them, score how the answer cloud spreads.

s = (1 - λ)·D + λ·I (METHODS.md §1). The instruction embeddings go out as ``features`` for
``selector=binwise``. The embedding stage is stored per batch of instructions, so a killed
run resumes; its key covers the answers' content, the backbone, the embedding config and
this module's version.
"""
from __future__ import annotations

import logging

import numpy as np

from ..adg import (EmbeddingConfig, adg_score, count_truncated, divergence, embed_answer_sets, embedded_text,
                   token_weight_table)
from ..store import content_hash
from . import ScoreContext, Scores, register

log = logging.getLogger(__name__)

STAGE = "adg_embeddings"
VERSION = 1


def _plain(node) -> dict:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


@register("adg")
def score_adg(ctx: ScoreContext) -> Scores:
    from ..models import load_causal_lm, load_tokenizer
    from ..sampling import backbone_identity, sample_answers, sampling_counts

    cfg = ctx.cfg
    lam = float(cfg.scorer.lam)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"scorer.lam={lam} must lie in [0, 1]")
    emb_cfg = EmbeddingConfig.from_cfg(_plain(cfg.embedding))
    records = ctx.pool.records
    path = ctx.backbone()
    samples = sample_answers(records, path, cfg.sampler, ctx.store, seed=int(cfg.seed))
    k = len(samples[0]["answers"]) if samples else 0

    key = ctx.store.key(
        STAGE, VERSION,
        texts=content_hash([[r["id"], r["instruction"], s["answers"]] for r, s in zip(records, samples)]),
        backbone=backbone_identity(path),
        embedding={**_plain(cfg.embedding), "device": None},  # the device does not change the numbers
    )
    tokenizer = load_tokenizer(path)
    loaded: dict = {}

    def compute(batch: list[int]) -> np.ndarray:
        if not loaded:  # only when some batch is not stored yet
            loaded["model"] = load_causal_lm(path, emb_cfg.dtype, emb_cfg.device)
            loaded["weights"] = token_weight_table(tokenizer)
        emb = embed_answer_sets(loaded["model"], tokenizer, [records[i]["instruction"] for i in batch],
                                [samples[i]["answers"] for i in batch], emb_cfg, loaded["weights"])
        log.info("adg embedding batch: %s", emb.counts)
        # slot 0: the instruction; slots 1..K: its answers
        return np.concatenate([emb.instructions[:, None, :], emb.answers], axis=1)

    folder = ctx.store.batched(STAGE, key, list(range(len(records))), int(cfg.scorer.batch_size), compute,
                               meta={"embedding": _plain(cfg.embedding), "k": k})
    stored = np.load(folder / "array.npy", mmap_mode="r")
    instructions, answers = np.asarray(stored[:, 0]), stored[:, 1:]
    texts = [embedded_text(r["instruction"], a, emb_cfg.text) for r, s in zip(records, samples)
             for a in s["answers"] if a.strip()]

    D, I = divergence(answers)
    zero = ~answers.any(axis=2)  # (N, K): empty answers and texts with no weighted token
    empty = np.array([[not a.strip() for a in s["answers"]] for s in samples], dtype=bool).reshape(zero.shape)
    return Scores(
        ids=[r["id"] for r in records],
        score=adg_score(D, I, lam),
        columns={"D": D, "I": I},
        features=instructions.astype(np.float32),
        counts={
            **sampling_counts(samples),
            "zero_weight_texts": int((zero & ~empty).sum()),
            "zero_spread": int(np.sum(D == 0)),
            "zero_instruction_vectors": int(np.sum(~instructions.any(axis=1))),
            "truncated_texts": count_truncated(tokenizer, texts, emb_cfg.max_length),
        },
        meta={"layers": list(emb_cfg.layers), "text_mode": emb_cfg.text, "lambda": lam, "k": k,
              "embedding": emb_cfg.name, "prefix_reuse": emb_cfg.prefix_reuse, "embedding_key": key},
    )
