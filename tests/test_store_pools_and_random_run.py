"""The artifact store, pools, configs, random selection end to end, W&B logging."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from selectlab.lm.backbone import BackboneError, resolve_backbone
from selectlab.pools import PoolError, content_id, load_pool
from selectlab.infra.store import ArtifactStore, read_jsonl
from selectlab.outputs.wandb_offline import find_runs, read_run

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- artifact store
def test_store_key_ignores_dict_order_and_tracks_version():
    a = ArtifactStore.key("s", 1, x={"a": 1, "b": 2}, y=[1, 2])
    assert a == ArtifactStore.key("s", 1, y=[1, 2], x={"b": 2, "a": 1})
    assert a != ArtifactStore.key("s", 2, x={"a": 1, "b": 2}, y=[1, 2])


def test_store_build_is_atomic_and_reused(tmp_path):
    store = ArtifactStore(tmp_path)
    calls = []

    def make(tmp):
        calls.append(1)
        (tmp / "out.txt").write_text("x")
        raise RuntimeError("killed mid-stage")

    with pytest.raises(RuntimeError):
        store.build("stage", "k1", make)
    assert not store.exists("stage", "k1")
    assert not list((tmp_path / "stage").iterdir()), "a failed build leaves nothing behind"
    store.build("stage", "k1", lambda tmp: (tmp / "out.txt").write_text("y") and None)
    store.build("stage", "k1", make)  # reused: make is not called again
    assert len(calls) == 1
    assert (store.path("stage", "k1") / "out.txt").read_text() == "y"
    assert [e.reused for e in store.events] == [False, True]


def test_store_batched_resumes_after_a_kill(tmp_path):
    store = ArtifactStore(tmp_path)
    computed: list[int] = []

    def compute(batch, fail_at=None):
        if fail_at is not None and batch[0] == fail_at:
            raise KeyboardInterrupt
        computed.extend(batch)
        return [{"x": x, "sq": x * x} for x in batch]

    items = list(range(10))
    with pytest.raises(KeyboardInterrupt):
        store.batched("sq", "k", items, 3, lambda b: compute(b, fail_at=6))
    assert computed == [0, 1, 2, 3, 4, 5]
    computed.clear()
    folder = store.batched("sq", "k", items, 3, compute)
    assert computed == [6, 7, 8, 9], "finished batches are not redone"
    assert [r["sq"] for r in read_jsonl(folder / "records.jsonl")] == [x * x for x in items]
    assert store.events[-1].batches_reused == 2 and store.events[-1].batches_computed == 2


def test_store_batched_arrays(tmp_path):
    store = ArtifactStore(tmp_path)
    folder = store.batched("emb", "k", list(range(5)), 2, lambda b: np.array([[x, -x] for x in b], dtype=np.float32))
    arr = np.load(folder / "array.npy")
    assert arr.shape == (5, 2) and arr[4, 1] == -4


# ---------------------------------------------------------------- pools
def _pool(compose, *overrides):
    from selectlab.config import plain

    cfg = compose(*overrides)
    return load_pool(plain(cfg.pool), seed=int(cfg.seed))


@pytest.mark.parametrize(
    "pool, n, first_id",
    [("alpaca", 52002, "alpaca-00000"), ("cot", 33442, "cot-aqua-00000"),  # cot: 33,443 rows, one exact repeat dropped ("lima", 1029, "lima-00000"),
     ("code_alpaca", 2017, "code_alpaca-00000"), ("self_instruct_seed", 175, "seed_task_0")],
)
def test_shipped_pools_load_whole(compose, pool, n, first_id):
    p = _pool(compose, f"pool={pool}", "pool.limit=null")
    assert len(p.records) == n and p.records[0]["id"] == first_id
    assert set(p.records[0]) == {"id", "instruction", "input", "output", "source"}


def test_alpaca_ids_follow_the_original_row_order(compose):
    p = _pool(compose, "pool=alpaca", "pool.limit=null")
    assert p.records[0]["instruction"] == "Give three tips for staying healthy."
    # part 17 starts at original row 51009
    part17 = json.loads(next((REPO.parent / "shared/data/pools/alpaca_52k").glob("*part17*")).read_text())
    assert p.records[51009]["id"] == "alpaca-51009" and p.records[51009]["output"] == part17[0]["output"].strip()


def test_pool_limit_is_a_seeded_sample(compose):
    a = [r["id"] for r in _pool(compose, "pool.limit=20", "seed=1").records]
    b = [r["id"] for r in _pool(compose, "pool.limit=20", "seed=1").records]
    c = [r["id"] for r in _pool(compose, "pool.limit=20", "seed=2").records]
    assert a == b and a != c and len(a) == 20 and a == sorted(a)


def test_cot_unescapes_newlines_and_formats_the_answer(compose):
    rec = _pool(compose, "pool=cot", "pool.limit=null").records[0]
    assert "\\n" not in rec["instruction"] and "\n" in rec["instruction"]
    assert rec["output"].endswith("So the answer is (C).") or "So the answer is" in rec["output"]


def test_hub_pool_offline_fails_clearly(compose):
    with pytest.raises(PoolError, match="hub-backed .*offline.*pool.path"):
        _pool(compose, "pool=alpaca_gpt4")


def test_malformed_jsonl_names_file_and_line(compose, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n')
    with pytest.raises(PoolError, match=rf"{bad}:2: malformed JSON"):
        _pool(compose, "pool=json", f"pool.path={bad}")


def test_malformed_json_array_names_file_and_line(compose, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]\n')
    with pytest.raises(PoolError, match=rf"{bad}:3: malformed JSON"):
        _pool(compose, "pool=json", f"pool.path={bad}")


def test_record_without_output_names_its_line(compose, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c",\n   "answer": "d"}\n]\n')
    with pytest.raises(PoolError, match=rf"{bad}:3: record has neither 'output'"):
        _pool(compose, "pool=json", f"pool.path={bad}")


def test_empty_instructions_are_reported_not_silently_dropped(compose, tmp_path, caplog):
    f = tmp_path / "dolly.jsonl"
    rows = [{"instruction": "q1", "context": "", "response": "r1", "category": "open_qa"},
            {"instruction": "  ", "context": "", "response": "r2", "category": "open_qa"},
            {"instruction": "q3", "context": "c3", "response": "r3", "category": "closed_qa"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = _pool(compose, "pool=json", f"pool.path={f}")
    ids = [content_id("q1", "", "r1"), content_id("", "", "r2"), content_id("q3", "c3", "r3")]  # ids from the text
    assert [r["id"] for r in p.records] == [ids[0], ids[2]]
    assert p.empty_instruction_ids == [ids[1]] and p.n_total == 3
    assert p.records[1] == {"id": ids[2], "instruction": "q3", "input": "c3", "output": "r3", "source": "closed_qa"}
    assert f"1 records have an empty instruction: ['{ids[1]}']" in caplog.text
    with pytest.raises(PoolError, match="empty instruction"):
        _pool(compose, "pool=json", f"pool.path={f}", "pool.empty_instruction=error")


# ---------------------------------------------------------------- backbones
def test_uncached_hub_backbone_names_backbone_path(compose, tmp_path):
    from selectlab.config import plain

    cfg = compose("backbone=llama3_8b_instruct")
    with pytest.raises(BackboneError, match="backbone.path"):
        resolve_backbone(plain(cfg.backbone), ArtifactStore(tmp_path))


def test_backbone_path_must_be_a_model_folder(tmp_path):
    with pytest.raises(BackboneError, match="backbone.path=.*no config.json"):
        resolve_backbone({"name": "x", "path": str(tmp_path)}, ArtifactStore(tmp_path))


# ---------------------------------------------------------------- end to end (random)
def test_random_selection_end_to_end_logs_to_wandb(compose):
    from selectlab.pipeline import run

    cfg = compose("scorer=random", "pool=alpaca", "selection.budget=50", "pool.limit=300", "scorer.batch_size=64")
    manifest = run(cfg)
    run_dir = Path(cfg.run_dir)
    subset = read_jsonl(run_dir / "subset.jsonl")
    assert len(subset) == 50 == manifest["n_selected"]
    assert [r["rank"] for r in subset] == list(range(50))
    scores = [r["score"] for r in subset]
    assert scores == sorted(scores, reverse=True)
    assert {"id", "instruction", "input", "output"} <= set(subset[0])

    (wandb_run,) = find_runs(run_dir / "wandb")
    logged = read_run(wandb_run)
    assert logged.config["seed"] == 42 and logged.config["scorer"]["name"] == "random"
    assert logged.summary["n_selected"] == 50 and logged.summary["n_pool"] == 300
    table = logged.tables["subset"]
    assert [row[0] for row in table["data"]] == [r["id"] for r in subset]
    assert len(logged.tables["scores"]["data"]) == 300
    assert sum(logged.summary["hist/score/values"]) == 300
    assert f"subset-{manifest['artifacts']['subset']}" in logged.artifacts
    saved = json.loads((run_dir / "manifest.json").read_text())
    assert saved["artifacts"] == manifest["artifacts"] and saved["packages"]["torch"]


def test_second_run_reuses_artifacts_and_yields_the_same_subset(compose, monkeypatch):
    from selectlab import pipeline
    from selectlab.scorers import random as random_scorer

    overrides = ("scorer=random", "selection.budget=50", "pool.limit=400", "scorer.batch_size=100", "logger=none")
    calls = {"n": 0}
    real = random_scorer.uniform_from_id

    def dying(seed, example_id):
        calls["n"] += 1
        if calls["n"] > 250:
            raise KeyboardInterrupt("killed")
        return real(seed, example_id)

    monkeypatch.setattr(random_scorer, "uniform_from_id", dying)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(compose(*overrides))
    monkeypatch.setattr(random_scorer, "uniform_from_id", real)
    first = pipeline.run(compose(*overrides))
    random_stage = next(s for s in first["stages"] if s["stage"] == "random_scores")
    assert (random_stage["batches_reused"], random_stage["batches_computed"]) == (2, 2)
    subset1 = read_jsonl(Path(first["subset_path"]))
    second = pipeline.run(compose(*overrides))
    assert all(s["reused"] for s in second["stages"])
    assert read_jsonl(Path(second["subset_path"])) == subset1


def test_budget_as_fraction_and_bad_budget(compose):
    from selectlab.pipeline import run

    assert run(compose("selection.budget=0.25", "pool.limit=40", "logger=none"))["n_selected"] == 10
    with pytest.raises(ValueError, match="selection.budget"):
        run(compose("selection.budget=0", "pool.limit=40", "logger=none"))


def test_cli_malformed_pool_exits_nonzero_with_file_and_line(tmp_path):
    bad = tmp_path / "pool.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\nnot json\n')
    env = {**os.environ, "SELECTLAB_CACHE": str(tmp_path / "cache"), "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "src/run.py"), "pool=json", f"pool.path={bad}", "logger=none",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert f"{bad}:2: malformed JSON line" in proc.stderr
    assert not (tmp_path / "run" / "subset.jsonl").exists()
    assert not list((tmp_path / "cache").glob("subsets/*")) if (tmp_path / "cache").exists() else True


@pytest.mark.slow
def test_sharded_runs_merge_into_the_unsharded_artifact(compose, tmp_path, monkeypatch):
    from selectlab.pipeline import run

    base = ("scorer=random", "pool.limit=200", "scorer.batch_size=30", "logger=none", "selection.budget=20")
    unsharded = run(compose(*base))
    unsharded_scores = (tmp_path / "cache/scores" / unsharded["artifacts"]["scores"] / "scores.jsonl").read_bytes()

    monkeypatch.setenv("SELECTLAB_CACHE", str(tmp_path / "cache_sharded"))
    first = run(compose(*base, "shard.index=0", "shard.count=2"))
    assert first["shard_incomplete"]["present"] == 4 and first["shard_incomplete"]["total"] == 7
    second = run(compose(*base, "shard.index=1", "shard.count=2"))  # finds every batch: merges and selects
    assert "shard_incomplete" not in second
    assert second["artifacts"] == unsharded["artifacts"]
    merged = (tmp_path / "cache_sharded/scores" / second["artifacts"]["scores"] / "scores.jsonl").read_bytes()
    assert merged == unsharded_scores


def test_artifact_without_integrity_records_is_checked_once_then_recorded(tmp_path, caplog):
    """An artifact written before meta.json recorded its files: read whole, then its records are
    written (so later reuses check sizes and rows); a damaged one is moved aside and rebuilt."""
    import logging

    store = ArtifactStore(tmp_path / "cache")

    def make(tmp):
        (tmp / "rows.jsonl").write_text('{"a": 1}\n{"a": 2}\n')
        np.save(tmp / "x.npy", np.arange(1000.0))

    for key in ("old", "old_damaged"):
        folder = store.build("stage", key, make)
        meta = json.loads((folder / "meta.json").read_text())
        del meta["files"]
        (folder / "meta.json").write_text(json.dumps(meta))
    with open(store.path("stage", "old_damaged") / "x.npy", "r+b") as f:
        f.truncate(500)

    fresh = ArtifactStore(tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="selectlab.infra.store"):
        assert fresh.reusable("stage", "old")
        assert not fresh.reusable("stage", "old_damaged")
    files = json.loads((fresh.path("stage", "old") / "meta.json").read_text())["files"]
    assert files["rows.jsonl"]["rows"] == 2 and files["x.npy"]["bytes"] > 8000
    assert "had no integrity records" in caplog.text and "x.npy does not read whole" in caplog.text
    assert not fresh.exists("stage", "old_damaged")
    with open(fresh.path("stage", "old") / "rows.jsonl", "a") as f:  # now recorded: a change is seen
        f.write('{"a": 3}\n')
    assert not ArtifactStore(tmp_path / "cache").reusable("stage", "old")


def test_the_embedded_backbone_converted_at_install_is_linked_into_a_fresh_store(tmp_path, monkeypatch):
    """make venv converts the shipped GGUF into the environment; a fresh store links that conversion
    (no second conversion) under the store key it always had, so no artifact key moves; a
    half-written conversion (no done marker) is not used."""
    from selectlab.config import plain, preset
    from selectlab.infra.store import ArtifactStore
    from selectlab.lm import backbone

    cfg = plain(preset("backbone", "smollm2_135m"))
    gguf = backbone._package_dir(cfg["gguf_package"], "backbone", backbone.BackboneError) / cfg["gguf_file"]
    monkeypatch.setattr(backbone.sys, "prefix", str(tmp_path / "venv"))
    monkeypatch.setattr(backbone, "_convert_gguf", lambda *a: pytest.fail("converted again"))
    folder = backbone.installed_folder(gguf)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    store = ArtifactStore(tmp_path / "store")
    assert backbone.installed_conversion(gguf) is None  # no done marker: not a finished conversion
    (folder / "safetensors.done").write_text("")
    assert "linked into backbone/" in backbone.locate_model(cfg, store=store).note
    got = backbone.resolve_model(cfg, store=store)
    assert got == str(store.path("backbone", backbone.conversion_key(gguf)))
    assert (Path(got) / "config.json").stat().st_ino == (folder / "config.json").stat().st_ino
    assert backbone.locate_model(cfg, store=store).folder == got
