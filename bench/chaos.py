"""A chaos run: a sweep of small jobs in concurrent processes on one store, killed at random, then
rerun to completion and compared with a clean sequential run of the same sweep.

The jobs are real ``python src/run.py`` runs on a tiny llama (SmolLM2's tokenizer, random weights):
several scorers (ADG on the hf sampler, IFD, SuperFiltering, perplexity, length, random) at two
budgets, half of them fine-tuned (``train=cpu_small``, a few steps) and scored on a held-out loss.

1. chaos: the sweep on store A in ``--procs`` processes; every 3-8 s (at most jobs/2 times) a random running job gets
   SIGKILL or SIGTERM (a preemption: it stops at its next safe point and exits 75).
2. rerun: the same sweep on store A, same processes, no kills: every job must finish.
3. clean: the same sweep on store B, one job at a time.

Checks: each job's subset and results rows equal the clean run's (held-out losses to rel 1e-5: a
fine-tune resumed after SIGTERM replays the same steps in float32); every artifact key of the
clean store exists in store A with the same data files (sha256; fine-tunes excepted, compared
through their results); no artifact published twice and no batch computed twice across phases 1-2
(a job killed mid-batch leaves no "done" line, so only finished work counts); no ``.partial``
folder, ``.tmp-*`` folder or held lock in store A, and no process of the run left.

    python bench/chaos.py                     # 20 jobs, 4 processes
    python bench/chaos.py --jobs 8 --procs 3  # the slow test's size
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILT = re.compile(r"built artifact (\S+) in")
BATCH = re.compile(r"(\S+/\S+): batch (\d+)/\d+ done")
FINETUNE_STAGES = {"checkpoints"}
SCORERS = ("length", "ifd", "superfiltering", "perplexity", "adg", "random")


def tiny_model(folder: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_tiny_llama, save_smol_tokenizer

    return build_tiny_llama(save_smol_tokenizer(folder / "tokenizer"), folder / "tiny_llama")


def job_overrides(n_jobs: int, model: Path) -> list[list[str]]:
    """``n_jobs`` runs: scorers x budgets, every other one fine-tuned and scored on a held-out loss."""
    jobs = []
    for i in range(n_jobs):
        scorer, budget, trains = SCORERS[i % len(SCORERS)], (3, 5)[(i // len(SCORERS)) % 2], i % 2 == 1
        job = [f"scorer={scorer}", f"backbone.path={model}", "pool=self_instruct_seed", "pool.limit=16",
               f"selection.budget={budget}", "logger=none", "sampler=hf", "sampler.k=3", "sampler.max_new_tokens=8",
               "sampler.batch_size=4", "scorer.batch_size=4"]
        if scorer == "superfiltering":  # its scoring model (GPT-2 in the release) is the tiny one too
            job.append(f"scorer.model.path={model}")
        if scorer == "length":  # no model, no batches
            job.remove("scorer.batch_size=4")
        if trains:
            job += ["train=cpu_small", "train.max_steps=4", "train.max_length=128", "train.save_steps=1000",
                    "train.per_device_batch_size=1", "train.grad_accum=1", "eval=heldout_loss", "heldout.limit=6",
                    "eval.heldout_loss.max_length=128", "eval.heldout_loss.batch_size=2"]
        jobs.append(job)
    return jobs


def run_phase(name: str, jobs: list[list[str]], root: Path, store: Path, procs: int, kill: bool,
              seed: int = 0) -> dict:
    """Run every job (``procs`` at a time); with ``kill``, send random SIGKILL/SIGTERM while they run."""
    env = {**os.environ, "SELECTLAB_CACHE": str(store), "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    todo = collections.deque(enumerate(jobs))
    running: dict[int, subprocess.Popen] = {}
    codes, kills = {}, []
    rng = random.Random(seed)
    next_kill = time.time() + rng.uniform(3, 8)
    started = time.time()
    while todo or running:
        while todo and len(running) < procs:
            i, job = todo.popleft()
            out = root / name / f"job{i:02d}"
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "console.log", "w") as log:
                running[i] = subprocess.Popen([sys.executable, str(REPO / "src/run.py"), *job,
                                               f"hydra.run.dir={out / 'run'}"], cwd=REPO, env=env, stdout=log,
                                              stderr=subprocess.STDOUT)
        if kill and running and time.time() >= next_kill and len(kills) < max(1, len(jobs) // 2):
            i = rng.choice(sorted(running))
            sig = rng.choice((signal.SIGKILL, signal.SIGTERM))
            running[i].send_signal(sig)
            kills.append((i, sig.name, round(time.time() - started, 1)))
            next_kill = time.time() + rng.uniform(3, 8)
        for i, proc in list(running.items()):
            if proc.poll() is not None:
                codes[i] = proc.returncode
                del running[i]
        time.sleep(0.2)
    return {"codes": codes, "kills": kills, "wall_s": time.time() - started}


def logged(root: Path, phases: list[str]) -> tuple[collections.Counter, collections.Counter]:
    """(artifacts published, batches finished) counted over the console logs of ``phases``."""
    built, batches = collections.Counter(), collections.Counter()
    for phase in phases:
        for log in sorted((root / phase).glob("job*/console.log")):
            text = log.read_text(errors="replace")
            built.update(BUILT.findall(text))
            batches.update(BATCH.findall(text))
    return built, batches


def data_files(store: Path) -> dict[str, dict[str, str]]:
    """stage/key -> {file: sha256} of every published artifact but fine-tunes (meta.json: timings)."""
    out = {}
    for meta in store.glob("*/*/meta.json"):
        folder = meta.parent
        stage = folder.parent.name
        if stage in FINETUNE_STAGES or folder.name.endswith(".partial") or folder.name.startswith(".tmp"):
            continue
        out[f"{stage}/{folder.name}"] = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                                         for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "meta.json"}
    return out


def job_outputs(root: Path, phase: str, i: int) -> dict:
    run = root / phase / f"job{i:02d}" / "run"
    if not (run / "subset.jsonl").exists():
        return {"subset": None, "rows": None}
    subset = [json.loads(line)["id"] for line in (run / "subset.jsonl").read_text().splitlines() if line.strip()]
    results = json.loads((run / "results.json").read_text())["rows"] if (run / "results.json").exists() else []
    return {"subset": subset, "rows": [(r["label"], r["scorer"], r["n_train"], r.get("metrics", {}),
                                        r.get("per_example", {})) for r in results]}


def same_rows(a: list, b: list, rel: float = 1e-5) -> bool:
    if len(a) != len(b):
        return False
    for (la, sa, na, ma, pa), (lb, sb, nb, mb, pb) in zip(a, b):
        if (la, sa, na) != (lb, sb, nb) or set(ma) != set(mb) or set(pa) != set(pb):
            return False
        pairs = [(ma[k], mb[k]) for k in ma] + [(x, pb[m][e]) for m in pa for e, x in pa[m].items()]
        if any(x is None or y is None or abs(x - y) > rel * max(abs(x), abs(y), 1e-12) for x, y in pairs
               if not (x is None and y is None)):
            return False
    return True


def leftovers(store: Path, root: Path) -> dict:
    from filelock import FileLock, Timeout

    held = []
    for lock in store.rglob("*.lock"):
        try:
            FileLock(str(lock)).acquire(timeout=0).lock.release()
        except Timeout:
            held.append(str(lock))
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    mine = {os.getpid(), os.getppid()}
    procs = [line for line in ps.splitlines() if str(root) in line and "ps -eo" not in line
             and int(line.split()[0]) not in mine]
    return {"partial": [str(p) for p in store.rglob("*.partial")], "tmp": [str(p) for p in store.rglob(".tmp-*")],
            "held_locks": held, "processes": procs}


def chaos(n_jobs: int, procs: int, root: Path, seed: int = 0) -> dict:
    model = tiny_model(root / "model")
    jobs = job_overrides(n_jobs, model)
    started = time.time()
    first = run_phase("chaos", jobs, root, root / "store", procs, kill=True, seed=seed)
    second = run_phase("rerun", jobs, root, root / "store", procs, kill=False)
    clean = run_phase("clean", jobs, root, root / "clean_store", 1, kill=False)
    failed = {p: {i: c for i, c in r["codes"].items() if c != 0} for p, r in (("rerun", second), ("clean", clean))}
    built, batches = logged(root, ["chaos", "rerun"])
    mismatched = []
    for i in range(n_jobs):
        a, b = job_outputs(root, "rerun", i), job_outputs(root, "clean", i)
        if a["subset"] is None or a["subset"] != b["subset"] or not same_rows(a["rows"], b["rows"]):
            mismatched.append(i)
    ours, theirs = data_files(root / "store"), data_files(root / "clean_store")
    return {
        "jobs": n_jobs, "procs": procs, "kills": first["kills"],
        "chaos_exit_codes": dict(collections.Counter(first["codes"].values())),
        "failed_after_rerun": failed,
        "jobs_differing_from_clean": mismatched,
        "artifacts_compared": len(theirs),
        "artifacts_missing_or_different": sorted(k for k in theirs if ours.get(k) != theirs[k]),
        "published_twice": sorted(k for k, n in built.items() if n > 1),
        "batches_computed_twice": sorted(f"{k} batch {b}" for (k, b), n in batches.items() if n > 1),
        "leftovers": leftovers(root / "store", root),
        "wall_s": {"chaos": round(first["wall_s"], 1), "rerun": round(second["wall_s"], 1),
                   "clean": round(clean["wall_s"], 1), "total": round(time.time() - started, 1)},
    }


def clean_report(report: dict) -> bool:
    return not (any(report["failed_after_rerun"].values()) or report["jobs_differing_from_clean"]
                or report["artifacts_missing_or_different"] or report["published_twice"]
                or report["batches_computed_twice"] or any(report["leftovers"].values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="selectlab-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        report = chaos(args.jobs, args.procs, root.resolve(), args.seed)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report, indent=2))
    print("chaos run:", "everything identical, nothing left behind" if clean_report(report) else "PROBLEMS (above)")
    sys.exit(0 if clean_report(report) else 1)


if __name__ == "__main__":
    main()
