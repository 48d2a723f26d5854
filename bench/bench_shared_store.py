"""Two jobs sharing one artifact store vs one job: how much sooner a batched stage is done.

A 2-shard-sized job (``--batches`` batches) runs through ``ArtifactStore.batched`` on a fresh
store, first by one process, then by two processes started together on another fresh store
(as a sweep or a Slurm array sharing ``SELECTLAB_CACHE`` would: no shard settings, the batch
locks split the work). Wall time runs from the moment every process is ready (interpreter
start excluded) until the last one exits. Each batch's work is either a sleep (``--work
sleep``: the job waits on something else, e.g. a GPU or a remote service) or real CPU work
(``--work cpu``: PBKDF2-SHA256 rounds, one core per process). It prints both wall times, the
ratio, how the batches were split, and checks that each batch was computed once and that
both stores hold identical bytes.

    python bench/bench_shared_store.py                       # 16 batches of 0.5 s sleep
    python bench/bench_shared_store.py --work cpu --batches 8
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DONE = re.compile(r"batch (\d+)/\d+ done")

JOB = textwrap.dedent("""
    import hashlib, logging, sys, time
    from pathlib import Path
    from selectlab.infra.store import ArtifactStore

    root, go, work, batches, seconds, rounds = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), \\
        float(sys.argv[5]), int(sys.argv[6])
    logging.basicConfig(level=logging.INFO, format="%(created).3f %(message)s")
    go.with_name(go.name + ".ready" + sys.argv[7]).touch()
    while not go.exists():
        time.sleep(0.005)

    def compute(batch):
        if work == "sleep":
            time.sleep(seconds)
            return [{"item": i} for i in batch]
        return [{"item": i, "key": hashlib.pbkdf2_hmac("sha256", str(i).encode(), b"bench", rounds).hex()}
                for i in batch]

    ArtifactStore(root).batched("bench", "job", list(range(batches * 4)), 4, compute)
""")


def calibrate_rounds(seconds: float) -> int:
    """PBKDF2 rounds per item so that a batch of 4 items takes about ``seconds`` on one core."""
    import hashlib

    start = time.perf_counter()
    hashlib.pbkdf2_hmac("sha256", b"0", b"bench", 200_000)
    per_round = (time.perf_counter() - start) / 200_000
    return max(1, int(seconds / 4 / per_round))


def run_jobs(n_jobs: int, root: Path, args, rounds: int) -> tuple[float, list[list[int]]]:
    go = root / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", JOB, str(root / "cache"), str(go), args.work, str(args.batches),
                               str(args.batch_seconds), str(rounds), str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(n_jobs)]
    while not all((root / f"go.ready{i}").exists() for i in range(n_jobs)):
        if any(p.poll() is not None for p in procs):
            raise SystemExit(procs[0].communicate()[1][-3000:])
        time.sleep(0.01)
    start = time.perf_counter()
    go.touch()
    logs = []
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(err[-3000:])
        logs.append(err)
    seconds = time.perf_counter() - start
    return seconds, [[int(b) for b in DONE.findall(log)] for log in logs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--batch-seconds", type=float, default=0.5)
    ap.add_argument("--work", choices=["sleep", "cpu"], default="sleep")
    args = ap.parse_args()
    rounds = calibrate_rounds(args.batch_seconds) if args.work == "cpu" else 0
    with tempfile.TemporaryDirectory() as tmp:
        one_root, two_root = Path(tmp, "one"), Path(tmp, "two")
        one_root.mkdir(), two_root.mkdir()
        one, one_split = run_jobs(1, one_root, args, rounds)
        two, two_split = run_jobs(2, two_root, args, rounds)
        done = sorted(b for split in two_split for b in split)
        assert done == list(range(1, args.batches + 1)), f"batches computed {done}: some twice or never"
        same = all((one_root / "cache/bench/job" / f).read_bytes() == (two_root / "cache/bench/job" / f).read_bytes()
                   for f in ("records.jsonl",))
    print(f"{args.batches} batches of {args.batch_seconds:.2f} s ({args.work}), {os.cpu_count()} cores")
    print(f"one job:  {one:6.2f} s")
    print(f"two jobs: {two:6.2f} s  (batches per job: {[len(s) for s in two_split]}, each batch once: yes, "
          f"identical artifact: {'yes' if same else 'NO'})")
    print(f"speed-up: {one / two:.2f}x")


if __name__ == "__main__":
    main()
