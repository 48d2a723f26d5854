"""ADG: sample K answers per instruction, embed them, score how the answer cloud spreads.

The score is the release's ``weight_1·metric_1 + weight_2·metric_2`` over the seven cloud
metrics (default 0.6·D + 0.4·I, i.e. s = (1 - λ)·D + λ·I with λ = 0.4; docs/methods.md §1, §1b);
all seven go out as score columns. The instruction embeddings for ``selector=binwise`` go out
as ``features``: by default the release's own bin recipe (embed.py), an artifact of its own per
pool × backbone × recipe, so embedding ablations keep the same bins. Both embedding stages are
stored per batch of instructions, so a killed run resumes.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np


from ..lm.divergence import cloud_metrics, combined_score
from ..lm.embedding import (count_truncated, embed_answer_sets, embed_texts, embedded_text,
                         token_weight_table)
from ..infra.store import ArtifactStore, content_hash
from ..config import plain
from ..schema import typed
from ..schema.run import EmbeddingConfig
from ..schema.scoring import AdgBins, AdgScorer
from ..context import RunContext
from . import Scores, register

log = logging.getLogger(__name__)

STAGE = "adg_embeddings"
VERSION = 2
BINS_STAGE = "adg_bins"
BINS_VERSION = 1


def score_weights(scorer_cfg: AdgScorer) -> tuple[str, float, str, float]:
    """(metric_1, weight_1, metric_2, weight_2); null weights follow ``lam`` (1 - lam and lam).
    The metrics' names and lam's range are the schema's domains (selectlab.schema.scoring)."""
    lam, w1, w2 = float(scorer_cfg.lam), scorer_cfg.weight_1, scorer_cfg.weight_2
    return (scorer_cfg.metric_1, 1.0 - lam if w1 is None else float(w1),
            scorer_cfg.metric_2, lam if w2 is None else float(w2))


def bins_key(records: list[dict], path: str, bins: AdgBins) -> tuple[str, dict]:
    """(key, recipe) of the bin-embedding artifact: the instructions, the backbone and the recipe
    (not the answer embedding's config: ablations share it). Also used by task=plan."""
    from ..lm.sampling import backbone_identity

    recipe = {k: getattr(bins, k) for k in ("layers", "max_length", "add_special_tokens", "unweighted", "dtype")}
    key = ArtifactStore.key(BINS_STAGE, BINS_VERSION, backbone=backbone_identity(path), recipe=recipe,
                            texts=content_hash([[r["id"], r["instruction"]] for r in records]))
    return key, recipe


def bin_embeddings(ctx: RunContext, path: str, bins: AdgBins, emb_cfg: EmbeddingConfig, model_for) -> np.ndarray:
    """The release's bin features (generation/embedding/embed.py): each stripped instruction
    tokenized WITH special tokens, cut at ``max_length`` (512), mean of ``layers`` (-4, -3, -2)
    whatever ``embedding.layers`` says, token-weighted with a uniform fallback, unit length.
    One artifact per pool × backbone × recipe, shared by every embedding/scoring ablation."""
    records = ctx.pool.records
    key, recipe = bins_key(records, path, bins)
    cfg = replace(emb_cfg, name="bins", layers=list(bins.layers), max_length=bins.max_length, dtype=bins.dtype,
                  prefix_reuse=False)
    reused = ctx.store.exists(BINS_STAGE, key)

    def compute(batch: list[int]) -> np.ndarray:
        model, tokenizer, weights = model_for(cfg.dtype)
        return embed_texts(model, tokenizer, [records[i]["instruction"].strip() for i in batch], cfg, weights,
                           add_special_tokens=bins.add_special_tokens, unweighted=bins.unweighted)

    folder = ctx.store.batched(BINS_STAGE, key, list(range(len(records))), bins.batch_size, compute,
                               meta={"recipe": recipe})
    log.info("bin embeddings (release recipe, layers %s): %s artifact %s/%s", list(cfg.layers),
             "reused" if reused else "computed", BINS_STAGE, key)
    return np.asarray(np.load(folder / "array.npy", mmap_mode="r"), dtype=np.float32)


@register("adg")
def score_adg(ctx: RunContext) -> Scores:
    """Sample K answers per instruction, embed them, score their cloud (docs/methods.md §1)."""
    from ..lm.sampling import sample_answers

    cfg = ctx.cfg
    m1, w1, m2, w2 = score_weights(cfg.scorer)
    bins = cfg.scorer.bins
    emb_cfg = typed(cfg.embedding)
    records, path = ctx.pool.records, ctx.backbone()
    samples = sample_answers(records, path, cfg.sampler, ctx.store, seed=int(cfg.seed))
    model_for = BackboneLoader(path, emb_cfg.device)
    stored, key = answer_embeddings(ctx, path, samples, emb_cfg, model_for)
    answers = stored[:, 1:]
    features = (bin_embeddings(ctx, path, bins, emb_cfg, model_for) if bins.source == "release"
                else np.asarray(stored[:, 0], dtype=np.float32))
    columns = cloud_metrics(answers)
    k = len(samples[0]["answers"]) if samples else 0
    return Scores(
        ids=[r["id"] for r in records], score=combined_score(columns, m1, w1, m2, w2), columns=columns,
        features=features, counts=degenerate_counts(records, samples, answers, columns["D"], features, emb_cfg,
                                                    model_for.tokenizer),
        meta={"layers": list(emb_cfg.layers), "text_mode": emb_cfg.text, "pool": emb_cfg.pool,
              "empty_answer": emb_cfg.empty_answer, "score": f"{w1}*{m1} + {w2}*{m2}", "k": k,
              "embedding": emb_cfg.name, "prefix_reuse": emb_cfg.prefix_reuse, "embedding_key": key,
              "bins": bins.source},
    )


class BackboneLoader:
    """``loader(dtype)`` -> (model, tokenizer, token weights): the backbone loaded once per dtype,
    only when some batch is not stored yet."""

    def __init__(self, path: str, device: str | None):
        from ..lm.models import load_tokenizer

        self.path, self.device, self.tokenizer, self.loaded = path, device, load_tokenizer(path), {}

    def __call__(self, dtype: str):
        from ..lm.models import load_causal_lm

        if dtype not in self.loaded:
            self.loaded[dtype] = load_causal_lm(self.path, dtype, self.device)
        if "weights" not in self.loaded:
            self.loaded["weights"] = token_weight_table(self.tokenizer)
        return self.loaded[dtype], self.tokenizer, self.loaded["weights"]


def answer_embeddings(ctx: RunContext, path: str, samples: list[dict], emb_cfg: EmbeddingConfig,
                      model_for: BackboneLoader) -> tuple[np.ndarray, str]:
    """(N, 1 + K, H) unit vectors, slot 0 the instruction and slots 1..K its answers, as a batched
    artifact keyed on the texts, the backbone and the embedding recipe; and its key."""
    from ..lm.sampling import backbone_identity

    records = ctx.pool.records
    key = ctx.store.key(
        STAGE, VERSION,
        texts=content_hash([[r["id"], r["instruction"], s["answers"]] for r, s in zip(records, samples)]),
        backbone=backbone_identity(path),
        embedding={**plain(ctx.cfg.embedding), "device": None},  # the device does not change the numbers
    )

    def compute(batch: list[int]) -> np.ndarray:
        model, tokenizer, weights = model_for(emb_cfg.dtype)
        emb = embed_answer_sets(model, tokenizer, [records[i]["instruction"] for i in batch],
                                [samples[i]["answers"] for i in batch], emb_cfg, weights)
        log.info("adg embedding batch: %s", emb.counts)
        return np.concatenate([emb.instructions[:, None, :], emb.answers], axis=1)

    k = len(samples[0]["answers"]) if samples else 0
    folder = ctx.store.batched(STAGE, key, list(range(len(records))), int(ctx.cfg.scorer.batch_size), compute,
                               meta={"embedding": plain(ctx.cfg.embedding), "k": k})
    return np.load(folder / "array.npy", mmap_mode="r"), key


def degenerate_counts(records, samples, answers, D, features, emb_cfg: EmbeddingConfig, tokenizer) -> dict[str, int]:
    """What the manifest and W&B count: sampling's degenerate answers, how empty answers were
    embedded, zero vectors, zero spread, truncated texts."""
    from ..lm.sampling import sampling_counts

    zero = ~answers.any(axis=2)  # (N, K): zero vectors (empty answers under `zero`, texts with no weighted token)
    empty = np.array([[not a.strip() for a in s["answers"]] for s in samples], dtype=bool).reshape(zero.shape)
    empty_paths = emb_cfg.empty_answer_counts(int(empty.sum()))
    log.info("empty answers: %d embedded as the instruction alone, %d as zero vectors (embedding.empty_answer=%s)",
             empty_paths["empty_answers_as_instruction"], empty_paths["empty_answers_as_zero"], emb_cfg.empty_answer)
    texts = [embedded_text(r["instruction"], a, emb_cfg.text) for r, s in zip(records, samples)
             for a in s["answers"] if a.strip()]
    return {
        **sampling_counts(samples),
        **empty_paths,
        "zero_weight_texts": int((zero & ~empty).sum()),
        "zero_spread": int(np.sum(D == 0)),
        "zero_instruction_vectors": int(np.sum(~features.any(axis=1))),
        "truncated_texts": count_truncated(tokenizer, texts, emb_cfg.max_length),
    }
