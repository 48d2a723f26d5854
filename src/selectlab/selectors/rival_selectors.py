"""Selectors of the ADG paper's other rivals, each as its authors released it: ZIP's three-stage
greedy (zip_selection.py), MIG's information-gain greedy (mig.py, mig_labels.py) and
SuperFiltering.D's facility location (facility_location.py). Registered in selectors.SELECTORS
as ``zip``, ``mig`` and ``fla``; each returns a :class:`selectlab.selectors.subset.Selection`.
"""
from __future__ import annotations

import logging

import numpy as np

from .diverse import sbert_embeddings
from ..errors import SelectlabError
from .facility_location import (check_kernel_fits, euclidean_similarity, facility_location, ifd_prefilter,
                                prefilter_size, release_text)
from .mig import example_label_matrix, label_graph, mig_greedy, propagation_matrix
from .mig_labels import mig_inputs
from ..scorers import Scores
from ..infra.store import content_hash
from .subset import Selection
from ..texts import FORMS, zip_text
from .zip_selection import zip_select

log = logging.getLogger(__name__)


def zip_greedy(scores: Scores, budget: int, cfg: dict, ctx=None) -> Selection:
    """ZIP's three-stage greedy over scorer=zip's texts and single ratios (see zip_selection)."""
    text = scores.meta.get("text")
    if text not in FORMS or "compression_ratio" not in scores.columns or ctx is None:
        raise SelectlabError("selector=zip needs scorer=zip (its text form and per-example compression ratios)")
    by_id = {r["id"]: r for r in ctx.pool.records}
    texts = [zip_text(by_id[i], text) for i in scores.ids]
    ks = {k: int(cfg[k]) for k in ("k1", "k2", "k3")}
    # Rounds are checkpointed so that a killed run resumes at its last round (the selection on
    # 52K examples takes minutes); the key covers every input of the loop.
    key = ctx.store.key("zip_rounds", 1, texts=content_hash([t.decode("utf-8") for t in texts]), budget=budget,
                        ratios=content_hash(scores.columns["compression_ratio"].tolist()),
                        selectable=content_hash(np.isnan(scores.score).tolist()), **ks)
    result = zip_select(texts, FORMS[text], scores.columns["compression_ratio"], budget, ks["k1"], ks["k2"],
                        ks["k3"], int(cfg["n_jobs"]), selectable=~np.isnan(scores.score),
                        resume=ctx.store.load_progress("zip_rounds", key),
                        on_round=lambda snapshot: ctx.store.save_progress("zip_rounds", key, snapshot))
    ctx.store.clear_progress("zip_rounds", key)  # the subsets artifact now holds the result
    log.info("zip: %d selected in %d rounds (%d stage-2 survivors discarded, %d compressions, %s s)",
             len(result.order), result.rounds, result.discarded, result.compressions, result.seconds)
    return Selection(result.order, meta={"rounds": result.rounds, "discarded": result.discarded,
                                         "compressions": result.compressions, "seconds": result.seconds})


def mig(scores: Scores, budget: int, cfg: dict, ctx=None) -> Selection:
    """MIG's information-gain greedy; the scorer's score is each example's quality (see mig.py)."""
    if ctx is None:
        raise ValueError("selector=mig needs the run context (pool records, store)")
    quality = np.asarray(scores.score, dtype=np.float64)
    if np.any(quality[~np.isnan(quality)] < 0):
        raise SelectlabError(f"selector=mig: quality (scorer {ctx.cfg.scorer.name!r}'s score) must be >= 0; "
                         "MIG spreads it over labels as information")
    by_id = {r["id"]: r for r in ctx.pool.records}
    label_ids, label_emb, labelled, facts = mig_inputs([by_id[i] for i in scores.ids], ctx.store, cfg, int(ctx.cfg.seed),
                                                       ~np.isnan(quality))
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
    if ctx is None:
        raise ValueError("selector=fla needs the run context (pool records, store)")
    ifd_num = prefilter_size(int((~np.isnan(scores.score)).sum()), budget, cfg)
    check_kernel_fits(ifd_num)
    kept = ifd_prefilter(scores.score, ifd_num)
    by_id = {r["id"]: r for r in ctx.pool.records}
    texts = [release_text(by_id[scores.ids[i]]) for i in kept]
    emb = sbert_embeddings(texts, ctx.store, int(cfg["batch_size"]), cfg.get("device"), cfg.get("max_seq_length"))
    picks, gains = facility_location(euclidean_similarity(emb), budget)
    log.info("fla: %d kept by score (ifd_num %d), %d picked by facility location", len(kept), ifd_num, len(picks))
    return Selection(kept[picks].tolist(), meta={"ifd_num": ifd_num, "n_filtered": len(kept),
                                                 "first_gain": gains[0] if gains else None})
