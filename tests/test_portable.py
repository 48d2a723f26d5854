"""Run records that travel: committed evidence, notebooks and tests name no machine's paths, and
the records a run writes resolve on another machine (selectlab.infra.paths.portable / localize)."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from analysis.portable import absolute_paths, rewrite_folder
from selectlab.infra.paths import localize, portable, run_places

REPO = Path(__file__).resolve().parents[1]
# A user's home or a work/scratch folder: never in a tracked file outside documented examples.
MACHINE = re.compile(r"(?<![\w.:-])/(?:work|home|Users|root|scratch)/\w")


def tracked(*folders: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", *folders], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [REPO / p for p in out.splitlines() if (REPO / p).is_file()]


def test_places_round_trip_to_the_readers_machine(tmp_path):
    writer = {"run": Path("/w1/runs/r0"), "cache": Path("/w1/.cache"), "data": Path("/w1/shared/data")}
    record = {"run_dir": "/w1/runs/r0", "subset_path": "/w1/runs/r0/subset.jsonl",
              "rows": [{"model": "/w1/.cache/checkpoints/ab12"}], "pool": {"path": "/w1/shared/data/pools/a"},
              "override": "hydra.sweep.dir=/w1/runs/r0", "other": "/w1/.cachex/keep", "text": "data: kept as is"}
    written = portable(record, writer)
    assert written["run_dir"] == "run:" and written["subset_path"] == "run:subset.jsonl"
    assert written["rows"][0]["model"] == "cache:checkpoints/ab12" and written["pool"]["path"] == "data:pools/a"
    assert written["other"] == "/w1/.cachex/keep"  # a sibling whose name starts like a root is no place
    reader = {"run": tmp_path / "r", "cache": tmp_path / "c", "data": tmp_path / "d"}
    read = localize(written, reader)
    assert read["subset_path"] == str(tmp_path / "r" / "subset.jsonl")
    assert read["rows"][0]["model"] == str(tmp_path / "c" / "checkpoints" / "ab12")
    assert read["pool"]["path"] == str(tmp_path / "d" / "pools" / "a") and read["text"] == "data: kept as is"


def test_rewrite_script_makes_a_run_folder_portable_once(tmp_path):
    run = tmp_path / "sweep" / "0_job"
    run.mkdir(parents=True)
    places = run_places(run, tmp_path / "cache")
    manifest = {"run_dir": str(run), "config": {"cache_dir": str(tmp_path / "cache"),
                                                "pool": {"path": str(places["data"] / "pools" / "alpaca_52k")}},
                "subset_path": str(run / "subset.jsonl")}
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "results.json").write_text(json.dumps({"rows": [{"label": "random", "model": str(tmp_path / "cache" / "x")}]}))
    assert len(rewrite_folder(tmp_path / "sweep", places["data"])) == 2
    assert rewrite_folder(tmp_path / "sweep", places["data"]) == []  # idempotent
    text = (run / "manifest.json").read_text() + (run / "results.json").read_text()
    assert str(tmp_path) not in text and "data:pools/alpaca_52k" in text and "cache:x" in text


def test_committed_evidence_and_notebooks_name_no_absolute_path():
    files = tracked("analysis/evidence", "notebooks")
    assert files
    found = [(p.relative_to(REPO), hit) for p in files if p.suffix in (".json", ".yaml", ".ipynb", ".jsonl", ".md")
             for hit in absolute_paths(p.read_text(errors="replace"))]
    assert not found, f"absolute machine paths (run python -m analysis.portable on the folder): {found[:5]}"


def test_no_tracked_source_hard_codes_a_machine_folder():
    files = [p for p in tracked("src", "tests", "conf", "analysis", "bench", "notebooks")
             if p.suffix in (".py", ".yaml", ".ipynb", ".json", ".md")]
    found = [(p.relative_to(REPO), m.group(0)) for p in files if p != Path(__file__).resolve()
             for m in MACHINE.finditer(p.read_text(errors="replace"))]
    assert not found, f"hard-coded machine paths: {found[:5]}"
