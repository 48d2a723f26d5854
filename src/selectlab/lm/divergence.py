"""ADG's score from one instruction's K answer vectors (docs/methods.md §1 "Score"): dispersion D,
anisotropy I, the release's other cloud metrics, and the combined score s = (1-λ)D + λI.

The vectors come from :mod:`selectlab.lm.embedding`; the scorer that ties both to a run is
:mod:`selectlab.scorers.adg`.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ..errors import SelectlabError

# The release's seven answer-cloud metrics (ADG_qwen.py ``selected_metrics_from_S``), by the
# column name we log them under; the release's own names are accepted in ``scorer.metric_*``.
METRIC_COLUMNS = {
    "Sc.cov_trace": "D", "Sc.SED": "I", "Sc.H_spec": "H_spec", "S.SEC": "SEC", "S.mean_cos": "mean_cos",
    "Sc.eig_ratio_12": "eig_ratio_12", "LOOD_var": "LOOD_var",
}


def metric_column(name: str) -> str:
    """``D`` or ``Sc.cov_trace`` -> ``D``; an unknown name fails with the choices."""
    if name in METRIC_COLUMNS.values():
        return name
    if name in METRIC_COLUMNS:
        return METRIC_COLUMNS[name]
    raise SelectlabError(f"unknown ADG metric {name!r}; choose one of {sorted(METRIC_COLUMNS)} "
                     f"(or their short names {sorted(METRIC_COLUMNS.values())})")


def _psd_eigenvalues(M: np.ndarray) -> np.ndarray:
    """Eigenvalues of symmetric matrices (..., K, K), clipped at 0, largest first."""
    return np.clip(np.linalg.eigvalsh(0.5 * (M + np.swapaxes(M, -1, -2))), 0, None)[..., ::-1]


def _centred_trace_over_k(S: np.ndarray) -> np.ndarray:
    """tr(H S H) / K from the clipped eigenvalues, as the release computes ``Sc.cov_trace``."""
    k = S.shape[-1]
    H = np.eye(k) - 1.0 / k
    return _psd_eigenvalues(H @ S @ H).sum(-1) / k


def cloud_metrics(V: np.ndarray, eps: float = 1e-12, chunk: int = 4096) -> dict[str, np.ndarray]:
    """The release's seven metrics of each answer cloud; V is (N, K, d) of unit (or zero) rows.

    With S = V Vᵀ and S_c = H S H (H = I − 11ᵀ/K), λ the clipped eigenvalues of S_c (largest
    first) and t = Σλ: D = t/K, I = 1 − λ1/t, H_spec = −Σ p log(p + eps) / log K with p = λ/t,
    eig_ratio_12 = λ1/(λ2 + eps); when t < eps these are 0, 0, 0 and inf. SEC = μ1/(Σμ + eps)
    for the eigenvalues μ of the UNcentred S; mean_cos = the mean of S's upper triangle;
    LOOD_var = max_k |D − D without answer k| / (D + eps) for K > 2 and D > eps, else 0.
    Float64, ``chunk`` clouds at a time (V may be a memory-mapped pool-sized array).
    """
    if np.ndim(V) != 3:
        raise ValueError(f"cloud metrics expect (N, K, d), got shape {np.shape(V)}")
    n, k = V.shape[:2]
    if k < 2:
        raise SelectlabError(f"ADG needs at least 2 answers per instruction (sampler.k={k})")
    out = {c: np.zeros(n) for c in METRIC_COLUMNS.values()}
    H = np.eye(k) - 1.0 / k
    upper = np.triu_indices(k, 1)
    for start in range(0, n, chunk):
        part = np.asarray(V[start : start + chunk], dtype=np.float64)
        S = part @ part.transpose(0, 2, 1)
        S = 0.5 * (S + S.transpose(0, 2, 1))
        mu = _psd_eigenvalues(S)
        lam = _psd_eigenvalues(H @ S @ H)
        t = lam.sum(1)
        spread = t >= eps
        safe_t = np.where(spread, t, 1.0)
        p = lam / safe_t[:, None]
        rows = slice(start, start + len(part))
        out["D"][rows] = np.where(spread, t / k, 0.0)
        out["I"][rows] = np.where(spread, 1.0 - lam[:, 0] / safe_t, 0.0)
        out["H_spec"][rows] = np.where(spread, -(p * np.log(p + eps)).sum(1) / np.log(k), 0.0)
        out["eig_ratio_12"][rows] = np.where(spread, lam[:, 0] / (lam[:, 1] + eps), np.inf)
        out["SEC"][rows] = mu[:, 0] / (mu.sum(1) + eps)
        out["mean_cos"][rows] = S[:, upper[0], upper[1]].mean(1)
        if k > 2:
            base = out["D"][rows]
            drops = np.stack([_centred_trace_over_k(np.delete(np.delete(S, j, 1), j, 2)) for j in range(k)], 1)
            lood = np.abs(base[:, None] - drops).max(1) / (base + eps)
            out["LOOD_var"][rows] = np.where(base > eps, lood, 0.0)
    return out


def divergence(V: np.ndarray, eps: float = 1e-12, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Dispersion D (``Sc.cov_trace``) and anisotropy I (``Sc.SED``) of each answer cloud."""
    metrics = cloud_metrics(V, eps, chunk)
    return metrics["D"], metrics["I"]


def combined_score(columns: Mapping[str, np.ndarray], metric_1: str, weight_1: float, metric_2: str,
                   weight_2: float) -> np.ndarray:
    """The release's ``WEIGHT_1·METRIC_1 + WEIGHT_2·METRIC_2`` (default 0.6·D + 0.4·I)."""
    return weight_1 * np.asarray(columns[metric_column(metric_1)]) + weight_2 * np.asarray(columns[metric_column(metric_2)])


def adg_score(D: np.ndarray, I: np.ndarray, lam: float = 0.4) -> np.ndarray:
    return (1.0 - lam) * np.asarray(D) + lam * np.asarray(I)
