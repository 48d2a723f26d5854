"""IFD (Cherry LLM): Instruction-Following Difficulty = loss(A | Q) / loss(A) under the backbone.

Both losses are mean token cross-entropies over the answer tokens (see
:mod:`selectlab.lm.lm_scoring`). The highest IFD is selected first; IFD >= 1 (the prompt does
not help to predict the answer) is not selectable, as in the release, and counted.
loss(A) follows the Cherry LLM release by default: the answer after BOS and the text
"### Response:" (``scorer.uncond_prefix``); ``uncond_prefix: ""`` scores the answer alone.
``scorer.ratio``: ``loss`` (the IFD paper and Cherry LLM release: loss(A|Q)/loss(A)) or
``perplexity`` (the SuperFiltering release's ``ifd_ppl`` = ppl(A|Q)/ppl(A) =
exp(loss(A|Q) - loss(A))): the same examples pass the IFD < 1 filter, ranked differently.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ..errors import SelectlabError
from ..lm.lm_scoring import degenerate_mask, pool_answer_losses
from ..config import plain
from ..schema import typed
from ..context import RunContext
from . import Scores, register
from ..schema.scoring import IFD_RATIOS as RATIOS


log = logging.getLogger(__name__)



def ifd_from_losses(records: list[dict], loss_cond: np.ndarray, loss_uncond: np.ndarray,
                    n_answer_tokens: np.ndarray, ratio: str = "loss") -> tuple[np.ndarray, np.ndarray, dict]:
    """(ifd, score, counts): score = IFD where it is finite and < 1, NaN elsewhere."""
    if ratio not in RATIOS:
        raise SelectlabError(f"scorer.ratio={ratio!r}; choose one of {RATIOS}")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ifd = loss_cond / loss_uncond if ratio == "loss" else np.exp(loss_cond - loss_uncond)
    usable, counts = degenerate_mask(records, n_answer_tokens, ifd)
    ge_1 = usable & (ifd >= 1)
    counts["ifd_ge_1"] = int(ge_1.sum())
    score = np.where(usable & ~ge_1, ifd, np.nan)
    return ifd, score, counts


def ifd_scores(ctx: RunContext, model_path: str, model_ident) -> Scores:
    """IFD of every pool record with the causal LM at ``model_path`` (shared with superfiltering)."""
    table, meta = pool_answer_losses(ctx, model_path, plain(model_ident), ctx.cfg.scorer, unconditional=True)
    loss_cond, loss_uncond, n_tokens = table.T
    ratio = str(ctx.cfg.scorer.ratio)
    ifd, score, counts = ifd_from_losses(ctx.pool.records, loss_cond, loss_uncond, n_tokens, ratio)
    return Scores(
        ids=[r["id"] for r in ctx.pool.records], score=score,
        columns={"loss_cond": loss_cond, "loss_uncond": loss_uncond, "ifd": ifd, "n_answer_tokens": n_tokens},
        counts=counts, meta={**meta, "ratio": ratio},
    )


@register("ifd", reads=("backbone",))
def score_ifd(ctx: RunContext) -> Scores:
    """IFD under the backbone, or (``scorer.pre_experience.enabled``) under the release's
    pre-experienced model: the backbone fine-tuned (the run's ``train``) on a few examples per
    k-means cluster of the pool (:func:`pre_experienced_model`)."""
    pre = ctx.cfg.scorer.pre_experience
    if not pre.enabled:
        return ifd_scores(ctx, ctx.backbone(), ctx.cfg.backbone)
    if ctx.cfg.train.name == "none":
        raise SelectlabError("scorer.pre_experience.enabled=true fine-tunes the backbone first: set a train "
                             "config (train=cpu_small, train=paper, train=lora)")
    model = pre_experienced_model(ctx, pre)
    scores = ifd_scores(ctx, model, {"pre_experienced": ctx.store.identity(model)})
    return dataclasses.replace(scores, meta={**scores.meta, "pre_experienced_model": model})


# ---- Cherry LLM v1's pre-experience (cherry_seletion/data_analysis.py --mod pre, data_by_cluster.py) ----

PRE_STAGE, PRE_VERSION = "ifd_pre_features", 1


def prompt_features(ctx: RunContext, max_length: int) -> np.ndarray:
    """(N, 1 + H): per record, the perplexity of its Alpaca prompt under the backbone and the mean of
    the last hidden states over the prompt's tokens (the release's ``ppl`` and ``sent_emb``)."""
    import torch

    from ..lm.models import default_device, load_causal_lm, load_tokenizer
    from ..lm.prompts import render_prompt
    from ..lm.sampling import backbone_identity

    path, records = ctx.backbone(), ctx.pool.records
    tokenizer, loaded = load_tokenizer(path), []
    key = ctx.store.key(PRE_STAGE, PRE_VERSION, pool=ctx.pool_key, backbone=backbone_identity(path),
                        max_length=max_length, template="alpaca")

    def compute(batch: list[int]) -> np.ndarray:
        if not loaded:
            loaded.append(load_causal_lm(path, "float32", default_device()))
        model, rows = loaded[0], []
        for i in batch:  # one text at a time, as the release: no padding in the numbers
            ids = tokenizer(render_prompt(records[i], "alpaca"), truncation=True, max_length=max_length,
                            return_tensors="pt").input_ids.to(model.device)
            with torch.no_grad():
                out = model(ids, labels=ids, output_hidden_states=True)
            rows.append(np.concatenate([[float(torch.exp(out.loss))],
                                        out.hidden_states[-1][0].float().mean(0).cpu().numpy()]))
        return np.asarray(rows, dtype=np.float64)

    folder = ctx.store.batched(PRE_STAGE, key, list(range(len(records))), 64, compute,
                               meta={"max_length": max_length})
    return np.load(folder / "array.npy")


def middle_confidence_picks(labels: np.ndarray, ppl: np.ndarray, n: int, low: float, high: float) -> list[int]:
    """The release's ``sample_middle_confidence_data``: per cluster, all of it when it has fewer than
    ``n`` members; else its members with prompt perplexity within the [low, high] percentiles, every
    ``len // n``-th of them up to ``n`` (all of them when fewer than ``n``). Cluster order, then pool order."""
    picks = []
    for c in range(len(np.unique(labels))):
        members = np.where(labels == c)[0]
        if len(members) < n:
            picks += members.tolist()
            continue
        conf = ppl[members]
        middle = members[(conf >= np.percentile(conf, low)) & (conf <= np.percentile(conf, high))]
        picks += (middle if len(middle) < n else middle[::len(middle) // n][:n]).tolist()
    return picks


def pre_experienced_model(ctx: RunContext, pre) -> str:
    """The backbone fine-tuned on the release's pre-experience sample of the pool."""
    from sklearn.cluster import KMeans

    from ..lm.train import finetune

    features = prompt_features(ctx, int(pre.max_length))
    clusters = min(int(pre.clusters), len(features))
    # n_init=10: the release ran scikit-learn before 1.4, whose KMeans default was 10 initialisations
    labels = KMeans(n_clusters=clusters, random_state=0, n_init=10).fit(features[:, 1:]).labels_
    picks = middle_confidence_picks(labels, features[:, 0], int(pre.per_cluster), float(pre.low_percentile),
                                    float(pre.high_percentile))
    records = [ctx.pool.records[i] for i in picks]
    log.info("IFD pre-experience: %d examples from %d k-means clusters of the prompts' last hidden states",
             len(records), clusters)
    return finetune(records, ctx.backbone(), typed(ctx.cfg.train), ctx.store,
                    {"ifd_pre_experience": {"pool": ctx.pool_key, "picks": [r["id"] for r in records],
                                            "backbone": plain(ctx.cfg.backbone)}})
