"""Selectors: turn scores and a budget into a :class:`Selection`.

Examples whose score is NaN (a scorer's "not selectable", e.g. IFD >= 1) are never chosen.
"""
from __future__ import annotations

import logging
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


def rival(name: str) -> Callable[..., Selection]:
    """A selector of rival_selectors.py (ZIP, MIG, SuperFiltering.D), imported when used."""
    def run(scores: Scores, budget: int, cfg: dict, ctx=None) -> Selection:
        from . import rival_selectors

        return getattr(rival_selectors, name)(scores, budget, cfg, ctx)

    return run


SELECTORS: dict[str, Callable[..., Selection]] = {
    "topk": topk, "binwise": binwise, "blendsearch": size_search, "size_grid": size_search,
    "diverse_topk": diverse_topk, "zip": rival("zip_greedy"), "mig": rival("mig"), "fla": rival("fla"),
}


def select(scores: Scores, budget: int, cfg: dict, ctx=None) -> Selection:
    name = cfg["name"]
    if name not in SELECTORS:
        raise KeyError(f"selector.name={name!r}; known: {sorted(SELECTORS)}")
    out = SELECTORS[name](scores, budget, cfg, ctx)
    if not isinstance(out, Selection):
        raise TypeError(f"selector {name!r} returned {type(out).__name__}, not a Selection")
    return out
