"""SuperFiltering.D: IFD filtering, then facility location over sentence embeddings
(tianyi-lab/Superfiltering ``code_diversity_fla/do_fla.py``).

The release, kept: keep the examples with IFD < 1 (here: the scorer's non-NaN scores), take the
``ifd_num`` highest (its script: 10,400 of Alpaca's 52,002, i.e. 20% of the pool: the default
``ifd_num: null`` takes ``ifd_fraction`` = 0.2 of the scored examples, never fewer than the budget), embed "instruction\\ninput\\n" + output with all-MiniLM-L6-v2
(mean pooling, unit length, up to 512 tokens as its tokenizer truncates), then maximise the
facility-location function f(S) = sum_i max_{j in S} s_ij with submodlib's LazyGreedy, where
s_ij = exp(-||x_i - x_j|| / d) is submodlib's "euclidean" similarity (d = embedding width).

The only change: the dense kernel is computed here with numpy (float64) and handed to submodlib
as ``sijs``; the release lets submodlib build it in C++ (float32) from ``data.tolist()``, which
passes through Python lists of n^2 floats (gigabytes at its 10,400 examples). Same formula.
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def euclidean_similarity(x: np.ndarray) -> np.ndarray:
    """submodlib's dense "euclidean" kernel: exp(-||x_i - x_j|| / d)."""
    x = np.asarray(x, dtype=np.float64)
    sq = (x * x).sum(axis=1)
    dist2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    np.maximum(dist2, 0.0, out=dist2)
    np.fill_diagonal(dist2, 0.0)
    return np.exp(-np.sqrt(dist2) / x.shape[1])


def facility_location(kernel: np.ndarray, budget: int) -> tuple[list[int], list[float]]:
    """(picked indices in order, marginal gains) by submodlib's LazyGreedy, as the release calls it."""
    from submodlib.functions.facilityLocation import FacilityLocationFunction

    n = len(kernel)
    if budget >= n:
        return list(range(n)), [float("nan")] * n  # the whole ground set: nothing to choose
    obj = FacilityLocationFunction(n=n, mode="dense", sijs=np.ascontiguousarray(kernel, dtype=np.float64),
                                   separate_rep=False)
    greedy = obj.maximize(budget=budget, optimizer="LazyGreedy", stopIfZeroGain=False, stopIfNegativeGain=False,
                          verbose=False, show_progress=False)
    return [int(i) for i, _ in greedy], [float(g) for _, g in greedy]


def release_text(record: dict) -> str:
    """do_fla.py ``combine_sentences`` with emb_type=whole: Alpaca records always have 'input'."""
    return record["instruction"] + "\n" + record["input"] + "\n" + record["output"]


KERNEL_BYTES_PER_PAIR = 16  # the float64 kernel built here + submodlib's own dense copy of it


def prefilter_size(n_scored: int, budget: int, cfg: dict) -> int:
    """``selector.ifd_num``, or ``ifd_fraction`` of the scored examples (the release's 20%), at
    least the budget and at most the examples scored."""
    if cfg.get("ifd_num") is not None:
        return min(int(cfg["ifd_num"]), n_scored)
    return min(max(int(round(float(cfg["ifd_fraction"]) * n_scored)), budget), n_scored)


def kernel_gib(n: int) -> float:
    """Memory of facility location's dense kernel over ``n`` examples (GiB)."""
    return KERNEL_BYTES_PER_PAIR * n * n / 2**30


def check_kernel_fits(n: int, available_bytes: int | None = None) -> None:
    """A clear error, before any embedding, when the dense kernel cannot fit in free memory."""
    import psutil

    from ..errors import SelectlabError

    available = psutil.virtual_memory().available if available_bytes is None else available_bytes
    if KERNEL_BYTES_PER_PAIR * n * n > available:
        raise SelectlabError(f"selector=fla: facility location's dense kernel over {n:,} pre-filtered examples needs "
                             f"{kernel_gib(n):.1f} GiB, {available / 2**30:.1f} GiB are free; lower selector.ifd_num "
                             f"or selector.ifd_fraction")


def ifd_prefilter(score: np.ndarray, ifd_num: int) -> np.ndarray:
    """Indices of the ``ifd_num`` highest non-NaN scores, highest first (ties keep pool order)."""
    valid = np.flatnonzero(~np.isnan(score))
    return valid[np.argsort(-score[valid], kind="stable")][:ifd_num]
