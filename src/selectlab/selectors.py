"""Selectors: turn scores and a budget into a :class:`Selection`.

Examples whose score is NaN (a scorer's "not selectable", e.g. IFD >= 1) are never chosen.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .scorers import Scores

log = logging.getLogger(__name__)


@dataclass
class Selection:
    """What every selector returns.

    ``order``: indices into ``scores.ids`` of the selected examples, in rank order.
    ``bins``: one bin label per pool example, when the selector bins the pool (written as ``bins.npy``).
    ``subsets``: further named subsets (e.g. ADG's ``middle`` and ``bottom``), each an index order,
    written as ``subset_<name>.jsonl`` beside ``subset.jsonl``.
    ``meta``: small JSON-able facts about the selection (counts, chosen sizes) for the manifest.
    """

    order: list[int]
    bins: np.ndarray | None = None
    subsets: dict[str, list[int]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def resolve_budget(budget: int | float, n: int) -> int:
    """``selection.budget`` is a count (int >= 1) or a fraction of the pool (0 < float < 1)."""
    if isinstance(budget, float) and 0 < budget < 1:
        return max(1, int(round(budget * n)))
    if budget is None or int(budget) != budget or budget < 1:
        raise ValueError(f"selection.budget={budget!r}: give a count >= 1 or a fraction in (0, 1)")
    return min(int(budget), n)


def _descending(score: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``idx`` ordered by score, highest first; ties keep pool order (stable)."""
    return idx[np.argsort(-score[idx], kind="stable")]


def topk(scores: Scores, budget: int, cfg: dict, ctx=None) -> Selection:
    valid = np.flatnonzero(~np.isnan(scores.score))
    return Selection(_descending(scores.score, valid)[:budget].tolist())


def binwise(scores: Scores, budget: int, cfg: dict, ctx=None) -> Selection:
    """ADG's bin-wise proportional top-k (released behaviour).

    k-means of the instruction embeddings into ``n_bins`` bins; with r = budget / N, each
    bin holding at least ``min_bin_size`` items gives its top max(1, int(|bin| * r)); the
    union is re-sorted by score and cut to the budget. Returns the order and each example's bin.
    """
    from sklearn.cluster import MiniBatchKMeans

    if scores.features is None:
        raise ValueError("selector=binwise needs instruction embeddings from the scorer (scorer=adg provides them)")
    n = len(scores.ids)
    n_bins = int(cfg["n_bins"])
    if n_bins * 2 * int(cfg["min_bin_size"]) > n:
        # The release's setting (1000 bins for 52K, ~52 per bin) cannot run on a small pool:
        # k-means needs n >= n_bins and bins under min_bin_size are never drawn from.
        capped = max(1, n // (2 * int(cfg["min_bin_size"])))
        log.warning("binwise: selector.n_bins=%d is too many for %d examples; using %d bins "
                    "(N // (2 * min_bin_size)) so that bins can be drawn from", n_bins, n, capped)
        n_bins = capped
    km = MiniBatchKMeans(
        n_clusters=n_bins, random_state=int(cfg["random_state"]), batch_size=max(1, min(1000, n // 10)),
        n_init=int(cfg["n_init"]), max_iter=int(cfg["max_iter"]),
    )
    labels = km.fit_predict(np.asarray(scores.features, dtype=np.float32))
    ratio = budget / n
    valid = ~np.isnan(scores.score)
    chosen: list[int] = []
    for b in range(n_bins):
        members = np.flatnonzero((labels == b) & valid)
        if len(np.flatnonzero(labels == b)) < int(cfg["min_bin_size"]):
            continue
        take = max(1, int(len(np.flatnonzero(labels == b)) * ratio))
        chosen += _descending(scores.score, members)[:take].tolist()
    order = _descending(scores.score, np.array(chosen, dtype=np.int64))[:budget]
    log.info("binwise: %d bins, %d candidates from bins with >= %d items, kept %d",
             n_bins, len(chosen), cfg["min_bin_size"], len(order))
    return Selection(order.tolist(), bins=labels.astype(np.int32), meta={"n_bins": n_bins})


# Each selector: fn(scores, budget, selector cfg, ctx) -> Selection.
# ``ctx`` is the run's ScoreContext (pool records, store, backbone) for selectors that need
# more than the scores (diversity over texts, a size search that fine-tunes).
def size_search(scores: Scores, budget: int, cfg: dict, ctx=None) -> Selection:
    """InstructMining's subset-size search (each trial fine-tunes); ``selection.budget`` is unused."""
    from .instructmining.experiments import size_search as search

    return search(scores, budget, cfg, ctx)


def diverse_topk(scores: Scores, budget: int, cfg: dict, ctx=None) -> Selection:
    from .diverse import diverse_topk as greedy

    return greedy(scores, budget, cfg, ctx)


def zip_greedy(scores: Scores, budget: int, cfg: dict, ctx=None) -> Selection:
    """ZIP's three-stage greedy over scorer=zip's texts and single ratios (see zip_selection)."""
    from .store import content_hash
    from .zip_selection import FORMS, example_text, zip_select

    text = scores.meta.get("text")
    if text not in FORMS or "compression_ratio" not in scores.columns or ctx is None:
        raise ValueError("selector=zip needs scorer=zip (its text form and per-example compression ratios)")
    by_id = {r["id"]: r for r in ctx.pool.records}
    texts = [example_text(by_id[i], text) for i in scores.ids]
    ks = {k: int(cfg[k]) for k in ("k1", "k2", "k3")}
    # Rounds are checkpointed so that a killed run resumes at its last round (the selection on
    # 52K examples takes minutes); the key covers every input of the loop.
    key = ctx.store.key("zip_rounds", 1, texts=content_hash([t.decode("utf-8") for t in texts]), budget=budget,
                        ratios=content_hash(scores.columns["compression_ratio"].tolist()),
                        selectable=content_hash(np.isnan(scores.score).tolist()), **ks)
    checkpoint = ctx.store.root / "zip_rounds" / f"{key}.npz"
    resume = dict(np.load(checkpoint)) if checkpoint.exists() else None

    def save(snapshot: dict) -> None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = checkpoint.with_name(f".{key}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **snapshot)
        os.replace(tmp, checkpoint)

    result = zip_select(texts, FORMS[text], scores.columns["compression_ratio"], budget, ks["k1"], ks["k2"],
                        ks["k3"], int(cfg["n_jobs"]), selectable=~np.isnan(scores.score), resume=resume,
                        on_round=save)
    checkpoint.unlink(missing_ok=True)  # the subsets artifact now holds the result
    log.info("zip: %d selected in %d rounds (%d stage-2 survivors discarded, %d compressions, %s s)",
             len(result.order), result.rounds, result.discarded, result.compressions, result.seconds)
    return Selection(result.order, meta={"rounds": result.rounds, "discarded": result.discarded,
                                         "compressions": result.compressions, "seconds": result.seconds})


def mig(scores: Scores, budget: int, cfg: dict, ctx=None) -> Selection:
    """MIG's information-gain greedy; the scorer's score is each example's quality (see mig.py)."""
    from .mig import example_label_matrix, label_graph, mig_greedy, propagation_matrix
    from .mig_labels import mig_inputs

    if ctx is None:
        raise ValueError("selector=mig needs the run context (pool records, store)")
    quality = np.asarray(scores.score, dtype=np.float64)
    if np.any(quality[~np.isnan(quality)] < 0):
        raise ValueError(f"selector=mig: quality (scorer {ctx.cfg.scorer.name!r}'s score) must be >= 0; "
                         "MIG spreads it over labels as information")
    by_id = {r["id"]: r for r in ctx.pool.records}
    label_ids, label_emb, labelled, facts = mig_inputs([by_id[i] for i in scores.ids], ctx.store, cfg, int(ctx.cfg.seed))
    selectable = labelled & ~np.isnan(quality)
    prop = propagation_matrix(label_graph(label_emb, float(cfg["sim_threshold"])), float(cfg["prop_weight"]))
    vec = example_label_matrix(label_ids, np.nan_to_num(quality), len(label_emb), bool(cfg["norm"]))
    picks, gains = mig_greedy(vec @ prop, budget, str(cfg["phi_type"]), float(cfg["phi_a"]), float(cfg["phi_b"]),
                              float(cfg["phi_alpha"]), selectable)
    facts.update(graph_edges=int(prop.nnz - prop.shape[0]), not_selectable=int((~selectable).sum()),
                 first_gain=gains[0] if gains else None, last_gain=gains[-1] if gains else None)
    log.info("mig: %d picked; %s", len(picks), facts)
    return Selection(picks, meta=facts)


def fla(scores: Scores, budget: int, cfg: dict, ctx=None) -> Selection:
    """SuperFiltering.D: the ``ifd_num`` best-scored examples, then facility location over their
    sentence embeddings (see facility_location.py)."""
    from .diverse import sbert_embeddings
    from .facility_location import euclidean_similarity, facility_location, ifd_prefilter, release_text

    if ctx is None:
        raise ValueError("selector=fla needs the run context (pool records, store)")
    ifd_num = int(cfg["ifd_num"]) if cfg.get("ifd_num") is not None else int(cfg["ifd_factor"]) * budget
    kept = ifd_prefilter(scores.score, ifd_num)
    by_id = {r["id"]: r for r in ctx.pool.records}
    texts = [release_text(by_id[scores.ids[i]]) for i in kept]
    emb = sbert_embeddings(texts, ctx.store, int(cfg["batch_size"]), cfg.get("device"), cfg.get("max_seq_length"))
    picks, gains = facility_location(euclidean_similarity(emb), budget)
    log.info("fla: %d kept by score (ifd_num %d), %d picked by facility location", len(kept), ifd_num, len(picks))
    return Selection(kept[picks].tolist(), meta={"ifd_num": ifd_num, "n_filtered": len(kept),
                                                 "first_gain": gains[0] if gains else None})


SELECTORS: dict[str, Callable[..., Selection]] = {
    "topk": topk, "binwise": binwise, "blendsearch": size_search, "size_grid": size_search,
    "diverse_topk": diverse_topk, "zip": zip_greedy, "mig": mig,
    "fla": fla,
}


def select(scores: Scores, budget: int, cfg: dict, ctx=None) -> Selection:
    name = cfg["name"]
    if name not in SELECTORS:
        raise KeyError(f"selector.name={name!r}; known: {sorted(SELECTORS)}")
    out = SELECTORS[name](scores, budget, cfg, ctx)
    if not isinstance(out, Selection):
        raise TypeError(f"selector {name!r} returned {type(out).__name__}, not a Selection")
    return out
