"""MIG (Maximize the Information Gain, yichengchen24/MIG ``mig/label.py``, ``mig/sampler.py``).

Each example carries information on its labels (tags): ``score`` on each of them (or
``score / n_labels`` with ``norm``). Labels are nodes of a graph whose edges are the cosine
similarities of their embeddings that reach ``sim_threshold``; the information an example
puts on one label spreads to similar labels through the column-normalised propagation matrix
P = (diag(W) + prop_weight * offdiag(W)) / column sums. With x the information of the
selected set per label and phi(x) = (x + a)^b concave, the greedy step takes the example
with the largest first-order gain  v_prop(e) . phi'(x)  (the release's ``vec_pool_prop @
d_phi(vec_x_sel)``), adds its propagated vector to x, and repeats until the budget.
Ties go to the lowest index (``torch.argmax``'s first maximum).

Everything is sparse (examples x labels, labels x labels), so 50K examples with thousands
of labels run in seconds; nothing here imports the pipeline.
"""
from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from ..errors import SelectlabError
from ..schema.selection import PHI_TYPES

log = logging.getLogger(__name__)



def label_graph(embeddings: np.ndarray, sim_threshold: float, block: int = 2048) -> sp.csr_matrix:
    """W: cosine similarity of unit label embeddings, entries below ``sim_threshold`` set to 0."""
    emb = np.asarray(embeddings, dtype=np.float64)
    rows = []
    for start in range(0, len(emb), block):  # blocks keep memory at block x L, not L x L
        sims = emb[start : start + block] @ emb.T
        sims[sims < sim_threshold] = 0.0
        rows.append(sp.csr_matrix(sims))
    return sp.vstack(rows, format="csr") if rows else sp.csr_matrix((0, 0))


def propagation_matrix(wam: sp.spmatrix, prop_weight: float = 1.0) -> sp.csc_matrix:
    """The release's ``calc_prop_matrix``: off-diagonal weights scaled by ``prop_weight``, then
    each column divided by its sum."""
    wam = sp.csr_matrix(wam, dtype=np.float64)
    diag = sp.diags(wam.diagonal())
    mat = diag + (wam - diag) * prop_weight
    col_sums = np.asarray(mat.sum(axis=0)).ravel()
    if np.any(col_sums <= 0):
        raise ValueError("MIG label graph: a label has no positive self-similarity (zero embedding?)")
    return sp.csc_matrix(mat @ sp.diags(1.0 / col_sums))


def example_label_matrix(label_ids: list[list[int]], quality: np.ndarray, n_labels: int,
                         norm: bool) -> sp.csr_matrix:
    """V[e, l] = quality[e] (or quality[e] / len(labels of e) with ``norm``) for each label of e
    (the release's ``vectorize``: a label listed twice is set, not added; norm counts the list)."""
    rows, cols, vals = [], [], []
    for e, labels in enumerate(label_ids):
        value = quality[e] / len(labels) if norm and labels else quality[e]
        for l in dict.fromkeys(labels):
            rows.append(e)
            cols.append(l)
            vals.append(value)
    return sp.csr_matrix((vals, (rows, cols)), shape=(len(label_ids), n_labels), dtype=np.float64)


def d_phi(x: np.ndarray, phi_type: str, a: float, b: float, alpha: float) -> np.ndarray:
    """phi'(x): pow: b (x + a)^(b - 1) (release default a=1e-6, b=0.8); exp: alpha e^(-alpha x)."""
    if phi_type == "pow":
        return b * (x + a) ** (b - 1)
    if phi_type == "exp":
        return alpha * np.exp(-alpha * x)
    raise SelectlabError(f"selector.phi_type={phi_type!r}; choose one of {PHI_TYPES}")


def mig_greedy(vec_prop: sp.spmatrix, budget: int, phi_type: str = "pow", a: float = 1e-6, b: float = 0.8,
               alpha: float = 1.0, selectable: np.ndarray | None = None, resync_every: int = 512
               ) -> tuple[list[int], list[float]]:
    """(picked example indices in order, the gain of each pick).

    A pick changes phi' only on the labels its propagated vector touches, so the gains are
    updated through those columns alone (gain += V[:, J] @ delta phi'[J]) instead of a full
    product per step; every ``resync_every`` picks the full product is taken again so that
    rounding cannot drift."""
    csr, csc = sp.csr_matrix(vec_prop), sp.csc_matrix(vec_prop)
    n, n_labels = csr.shape
    open_ = np.ones(n, dtype=bool) if selectable is None else np.array(selectable, dtype=bool)
    x_sel = np.zeros(n_labels, dtype=np.float64)
    grad = d_phi(x_sel, phi_type, a, b, alpha)
    picks: list[int] = []
    gains: list[float] = []
    gain = np.empty(n)
    for step in range(min(budget, int(open_.sum()))):
        if step % resync_every == 0:
            gain = csr @ grad
            gain[~open_] = -np.inf
        pick = int(np.argmax(gain))
        picks.append(pick)
        gains.append(float(gain[pick]))
        open_[pick] = False
        gain[pick] = -np.inf
        touched = csr.indices[csr.indptr[pick] : csr.indptr[pick + 1]]
        x_sel[touched] += csr.data[csr.indptr[pick] : csr.indptr[pick + 1]]
        new_grad = d_phi(x_sel[touched], phi_type, a, b, alpha)
        gain += csc[:, touched] @ (new_grad - grad[touched])
        grad[touched] = new_grad
    return picks, gains
