"""Selectors: turn scores and a budget into a :class:`Selection`.

Examples whose score is NaN (a scorer's "not selectable", e.g. IFD >= 1) are never chosen.
"""
from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np

from . import rival_selectors
from .diverse import diverse_topk as greedy_diverse_topk
from ..errors import SelectlabError
from ..scorers import Scores
from .subset import Selection

log = logging.getLogger(__name__)


def resolve_budget(budget: int | float, n: int) -> int:
    """``selection.budget`` is a count (int >= 1) or a fraction of the pool (0 < float < 1)."""
    if isinstance(budget, float) and 0 < budget < 1:
        return max(1, int(round(budget * n)))
    is_number = isinstance(budget, (int, float)) and not isinstance(budget, bool) and math.isfinite(budget)
    if not is_number or not float(budget).is_integer() or budget < 1:
        raise SelectlabError(f"selection.budget={budget!r}: give a count >= 1 or a fraction in (0, 1)")
    return min(int(budget), n)


def _descending(score: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``idx`` ordered by score, highest first; ties keep pool order (stable)."""
    return idx[np.argsort(-score[idx], kind="stable")]


def topk(scores: Scores, budget: int, cfg: dict, ctx=None) -> Selection:
    valid = np.flatnonzero(~np.isnan(scores.score))
    return Selection(_descending(scores.score, valid)[:budget].tolist())


def bin_quota(size: int, ratio: float) -> tuple[int, int, int]:
    """(top, middle, bottom) counts of one bin of ``size`` >= 3 items, as the release computes them.

    Each is max(1, int(size * ratio)); when the three exceed the bin, top and bottom are scaled by
    size / (their sum) (each kept >= 1) and middle takes what is left (ADG_llama.py / ADG_qwen.py).
    """
    each = max(1, int(size * ratio))
    if 3 * each <= size:
        return each, each, each
    scale = size / (3 * each)
    top = bottom = max(1, int(each * scale))
    return top, max(0, size - top - bottom), bottom


def split_bin(ranked: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A bin's members ranked by score (highest first) -> its top, middle (central slice of what
    lies between top and bottom) and bottom (lowest scores) parts."""
    top_n, middle_n, bottom_n = bin_quota(len(ranked), ratio)
    top, rest, bottom = ranked[:top_n], ranked[top_n : len(ranked) - bottom_n], ranked[len(ranked) - bottom_n :]
    if len(rest) >= middle_n:
        start = (len(rest) - middle_n) // 2
        rest = rest[start : start + middle_n]
    return top, rest, bottom


def binwise(scores: Scores, budget: int, cfg: dict, ctx=None) -> Selection:
    """ADG's bin-wise proportional selection, as released (ADG_llama.py ``cluster_based_selection``).

    k-means of the instruction embeddings into ``n_bins`` bins; with r = budget / N, each bin of at
    least ``min_bin_size`` items gives its top, middle and bottom parts (:func:`bin_quota`); smaller
    bins go whole to the middle group. Each group is cut to the budget by score (bottom: lowest
    first). The selection is the top group; ``middle`` and ``bottom`` are extra subsets.
    """
    from sklearn.cluster import MiniBatchKMeans

    if scores.features is None:
        raise SelectlabError("selector=binwise needs instruction embeddings from the scorer (scorer=adg provides them)")
    n = len(scores.ids)
    n_bins, min_size = int(cfg["n_bins"]), int(cfg["min_bin_size"])
    if n_bins * 2 * min_size > n:
        # The release's setting (1000 bins for 52K, ~52 per bin) cannot run on a small pool:
        # k-means needs n >= n_bins and bins under min_bin_size are never drawn from.
        capped = max(1, n // (2 * min_size))
        log.warning("binwise: selector.n_bins=%d is too many for %d examples; using %d bins "
                    "(N // (2 * min_bin_size)) so that bins can be drawn from", n_bins, n, capped)
        n_bins = capped
    km = MiniBatchKMeans(
        n_clusters=n_bins, random_state=int(cfg["random_state"]), batch_size=max(1, min(1000, n // 10)),
        n_init=int(cfg["n_init"]), max_iter=int(cfg["max_iter"]),
    )
    labels = km.fit_predict(np.asarray(scores.features, dtype=np.float32))
    groups = split_bins(scores.score, labels, budget / n, min_size)
    order = {name: _descending(scores.score, np.array(g, dtype=np.int64))[:budget] for name, g in groups.items()}
    order["bottom"] = order_ascending(scores.score, np.array(groups["bottom"], dtype=np.int64))[:budget]
    log.info("binwise: %d bins; top %d, middle %d, bottom %d candidates; kept %d", n_bins,
             *(len(groups[g]) for g in ("top", "middle", "bottom")), len(order["top"]))
    return Selection(order["top"].tolist(), bins=labels.astype(np.int32),
                     subsets={"middle": order["middle"].tolist(), "bottom": order["bottom"].tolist()},
                     meta={"n_bins": n_bins, **{f"n_{g}_candidates": len(v) for g, v in groups.items()}})


def split_bins(score: np.ndarray, labels: np.ndarray, ratio: float, min_size: int) -> dict[str, list[int]]:
    """Top, middle and bottom candidates over all bins (bins in order of first appearance, as the
    release's dict of clusters; NaN scores are never selectable)."""
    groups: dict[str, list[int]] = {"top": [], "middle": [], "bottom": []}
    valid = ~np.isnan(score)
    for b in dict.fromkeys(labels.tolist()):
        members = np.flatnonzero((labels == b) & valid)
        if (labels == b).sum() < min_size:
            groups["middle"] += members.tolist()
            continue
        for name, part in zip(("top", "middle", "bottom"), split_bin(_descending(score, members), ratio)):
            groups[name] += part.tolist()
    return groups


def order_ascending(score: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``idx`` ordered by score, lowest first; ties keep pool order (stable)."""
    return idx[np.argsort(score[idx], kind="stable")]


# Each selector: fn(scores, budget, selector cfg, ctx) -> Selection.
# ``ctx`` is the run's RunContext (pool records, store, backbone) for selectors that need
# more than the scores (diversity over texts).
def diverse_topk(scores: Scores, budget: int, cfg: dict, ctx=None) -> Selection:
    return greedy_diverse_topk(scores, budget, cfg, ctx)


# InstructMining's subset-size search (selector=blendsearch | size_grid) is not a function of the
# scores: it fine-tunes, so it is a stage of its own (selectlab.stages.size_search) that chooses
# the budget for top-k; selection.budget is unused.
SIZE_SEARCH = ("blendsearch", "size_grid")
# Config sections a selector reads besides its own; they enter the subset artifact's key (a size
# search fine-tunes and evaluates: another train.lr must give another subset).
READS: dict[str, tuple[str, ...]] = {name: ("train", "heldout", "backbone") for name in SIZE_SEARCH}


SELECTORS: dict[str, Callable[..., Selection]] = {
    "topk": topk, "binwise": binwise, "diverse_topk": diverse_topk, "zip": rival_selectors.zip_greedy,
    "mig": rival_selectors.mig, "fla": rival_selectors.fla,
}


def select(scores: Scores, budget: int, cfg: dict, ctx=None) -> Selection:
    name = cfg["name"]
    if name not in SELECTORS:
        raise SelectlabError(f"selector.name={name!r}; known: {sorted([*SELECTORS, *SIZE_SEARCH])}")
    out = SELECTORS[name](scores, budget, cfg, ctx)
    if not isinstance(out, Selection):
        raise TypeError(f"selector {name!r} returned {type(out).__name__}, not a Selection")
    return out
