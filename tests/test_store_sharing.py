"""A store many jobs can share (issue 14): concurrent jobs split the batches, a killed job's
locks are taken over, scratch of dead jobs is collected; damaged artifacts and batches are
reported and rebuilt; a killed run leaves no process behind."""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from selectlab.infra.store import ArtifactStore, read_jsonl

REPO = Path(__file__).resolve().parents[1]
DONE = re.compile(r"(\S+): batch (\d+)/(\d+) done")

# One job: waits for the go file (so jobs start together), then squares 0..n-1 in batches of 4,
# each batch taking SECONDS; prints its events as JSON. kind=array|rows picks the artifact file.
JOB = textwrap.dedent("""
    import dataclasses, json, logging, sys, time
    from pathlib import Path
    import numpy as np
    from selectlab.infra.store import ArtifactStore

    root, go, kind, n, seconds = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    go.with_name(go.name + f".ready{sys.argv[6]}").touch()
    while not go.exists():
        time.sleep(0.01)

    def compute(batch):
        time.sleep(seconds if batch[0] else float(sys.argv[7]))  # argv[7]: the first batch's time
        if kind == "array":
            return np.array([[x, x * x] for x in batch], dtype=np.int64)
        return [{"x": x, "sq": x * x} for x in batch]

    store = ArtifactStore(root)
    folder = store.batched("squares", "k1", list(range(n)), 4, compute)
    print(json.dumps({"folder": str(folder), "events": [dataclasses.asdict(e) for e in store.events]}))
""")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


def _start_jobs(tmp_path, count: int, kind: str, n: int, seconds: float, first_batch_s: float | None = None,
                go_now: bool = True) -> list[subprocess.Popen]:
    go = tmp_path / "go"
    jobs = [subprocess.Popen([sys.executable, "-c", JOB, str(tmp_path / "cache"), str(go), kind, str(n), str(seconds),
                              str(i), str(seconds if first_batch_s is None else first_batch_s)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
            for i in range(count)]
    deadline = time.time() + 120
    while not all(go.with_name(f"go.ready{i}").exists() for i in range(count)):
        assert time.time() < deadline and all(j.poll() is None for j in jobs), "jobs did not start"
        time.sleep(0.05)
    if go_now:
        go.touch()
    return jobs


def _finish(job: subprocess.Popen) -> tuple[dict, str]:
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), err


def _done_batches(log: str) -> list[int]:
    return [int(m.group(2)) for m in DONE.finditer(log)]


# ---------------------------------------------------------------- sharing
@pytest.mark.parametrize("kind", ["array", "rows"])
def test_two_processes_split_the_batches_and_agree(tmp_path, kind):
    """40 items in batches of 4: 10 batches, each computed exactly once over both jobs."""
    jobs = _start_jobs(tmp_path, 2, kind, n=40, seconds=0.3)
    (a, log_a), (b, log_b) = _finish(jobs[0]), _finish(jobs[1])
    done_a, done_b = _done_batches(log_a), _done_batches(log_b)
    assert sorted(done_a + done_b) == list(range(1, 11)), "every batch computed once, none twice"
    assert done_a and done_b, "both jobs took a share"
    assert a["folder"] == b["folder"]
    assert sum(e["batches_computed"] for e in a["events"] + b["events"]) == 10
    folder = Path(a["folder"])
    if kind == "array":
        assert np.load(folder / "array.npy").tolist() == [[x, x * x] for x in range(40)]
    else:
        assert [r["sq"] for r in read_jsonl(folder / "records.jsonl")] == [x * x for x in range(40)]
    stage = tmp_path / "cache" / "squares"
    assert sorted(p.name for p in stage.iterdir()) == ["k1"], "no .partial or .tmp- left behind"


def test_killed_jobs_batch_lock_is_taken_over(tmp_path):
    """Job A hangs in batch 1 of 3 and is killed; job B computes batches 2-3, waits for 1, then takes it over."""
    (tmp_path / "a").mkdir()
    a = _start_jobs(tmp_path / "a", 1, "array", n=12, seconds=0.0, first_batch_s=1000)[0]
    (tmp_path / "b").mkdir()
    os.symlink(tmp_path / "a" / "cache", tmp_path / "b" / "cache")  # one cache
    time.sleep(1.0)  # A holds batch 1's lock now
    b = _start_jobs(tmp_path / "b", 1, "array", n=12, seconds=0.0)[0]
    deadline = time.time() + 60
    log_b = ""
    while "waiting for batch 1/3 of squares/k1 (another job holds" not in log_b:
        assert time.time() < deadline and b.poll() is None, f"B never waited for A's batch: {log_b}"
        if select.select([b.stderr], [], [], 1.0)[0]:
            log_b += os.read(b.stderr.fileno(), 65536).decode()
    os.kill(a.pid, signal.SIGKILL)
    a.wait()
    out, rest = b.communicate(timeout=60)
    assert b.returncode == 0, rest
    assert _done_batches(log_b + rest) == [2, 3, 1]
    folder = Path(json.loads(out.strip().splitlines()[-1])["folder"])
    assert np.load(folder / "array.npy")[:, 1].tolist() == [x * x for x in range(12)]
    assert not (tmp_path / "a" / "cache" / "squares" / "k1.partial").exists(), "the dead job's registration is ignored"


def test_partial_folder_stays_while_another_job_uses_it(tmp_path):
    store = ArtifactStore(tmp_path)
    partial = tmp_path / "sq" / "k.partial"
    other_job = FileLock(partial / ".users" / "12345-other.lock")  # a job still working in the folder
    other_job.acquire()
    store.batched("sq", "k", list(range(6)), 2, lambda b: [{"x": x} for x in b])
    assert (partial / "bs2" / "batch000000.jsonl").is_file(), "not removed under another job's feet"
    other_job.release()
    store.batched("sq", "k", list(range(6)), 2, lambda b: [{"x": x} for x in b])  # reused; the last user is gone
    assert not partial.exists()


def test_stale_scratch_of_dead_jobs_is_collected(tmp_path):
    store = ArtifactStore(tmp_path, tmp_max_age_s=3600)
    stage = tmp_path / "st"
    old_dead, old_live, young, young_dead = (stage / f".tmp-k-{n}" for n in ("dead", "live", "young", "young_dead"))
    for folder in (old_dead, old_live, young, young_dead):
        folder.mkdir(parents=True)
        (folder / "big.bin").write_bytes(b"x" * 1000)
    two_hours_ago = time.time() - 7200
    for folder in (old_dead, old_live):
        os.utime(folder, (two_hours_ago, two_hours_ago))
    owner = FileLock(tmp_path / ".locks" / "st" / f"{old_live.name}.lock")  # its job still runs
    owner.acquire()
    dead_owner = FileLock(tmp_path / ".locks" / "st" / f"{young_dead.name}.lock")
    dead_owner.acquire()
    dead_owner.release()  # its lock file stays, held by nobody: the job was killed while it wrote
    store.build("st", "k2", lambda tmp: (tmp / "out.txt").write_text("y") and None)
    assert not old_dead.exists() and not young_dead.exists()  # a dead owner's lock: collected at once
    assert old_live.exists() and young.exists()  # a live owner; no owner lock on disk and young: kept
    owner.release()


# ---------------------------------------------------------------- integrity
BASE = ("scorer=random", "pool=alpaca", "pool.limit=64", "selection.budget=8", "scorer.batch_size=16",
        "logger=none")


def _stage(manifest: dict, stage: str) -> dict:
    return next(s for s in manifest["stages"] if s["stage"] == stage)


def _truncate_lines(path: Path, keep: int) -> None:
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:keep]))


def test_truncated_scores_are_reported_and_rebuilt(compose, tmp_path, caplog):
    from selectlab.pipeline import run

    first = run(compose(*BASE))
    subset = read_jsonl(Path(first["subset_path"]))
    folder = tmp_path / "cache" / "scores" / first["artifacts"]["scores"]
    full = (folder / "scores.jsonl").stat().st_size
    _truncate_lines(folder / "scores.jsonl", 40)
    size = (folder / "scores.jsonl").stat().st_size
    again = run(compose(*BASE))
    assert (f"damaged artifact {folder}: scores.jsonl has {size} bytes and 40 rows, "
            f"meta.json records {full} bytes and 64 rows") in caplog.text
    assert not _stage(again, "scores")["reused"]
    assert len(read_jsonl(folder / "scores.jsonl")) == 64
    assert read_jsonl(Path(again["subset_path"])) == subset and again["n_selected"] == 8


def test_truncated_subset_records_are_reported_and_rebuilt(compose, tmp_path, caplog):
    from selectlab.pipeline import run

    first = run(compose(*BASE))
    subset = read_jsonl(Path(first["subset_path"]))
    folder = tmp_path / "cache" / "subsets" / first["artifacts"]["subset"]
    full = (folder / "records.jsonl").stat().st_size
    _truncate_lines(folder / "records.jsonl", 3)
    size = (folder / "records.jsonl").stat().st_size
    again = run(compose(*BASE))
    assert (f"damaged artifact {folder}: records.jsonl has {size} bytes and 3 rows, "
            f"meta.json records {full} bytes and 8 rows") in caplog.text
    assert again["n_selected"] == 8 and read_jsonl(Path(again["subset_path"])) == subset


def test_truncated_array_artifact_is_reported_and_rebuilt(compose, tmp_path, caplog):
    from selectlab.pipeline import run

    first = run(compose(*BASE))
    key = _stage(first, "random_scores")["key"]
    array = tmp_path / "cache" / "random_scores" / key / "array.npy"
    intact = np.load(array)
    full_size = array.stat().st_size  # 128-byte header + 64 float64
    assert full_size == 128 + 64 * 8
    array.write_bytes(array.read_bytes()[:300])
    shutil.rmtree(tmp_path / "cache" / "scores")  # downstream cleared: the scorer reads random_scores again
    again = run(compose(*BASE))
    assert f"damaged artifact {array.parent}: array.npy has 300 bytes, meta.json records {full_size}" in caplog.text
    assert _stage(again, "random_scores")["batches_computed"] == 4
    np.testing.assert_array_equal(np.load(array), intact)


def test_truncated_partial_batch_is_discarded_and_recomputed(compose, tmp_path, monkeypatch, caplog):
    from selectlab import pipeline
    from selectlab.scorers import random as random_scorer

    reference = pipeline.run(compose(*BASE, "seed=7"))
    ref_subset = read_jsonl(Path(reference["subset_path"]))
    monkeypatch.setenv("SELECTLAB_CACHE", str(tmp_path / "cache2"))
    real, calls = random_scorer.uniform_from_id, {"n": 0}

    def dying(seed, example_id):  # killed in the 4th batch of 16
        calls["n"] += 1
        if calls["n"] > 50:
            raise KeyboardInterrupt("killed")
        return real(seed, example_id)

    monkeypatch.setattr(random_scorer, "uniform_from_id", dying)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(compose(*BASE, "seed=7"))
    monkeypatch.setattr(random_scorer, "uniform_from_id", real)
    batch = next((tmp_path / "cache2" / "random_scores").glob("*.partial")) / "bs16" / "batch000001.npy"
    batch.write_bytes(batch.read_bytes()[:100])  # cut inside the 128-byte header
    again = pipeline.run(compose(*BASE, "seed=7"))
    assert f"damaged batch {batch}: unreadable" in caplog.text
    stage = _stage(again, "random_scores")
    assert (stage["batches_reused"], stage["batches_computed"]) == (2, 2)  # batches 0 and 2 kept; 1 and 3 computed
    assert read_jsonl(Path(again["subset_path"])) == ref_subset


def test_partial_batch_with_missing_rows_is_recomputed(tmp_path, caplog):
    store = ArtifactStore(tmp_path)
    partial = tmp_path / "sq" / "k.partial" / "bs3"
    partial.mkdir(parents=True)
    (partial / "batch000000.jsonl").write_text('{"x": 0, "sq": 0}\n{"x": 1, "sq": 1}\n')  # 2 of 3 rows
    (partial / "batch000001.jsonl").write_text("".join(f'{{"x": {x}, "sq": {x * x}}}\n' for x in (3, 4, 5)))
    computed = []

    def compute(batch):
        computed.extend(batch)
        return [{"x": x, "sq": x * x} for x in batch]

    folder = store.batched("sq", "k", list(range(6)), 3, compute)
    assert f"damaged batch {partial / 'batch000000.jsonl'}: 2 rows for a batch of 3" in caplog.text
    assert computed == [0, 1, 2], "only the damaged batch is recomputed"
    assert [r["sq"] for r in read_jsonl(folder / "records.jsonl")] == [0, 1, 4, 9, 16, 25]


@pytest.mark.slow
def test_verify_full_catches_a_changed_byte_that_sizes_miss(compose, tmp_path, caplog):
    from selectlab.pipeline import run

    first = run(compose(*BASE))
    scores = tmp_path / "cache" / "scores" / first["artifacts"]["scores"] / "scores.jsonl"
    text = scores.read_text()
    flipped = re.sub(r'"score": 0\.(\d)', lambda m: f'"score": 0.{(int(m.group(1)) + 1) % 10}', text, count=1)
    assert flipped != text and len(flipped) == len(text)
    scores.write_text(flipped)
    assert _stage(run(compose(*BASE)), "scores")["reused"], "sizes and rows still match"
    again = run(compose(*BASE, "store.verify=full"))
    assert "scores.jsonl's sha256 differs" in caplog.text and not _stage(again, "scores")["reused"]
    assert scores.read_text() == text
    with pytest.raises(ValueError, match="store.verify='fast'"):
        run(compose(*BASE, "store.verify=fast"))


# ---------------------------------------------------------------- pipeline-level sharing
# Two `src/run.py` jobs on one fresh cache. Each random score is slowed to 0.2 s (64 x 0.2 s:
# 12.8 s of scoring) so the jobs overlap however fast they start; the store is untouched.
SLOW_RUN = textwrap.dedent("""
    import runpy, sys, time
    sys.path.insert(0, sys.argv[1] + "/src")
    from selectlab.scorers import random as r
    real = r.uniform_from_id
    r.uniform_from_id = lambda seed, i: (time.sleep(0.2), real(seed, i))[1]
    sys.argv = [sys.argv[1] + "/src/run.py", *sys.argv[2:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


@pytest.mark.slow
def test_two_pipeline_runs_on_one_cache_score_each_batch_once(tmp_path):
    env = {**_env(), "SELECTLAB_CACHE": str(tmp_path / "cache"), "SELECTLAB_DATA": os.environ.get(
        "SELECTLAB_DATA", str(REPO.parent / "shared" / "data"))}
    jobs = [subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(REPO), *BASE, f"hydra.run.dir={tmp_path / f'run{i}'}"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
             for i in range(2)]
    logs = []
    for job in jobs:
        out, err = job.communicate(timeout=600)
        assert job.returncode == 0, err[-3000:]
        logs.append((tmp_path / f"run{len(logs)}" / "run.log").read_text())  # the store's batch lines: run.log only
    done = [m.group(2) for log in logs for m in DONE.finditer(log) if m.group(1).startswith("random_scores/")]
    assert sorted(done) == ["1", "2", "3", "4"], "each of the 4 batches of 16 scored once"
    print("batches scored by each job:", [[m.group(2) for m in DONE.finditer(log)] for log in logs])
    subsets = [read_jsonl(tmp_path / f"run{i}" / "subset.jsonl") for i in range(2)]
    assert subsets[0] == subsets[1] and len(subsets[0]) == 8


# ---------------------------------------------------------------- no orphans
# A run that starts what vLLM starts (a multiprocessing-spawn child that starts its own
# subprocess) plus a plain subprocess, then waits to be killed.
FAMILY = textwrap.dedent("""
    import multiprocessing as mp, subprocess, sys, time

    def engine_core():
        subprocess.Popen(["sleep", "1000"])  # its worker
        time.sleep(1000)

    if __name__ == "__main__":
        from selectlab.infra.orphans import watch_children
        watch_children()
        mp.get_context("spawn").Process(target=engine_core).start()
        subprocess.Popen(["sleep", "1001"], start_new_session=True)
        time.sleep(1000)
""")


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(proc) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _names(procs: list, pattern: str) -> list:
    """Processes whose name or command line contains ``pattern`` (vLLM retitles its processes)."""
    import psutil

    found = []
    for p in procs:
        try:
            if pattern in p.name() or pattern in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def _kill_and_wait(run: subprocess.Popen, family: list, limit_s: float = 30) -> float:
    """kill -9 the run; seconds until every process of ``family`` is gone (fails past ``limit_s``)."""
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    start = time.time()
    while True:
        alive = [p for p in family if _alive(p)]
        if not alive:
            return time.time() - start
        if time.time() - start > limit_s:
            for p in alive:
                p.kill()
            raise AssertionError(f"alive {limit_s:.0f}s after kill -9: {[(p.pid, p.name()) for p in alive]}")
        time.sleep(0.2)


def test_kill_9_leaves_no_process_behind(tmp_path):
    script = tmp_path / "family.py"
    script.write_text(FAMILY)
    run = subprocess.Popen([sys.executable, str(script)], env=_env(), cwd=tmp_path)
    deadline = time.time() + 120
    while len(_names(_descendants(run.pid), "sleep 10")) < 2:
        assert time.time() < deadline, "the family did not start"
        time.sleep(0.2)
    time.sleep(1.0)  # the watchdog has polled since
    family = _descendants(run.pid)
    assert len(family) >= 4  # watchdog, spawned child, its sleep, the other sleep (+ spawn's resource tracker)
    seconds = _kill_and_wait(run, family)
    print(f"all {len(family)} processes gone {seconds:.1f}s after kill -9")


@pytest.mark.slow
def test_kill_9_of_a_run_with_a_vllm_engine_leaves_no_process_behind(tmp_path, vllm_tiny_model_dir):
    """A real ADG run (vLLM engine on the tiny model) killed with SIGKILL while it samples (batch 2 of 5). The
    engine in its own processes, as on a GPU (``sampler.in_process=false``; in-process it dies with the run)."""
    env = {**_env(), "SELECTLAB_CACHE": str(tmp_path / "cache"), "SELECTLAB_DATA": os.environ.get(
        "SELECTLAB_DATA", str(REPO.parent / "shared" / "data")), "VLLM_CPU_KVCACHE_SPACE": "1"}
    env.pop("OMP_NUM_THREADS")
    log = open(tmp_path / "run.log", "w")
    run = subprocess.Popen([sys.executable, str(REPO / "src/run.py"), "scorer=adg", "pool=lima", "pool.limit=80",
                            f"backbone.path={vllm_tiny_model_dir}", "sampler.max_new_tokens=64", "sampler.batch_size=16",
                            "sampler.max_model_len=256", "sampler.in_process=false", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"],
                           env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    start, deadline = time.time(), time.time() + 900
    try:
        run_log = tmp_path / "run" / "run.log"  # the store's batch lines go to the run's log, not the console
        while not (run_log.exists() and re.search(r"samples/\w+: batch 1/5 done", run_log.read_text())):
            assert run.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.time() < deadline, "the engine did not sample its first batch"
            time.sleep(0.5)
        family = _descendants(run.pid)
        assert _names(family, "EngineCore")
    except BaseException:
        run.kill()  # its watchdog ends the rest
        raise
    names = sorted({" ".join(p.cmdline())[:40] for p in family if _alive(p)})
    seconds = _kill_and_wait(run, family)
    print(f"first batch sampled after {time.time() - start - seconds:.0f}s; {len(family)} processes {names} "
          f"gone {seconds:.1f}s after kill -9")


@pytest.fixture(scope="module")
def vllm_tiny_model_dir(smol_tokenizer_dir, tmp_path_factory):
    """The tiny llama with head_dim 32 (vLLM's CPU attention needs at least 32)."""
    from conftest import build_tiny_llama

    return build_tiny_llama(smol_tokenizer_dir, tmp_path_factory.mktemp("tiny_llama_hd32"), 2, 1)
