"""MIG's inputs from a run: per-example labels and label embeddings (the greedy is in mig.py).

``labels: instag`` (release): the example's InsTag tags, ``annotation.instag.content`` as in
MIG's annotated pools (``pool=json`` keeps such fields), filtered to the release's
``configs/valid_tag_path.json`` (``valid_tags``: its path; ``all`` keeps every tag, not the
release). Examples without tags are not selectable (the release drops them) and are counted; the
label set is built from the selectable examples only. Tags are embedded by ``label_model`` with
sentence-transformers, unit length, as the release's ``SimLabelGraph`` (default: its
e5-mistral-7b-instruct; ``null``: all-MiniLM-L6-v2, offline, the substitute of selector=mig_minilm).

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

from ..errors import SelectlabError
from ..texts import example_text
from .diverse import sbert_embeddings, unit_rows
from ..schema.selection import MIG_LABELS as LABEL_SOURCES

log = logging.getLogger(__name__)

VALID_TAGS_MISSING = ("selector.valid_tags has no value: the release keeps only the tags of its configs/valid_tag_path.json "
                      "(4,531 tags, yichengchen24/MIG; not shipped here: the repository states no licence); give its "
                      "path, or selector.valid_tags=all to keep every tag (not the release)")


def instag_labels(records: list[dict], valid_tags: str | None) -> tuple[list[list[str]], np.ndarray]:
    """(tags per record, mask of records that carry an InsTag annotation). As in the release, a
    record without one is dropped, and one whose tags are all outside ``valid_tags`` stays with
    no label (zero gain). ``valid_tags="all"`` keeps every tag."""
    allowed = None
    if valid_tags is None:
        raise SelectlabError(VALID_TAGS_MISSING)
    if valid_tags != "all":
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


def tag_embeddings(tags: list[str], store, cfg: dict) -> tuple[np.ndarray, str]:
    """Unit tag embeddings by ``selector.label_model`` (a sentence-transformers model entry), or by
    all-MiniLM-L6-v2 when it is null; and the model's name."""
    from ..lm.backbone import resolve_model

    entry = cfg.get("label_model")
    model = None
    if entry:
        name = str(entry.get("hub_id") or entry.get("name") or entry.get("path"))
        model = (resolve_model(entry, "selector.label_model", store), name)
    emb = sbert_embeddings(tags, store, int(cfg["batch_size"]), cfg.get("device"), model=model)
    return np.asarray(emb, dtype=np.float64), model[1] if model else "all-MiniLM-L6-v2 (substitute)"


def mig_inputs(records: list[dict], store, cfg: dict, seed: int, usable: np.ndarray | None = None
               ) -> tuple[list[list[int]], np.ndarray, np.ndarray, dict]:
    """(label ids per record, unit label embeddings, mask of records with labels, facts for the meta).
    ``usable``: records the selection may take (a finite quality); only their tags form the label
    set, as the release builds it from the pool it samples from."""
    source = cfg["labels"]
    usable = np.ones(len(records), dtype=bool) if usable is None else np.asarray(usable, dtype=bool)
    if source == "instag":
        tags, annotated = instag_labels(records, cfg.get("valid_tags"))
        names = sorted({t for ts, ok in zip(tags, annotated & usable) if ok for t in ts})  # sorted, as the release
        index = {t: i for i, t in enumerate(names)}
        emb, model = tag_embeddings(names, store, cfg)
        return ([[index[t] for t in ts if t in index] for ts in tags], emb, annotated,
                {"labels": "instag", "n_labels": len(names), "no_instag": int((~annotated).sum()), "label_model": model})
    if source == "clusters":
        label_ids, centroids, n_clusters = cluster_labels(records, store, cfg, seed)
        return (label_ids, centroids, np.ones(len(records), dtype=bool),
                {"labels": "clusters of all-MiniLM-L6-v2 instruction embeddings (substitute)", "n_labels": n_clusters})
    raise SelectlabError(f"selector.labels={source!r}; choose one of {LABEL_SOURCES}")
