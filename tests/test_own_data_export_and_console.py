"""Your own data: a file scored whole, stable ids, duplicates, extra fields,
the pool.path mistake, export, a quiet console with a summary."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from selectlab.errors import SelectlabError
from selectlab.pools import PoolError, content_id, load_pool
from selectlab.infra.store import read_jsonl

REPO = Path(__file__).resolve().parents[1]


def _rows(n: int, **extra) -> list[dict]:
    """n distinct Alpaca-shape rows (no ids), each with the given extra fields."""
    return [{"instruction": f"Explain idea number {i}.", "input": "" if i % 3 else f"context {i}",
             "output": "because " * (1 + i % 7) + str(i), **extra} for i in range(n)]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _json_pool(compose, path: Path, *overrides):
    from selectlab.config import plain

    cfg = compose("pool=json", f"pool.path={path}", *overrides)
    return load_pool(plain(cfg.pool), seed=int(cfg.seed))


def _run(compose, *overrides):
    from selectlab.pipeline import run

    return run(compose("scorer=random", "logger=none", *overrides))


# ---------------------------------------------------------------- your data by default
def test_a_user_file_of_100_rows_is_scored_whole_by_default(compose, tmp_path):
    path = _write(tmp_path / "mine.jsonl", _rows(100))
    manifest = _run(compose, "pool=json", f"pool.path={path}")
    assert manifest["pool"]["n"] == manifest["pool"]["n_total"] == 100
    assert manifest["n_selected"] == 8 and len(read_jsonl(Path(manifest["subset_path"]))) == 8


def test_the_demo_slice_is_only_the_documented_demo(compose, tmp_path):
    assert compose("pool=alpaca").pool.limit == 32          # shipped pool, embedded backbone: the demo
    assert compose("pool=lima").pool.limit == 32
    assert compose("pool=alpaca", "backbone=llama3_8b").pool.limit is None   # another backbone: whole
    assert compose("pool=alpaca", "pool.limit=null").pool.limit is None      # explicit null wins
    assert compose("pool=alpaca", "pool.limit=100").pool.limit == 100
    assert compose("pool=alpaca_gpt4").pool.limit is None                    # not shipped
    assert compose("experiment=sweep_cpu_replication").pool.limit == 200           # a preset's own limit
    path = _write(tmp_path / "mine.jsonl", _rows(3))
    assert compose("pool=json", f"pool.path={path}").pool.limit is None
    assert compose("pool=json", f"pool.path={path}", "pool.limit=2").pool.limit == 2


def test_the_demo_slice_is_announced_once(compose, caplog):
    caplog.set_level(logging.INFO, logger="selectlab")
    _run(compose, "pool=alpaca")
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("using a")]
    assert said == ["using a 32-example slice of alpaca (the CPU demo); pool.limit=null for all 52,002"]


@pytest.mark.parametrize("pool, fix", [("alpaca", "reads only its shipped copy"), ("lima", "reads only its shipped copy"),
                                       ("alpaca_gpt4", "ignores pool.path")])
def test_pool_path_with_a_shipped_pool_names_the_fix(compose, tmp_path, pool, fix):
    path = _write(tmp_path / "mine.jsonl", _rows(5))
    with pytest.raises(SelectlabError, match=f"{fix}.*use pool=json pool.path={re.escape(str(path))}"):
        _run(compose, f"pool={pool}", f"pool.path={path}")
    assert not (tmp_path / "run" / "subset.jsonl").exists()


# ---------------------------------------------------------------- ids and duplicates
def test_inserting_a_row_keeps_every_other_id(compose, tmp_path):
    rows = _rows(10)
    rows[4]["id"] = "my-own-4"  # a row's own id is kept as it is
    before = _json_pool(compose, _write(tmp_path / "a.jsonl", rows)).records
    inserted = rows[:2] + [{"instruction": "A new row.", "input": "", "output": "New."}] + rows[2:]
    after = _json_pool(compose, _write(tmp_path / "b.jsonl", inserted)).records
    by_text = {r["instruction"]: r["id"] for r in after}
    assert all(by_text[r["instruction"]] == r["id"] for r in before)
    assert before[4]["id"] == "my-own-4"
    assert before[0]["id"] == content_id("Explain idea number 0.", "context 0", "because 0")
    assert re.fullmatch(r"user-[0-9a-f]{12}", before[1]["id"])


def test_duplicates_are_reported_and_dropped_by_default(compose, tmp_path, caplog):
    rows = _rows(6)
    rows += [dict(rows[1]), dict(rows[1]), {**rows[3], "id": "copy-of-3"}]  # 3 repeats: two of row 1, one of row 3
    path = _write(tmp_path / "dups.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="selectlab"):
        pool = _json_pool(compose, path)
    first = content_id(rows[1]["instruction"], rows[1]["input"], rows[1]["output"])
    assert [r["id"] for r in pool.records] == [r["id"] for r in _json_pool(compose, _write(tmp_path / "u.jsonl", rows[:6])).records]
    assert pool.duplicate_ids == [f"{first}-2", f"{first}-3", "copy-of-3"] and pool.n_total == 9
    assert f"3 records repeat an earlier record exactly" in caplog.text and f"{first}-2 (= {first})" in caplog.text
    kept = _json_pool(compose, path, "pool.duplicates=keep")
    assert len(kept.records) == 9 and kept.duplicate_ids == pool.duplicate_ids
    with pytest.raises(PoolError, match="3 records repeat.*pool.duplicates=drop"):
        _json_pool(compose, path, "pool.duplicates=error")
    manifest = _run(compose, "pool=json", f"pool.path={path}")
    assert manifest["pool"]["n"] == 6 and manifest["counts"]["duplicates"] == 3
    with pytest.raises(SelectlabError, match="pool.duplicates='twice': choose one of drop, keep, error"):
        _run(compose, "pool=json", f"pool.path={path}", "pool.duplicates=twice")


# ---------------------------------------------------------------- extra fields
def test_extra_fields_survive_into_the_subset_and_do_not_leak_between_cached_runs(compose, tmp_path):
    rows = [{**r, "tags": [f"t{i % 2}"], "scores": {"quality": i}, "source": "lab-A"} for i, r in enumerate(_rows(20))]
    first = _run(compose, "pool=json", f"pool.path={_write(tmp_path / 'a.jsonl', rows)}", f"run_dir={tmp_path / 'r1'}")
    subset = read_jsonl(Path(first["subset_path"]))
    by_text = {r["instruction"]: r for r in rows}
    assert all(s["tags"] == by_text[s["instruction"]]["tags"] and s["scores"] == by_text[s["instruction"]]["scores"]
               and s["source"] == "lab-A" for s in subset)
    # the same texts from another lab: same pool key (the texts), so every artifact is reused...
    relabelled = [{**r, "source": "lab-B"} for r in rows]
    second = _run(compose, "pool=json", f"pool.path={_write(tmp_path / 'b.jsonl', relabelled)}", f"run_dir={tmp_path / 'r2'}")
    assert second["artifacts"] == first["artifacts"] and all(s["reused"] for s in second["stages"])
    again = read_jsonl(Path(second["subset_path"]))
    assert [s["id"] for s in again] == [s["id"] for s in subset]
    assert {s["source"] for s in again} == {"lab-B"}  # ...yet the records are this file's
    # changed tags are part of the pool's key: a new artifact
    retagged = [{**r, "tags": ["other"]} for r in rows]
    third = _run(compose, "pool=json", f"pool.path={_write(tmp_path / 'c.jsonl', retagged)}", f"run_dir={tmp_path / 'r3'}")
    assert third["pool"]["key"] != first["pool"]["key"]


# ---------------------------------------------------------------- export
def test_the_export_folder_loads_and_equals_subset_jsonl(compose, tmp_path):
    import datasets

    rows = [{**r, "tags": ["a", "b"]} for r in _rows(30)]
    manifest = _run(compose, "pool=json", f"pool.path={_write(tmp_path / 'mine.jsonl', rows)}",
                    "export.formats=[jsonl,hf,parquet,llamafactory]")
    run_dir = Path(manifest["run_dir"])
    subset = read_jsonl(run_dir / "subset.jsonl")
    assert datasets.load_from_disk(str(run_dir / "export/hf/subset")).to_list() == subset
    parquet = datasets.load_dataset("parquet", data_files=str(run_dir / "export/parquet/subset.parquet"), split="train")
    assert parquet.to_list() == subset
    info = json.loads((run_dir / "export/llamafactory/dataset_info.json").read_text())
    assert info == {"selectlab_subset": {"file_name": "subset.json", "formatting": "alpaca",
                                         "columns": {"prompt": "instruction", "query": "input", "response": "output"}}}
    alpaca = json.loads((run_dir / "export/llamafactory/subset.json").read_text())
    assert alpaca == [{"instruction": r["instruction"], "input": r["input"], "output": r["output"]} for r in subset]


def test_export_options_are_checked_before_any_work(compose, tmp_path, monkeypatch):
    path = _write(tmp_path / "mine.jsonl", _rows(5))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SelectlabError, match="export.push_to_hub=me/subset .* offline"):
        _run(compose, "pool=json", f"pool.path={path}", "export.push_to_hub=me/subset")
    with pytest.raises(SelectlabError, match=r"export.formats: unknown \['csv'\]"):
        _run(compose, "pool=json", f"pool.path={path}", "export.formats=[csv]")
    assert not (tmp_path / "run" / "subset.jsonl").exists() and not (tmp_path / "cache" / "scores").exists()


# ---------------------------------------------------------------- console, bars, summary
def test_the_summary_says_what_was_chosen_and_where_things_are(compose, tmp_path, caplog):
    from selectlab.outputs.summary import summary_lines

    rows = _rows(40)
    rows.append(dict(rows[0]))
    with caplog.at_level(logging.INFO, logger="selectlab"):
        manifest = _run(compose, "pool=json", f"pool.path={_write(tmp_path / 'mine.jsonl', rows)}")
    lines = summary_lines(manifest)
    subset = read_jsonl(Path(manifest["subset_path"]))
    best = sorted(subset, key=lambda r: -r["score"])[:3]
    assert lines[0] == "pool      json: 40 of 41 examples scored"
    assert lines[1] == f"selected  8 -> {manifest['subset_path']}"
    assert lines[2] == f"top       {best[0]['score']:.4g}  {best[0]['instruction']}"
    assert [line.split()[0] for line in lines[3:4]] == [f"{best[1]['score']:.4g}"]
    assert "counts    duplicates 1" in lines                               # zero counts are left out
    assert any(line.startswith("stages    random_scores ") and "scores " in line for line in lines)
    assert f"manifest  {Path(manifest['run_dir']) / 'manifest.json'}" in lines
    assert "summary\n  pool      json: 40 of 41" in caplog.text


def test_stage_bar_counts_items(tmp_path, capsys):
    import numpy as np

    from selectlab.infra.store import ArtifactStore

    ArtifactStore(tmp_path).batched("squares", "k", list(range(10)), 4, lambda b: np.array([[x * x] for x in b]))
    err = capsys.readouterr().err
    assert "squares" in err and "10/10" in err


def test_console_filter_keeps_selectlab_info_and_every_warning():
    from selectlab.outputs.console import ConsoleFilter

    def passes(name, level):
        return ConsoleFilter().filter(logging.LogRecord(name, level, __file__, 1, "m", None, None))

    assert passes("selectlab.pipeline", logging.INFO) and passes("__main__", logging.INFO)
    assert not passes("selectlab.infra.store", logging.INFO)  # bookkeeping: run.log only
    assert not passes("vllm.engine", logging.INFO) and not passes("httpx", logging.INFO)
    assert passes("vllm.engine", logging.WARNING) and passes("lm_eval", logging.ERROR)


def test_vllm_logging_config_sends_its_lines_to_run_log_and_errors_to_stderr(tmp_path):
    """The config route_engine_logs hands vLLM, applied as vLLM applies it (logging.config.dictConfig)."""
    from selectlab.outputs.console import engine_warnings

    env = {k: v for k, v in os.environ.items()
           if k not in ("VLLM_LOGGING_CONFIG_PATH", "VLLM_CONFIGURE_LOGGING", "VLLM_LOGGING_LEVEL")}
    code = ("import json, logging.config, os, sys; sys.path.insert(0, 'src');"
            "from selectlab.outputs.console import route_engine_logs; route_engine_logs(sys.argv[1]);"
            "logging.config.dictConfig(json.load(open(os.environ['VLLM_LOGGING_CONFIG_PATH'])));"
            "logging.getLogger('vllm.engine').info('engine info'); logging.getLogger('vllm.engine').warning('engine warn');"
            "logging.getLogger('vllm.engine').error('engine error')")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "run.log").read_text()
    assert "engine info" in log and "engine warn" in log and "engine error" in log
    assert "engine info" not in proc.stderr + proc.stdout and "engine warn" not in proc.stderr  # run.log only
    assert "engine error" in proc.stderr
    assert engine_warnings(tmp_path / "run.log") == 1  # the summary's count


def test_cli_console_is_short_and_run_log_is_full(tmp_path):
    path = _write(tmp_path / "mine.jsonl", _rows(100))
    env = {**os.environ, "SELECTLAB_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "src/run.py"), "scorer=random", "pool=json", f"pool.path={path}",
                           "logger=none", "export.formats=[hf]", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = (proc.stdout + proc.stderr).splitlines()
    assert len(console) <= 20, console
    assert any("summary" in line for line in console) and any(line.startswith("  selected  8 ->") for line in console)
    assert not any("built artifact" in line for line in console)
    log = (tmp_path / "run" / "run.log").read_text()
    assert re.search(r"random_scores/\w+: batch 1/1 done", log) and "built artifact scores/" in log
    assert "[selectlab.outputs.summary][INFO] - summary" in log
