"""MIG: label graph and propagation, the greedy with phi on a case worked out by hand, the
pool's annotation fields reaching the scorer, and pipeline runs (annotated pool; offline substitute)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from selectlab.selectors.mig import d_phi, example_label_matrix, label_graph, mig_greedy, propagation_matrix

# Three labels: L0 and L1 have cosine 0.95 (an edge at threshold 0.9), L2 is alone.
LABEL_EMB = np.array([[1.0, 0.0, 0.0], [0.95, math.sqrt(1 - 0.95**2), 0.0], [0.0, 0.0, 1.0]])


def test_graph_and_column_normalised_propagation():
    wam = label_graph(LABEL_EMB, 0.9).toarray()
    assert wam == pytest.approx(np.array([[1, 0.95, 0], [0.95, 1, 0], [0, 0, 1]]))
    assert label_graph(LABEL_EMB, 0.96).toarray() == pytest.approx(np.eye(3))  # 0.95 < threshold: no edge
    prop = propagation_matrix(label_graph(LABEL_EMB, 0.9)).toarray()
    # columns of W divided by their sums (1.95, 1.95, 1)
    assert prop == pytest.approx(np.array([[1 / 1.95, 0.95 / 1.95, 0], [0.95 / 1.95, 1 / 1.95, 0], [0, 0, 1]]))
    half = propagation_matrix(label_graph(LABEL_EMB, 0.9), prop_weight=0.5).toarray()
    assert half[0] == pytest.approx([1 / 1.475, 0.475 / 1.475, 0])


def test_example_vectors_norm_and_duplicate_labels():
    vec = example_label_matrix([[0, 2], [1, 1]], np.array([3.0, 2.0]), 3, norm=False).toarray()
    assert vec.tolist() == [[3, 0, 3], [0, 2, 0]]   # a repeated label is set once, not added
    vec = example_label_matrix([[0, 2], [1, 1]], np.array([3.0, 2.0]), 3, norm=True).toarray()
    assert vec.tolist() == [[1.5, 0, 1.5], [0, 1, 0]]  # norm divides by the listed labels (release)


def test_phi_derivative():
    assert d_phi(np.array([0.0, 3.0]), "pow", 1e-6, 0.8, 1.0) == pytest.approx([0.8 * 1e-6**-0.2, 0.8 * 3**-0.2])
    assert d_phi(np.array([0.0, 2.0]), "exp", 0, 0, 0.5) == pytest.approx([0.5, 0.5 * math.exp(-1)])


def test_greedy_information_gain_worked_by_hand():
    """phi(x) = (x + 1e-6)^0.5, so phi'(x) = 0.5 / sqrt(x + 1e-6) (500 at x = 0).
    Examples (quality, labels) with P from the graph test (p = 1/1.95 = .51282, q = .95/1.95 = .48718):
      e0: 2.0 on L0 -> v_prop (2p, 2q, 0) = (1.02564, 0.97436, 0)
      e1: 2.0 on L1 -> (0.97436, 1.02564, 0)
      e2: 1.5 on L2 -> (0, 0, 1.5)
      e3: 1.8 on L0 -> (0.92308, 0.87692, 0)
    Step 1: phi' = 500 everywhere: gains 1000, 1000, 750, 900 -> e0 (first of the tie).
    Step 2: x = (1.02564, 0.97436, 0), phi' = (0.49372, 0.50654, 500):
      e1: 0.97436*0.49372 + 1.02564*0.50654 = 1.00059; e2: 1.5*500 = 750; e3: 0.89994 -> e2.
    Step 3: phi'(L2) drops to 0.40825; e1 1.00059 > e3 0.89994 -> e1; then e3.
    Top-k by quality would be [e0, e1, e3, e2]: MIG takes the lone L2 example second."""
    prop = propagation_matrix(label_graph(LABEL_EMB, 0.9))
    vec = example_label_matrix([[0], [1], [2], [0]], np.array([2.0, 2.0, 1.5, 1.8]), 3, norm=False)
    picks, gains = mig_greedy(vec @ prop, 4, "pow", a=1e-6, b=0.5)
    assert picks == [0, 2, 1, 3]
    assert gains[:3] == pytest.approx([1000.0, 750.0, 1.00059], rel=1e-4)
    # the release's defaults (b = 0.8) on the same case: phi' is flatter, quality wins longer
    picks, _ = mig_greedy(vec @ prop, 4)
    assert picks[0] == 0
    assert mig_greedy(vec @ prop, 4, selectable=np.array([True, True, False, True]))[0] == [0, 1, 3]


def test_incremental_gains_pick_what_the_full_product_picks():
    """The column-wise gain update equals recomputing v_prop . phi'(x) at every step."""
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(30, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    vec = example_label_matrix([list(rng.choice(30, 3, replace=False)) for _ in range(300)],
                               rng.uniform(1, 5, 300), 30, norm=False) @ propagation_matrix(label_graph(emb, 0.5))
    every_step, _ = mig_greedy(vec, 120, resync_every=1)
    assert mig_greedy(vec, 120, resync_every=10**9)[0] == every_step


def annotated_pool(path, n: int = 12):
    """MIG-style records: InsTag tags and DEITA quality/complexity under ``annotation``."""
    tags = [["python programming", "code"], ["python programming"], ["poetry", "creative writing"],
            ["mathematics"], ["creative writing"], ["mathematics", "algebra"]]
    rows = []
    for i in range(n):
        rows.append({"instruction": f"Task {i}: do thing {i % 6}.", "input": "", "output": f"Answer {i} " * (i + 1),
                     "annotation": {"instag": {"content": tags[i % 6]},
                                    "deita": {"quality_scores": [1.0 + i % 4], "complexity_scores": [2.0]}}})
    rows.append({"instruction": "No annotation here.", "input": "", "output": "ok"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_pool_json_keeps_annotation_fields_and_they_change_the_pool_key(tmp_path):
    from selectlab.stages.scoring import pool_content_key
    from selectlab.pools import load_pool

    rows = annotated_pool(tmp_path / "pool.jsonl")
    pool = load_pool({"name": "json", "loader": "json", "path": str(tmp_path / "pool.jsonl"), "limit": None}, seed=0)
    assert pool.records[0]["annotation"] == rows[0]["annotation"]
    assert "annotation" not in pool.records[-1]
    key = pool_content_key(pool.records)
    pool.records[0]["annotation"]["deita"]["quality_scores"] = [9.0]
    assert pool_content_key(pool.records) != key


def test_pool_json_reads_migs_chat_shape(tmp_path):
    from selectlab.pools import load_pool
    from selectlab.scorers.mig import deita_score

    row = {"dialogs": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                       {"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"}],
           "source": ["synthetic"], "_id": "abc",
           "annotation": {"instag": {"content": ["arithmetic"]},
                          "deita": {"quality_scores": [3.0, 4.0], "complexity_scores": [2.0, 1.5]}}}
    (tmp_path / "chat.jsonl").write_text(json.dumps(row) + "\n")
    rec = load_pool({"name": "json", "loader": "json", "path": str(tmp_path / "chat.jsonl"), "limit": None}, 0).records[0]
    assert (rec["instruction"], rec["output"], rec["_id"]) == ("Add 2 and 3.", "5", "abc")
    assert "dialogs" not in rec and rec["source"] == ["synthetic"]  # the record's own source is kept
    assert deita_score(rec) == (3.0 * 2.0 + 4.0 * 1.5) / 2  # mean over rounds of quality x complexity


def test_mig_on_an_annotated_pool_through_the_pipeline(compose, tmp_path):
    from selectlab.pipeline import run
    from selectlab.scorers.mig import deita_score

    rows = annotated_pool(tmp_path / "pool.jsonl")
    cfg = compose("scorer=mig", "selector=mig_minilm", "selector.valid_tags=all", "pool=json",
                  f"pool.path={tmp_path / 'pool.jsonl'}", "pool.limit=null", "selection.budget=5", "logger=none")
    manifest = run(cfg)
    assert manifest["selector"]["labels"] == "instag"
    assert manifest["counts"]["no_deita_annotation"] == 1
    subset = [json.loads(l) for l in (tmp_path / "run" / "subset.jsonl").read_text().splitlines()]
    assert len(subset) == 5
    from selectlab.pools import content_id

    position = {content_id(r["instruction"], r["input"], r["output"].strip()): i for i, r in enumerate(rows)}
    subset_rows = [rows[position[r["id"]]] for r in subset]  # rows without ids get ids from their text
    assert all(r["score"] == deita_score(row) for r, row in zip(subset, subset_rows))
    assert not any(row["instruction"] == "No annotation here." for row in subset_rows)  # no annotation: not selectable
    # the highest-quality example comes first; then the greedy reaches other tag families
    assert subset[0]["score"] == max(r["score"] for r in subset)
    families = {tuple(row["annotation"]["instag"]["content"]) for row in subset_rows}
    assert len(families) >= 4


def test_mig_offline_substitute_runs_on_the_tiny_model(compose, tiny_model_dir, tmp_path):
    from selectlab.pipeline import run

    cfg = compose("scorer=mig_offline", f"backbone.path={tiny_model_dir}", "pool.limit=40", "selection.budget=8",
                  "logger=none")
    manifest = run(cfg)
    assert manifest["n_selected"] == 8
    assert manifest["selector"]["labels"] == "clusters"
    sel_meta = json.loads(next((tmp_path / "cache" / "subsets").glob("*/meta.json")).read_text())["selection_meta"]
    assert sel_meta["n_labels"] == 10 and "substitute" in sel_meta["labels"]


def test_mig_release_defaults_need_the_valid_tags_and_its_tag_embedder(compose, tmp_path):
    """scorer=mig as released: the valid-tag list is required (not shipped), the tags are embedded by
    e5-mistral-7b-instruct (offline: one error naming selector.label_model), both before any work."""
    from selectlab.errors import SelectlabError
    from selectlab.pipeline import run

    annotated_pool(tmp_path / "pool.jsonl")
    base = ["scorer=mig", "pool=json", f"pool.path={tmp_path / 'pool.jsonl'}", "pool.limit=null", "selection.budget=5",
            "logger=none"]
    assert compose(*base).selector.label_model.hub_id == "intfloat/e5-mistral-7b-instruct"
    with pytest.raises(SelectlabError, match=r"selector.valid_tags has no value: the release keeps only the tags of its "
                                             r"configs/valid_tag_path.json"):
        run(compose(*base))
    with pytest.raises(SelectlabError, match=r"selector.label_model.hub_id=intfloat/e5-mistral-7b-instruct is not in "
                                             r"the local Hugging Face cache"):
        run(compose(*base, "selector.valid_tags=all"))
    assert not (tmp_path / "cache" / "scores").exists()  # nothing computed before the errors


def test_mig_label_set_comes_from_selectable_records_only(tmp_path):
    """A tag carried only by records without a quality (NaN) is not a label: it cannot be selected."""
    from selectlab.selectors.mig_labels import mig_inputs
    from selectlab.infra.store import ArtifactStore

    recs = [{"instruction": f"i{n}", "input": "", "output": "o", "annotation": {"instag": {"content": tags}}}
            for n, tags in enumerate([["math", "code"], ["code"], ["poetry"]])]
    cfg = {"labels": "instag", "valid_tags": "all", "label_model": None, "batch_size": 8}
    ids, emb, labelled, facts = mig_inputs(recs, ArtifactStore(tmp_path / "c"), cfg, 0, np.array([True, True, False]))
    assert facts["n_labels"] == 2 and ids == [[1, 0], [0], []] and labelled.all() and emb.shape == (2, 384)
