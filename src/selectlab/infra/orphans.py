"""No orphans after a kill: a watchdog ends what a run started once the run is gone.

A run killed with SIGKILL runs no clean-up, and the processes it started keep going: vLLM's
engine core and workers (started with multiprocessing spawn: their parent is the run or the
engine core, and nothing tells them the run died), lm-eval and program subprocesses, wandb's
service. :func:`watch_children` starts a small watchdog process: this file run as a script
(standard library and psutil only, so it starts in a fraction of a second), in a session of
its own, so that a signal to the run's process group does not take it down before it cleans
up. While the run lives, the watchdog records the run's descendants every ``POLL_S`` seconds.
Once the run is gone (killed or exited), it ends every recorded descendant that is still the
same process (pid and start time), their children, and any process whose environment holds
the run's marker (children started after the last poll: every child inherits the
environment): SIGTERM, then SIGKILL for those alive ``GRACE_S`` seconds later. Why not
``PR_SET_PDEATHSIG``: it must be set inside each child after it starts, and vLLM's spawned
processes run no code of ours before theirs; nor does it reach grandchildren.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

MARKER_ENV = "SELECTLAB_RUN_MARKER"
POLL_S = 0.5
GRACE_S = 5.0
_watchdog: dict[int, subprocess.Popen] = {}  # run pid -> its watchdog (one per process, kept referenced)


def watch_children(log_file: str | Path | None = None) -> None:
    """Start this process's watchdog (once per process; forked children get their own).

    ``log_file``: where the watchdog notes what it had to end (nothing is written otherwise).
    """
    pid = os.getpid()
    if pid in _watchdog:
        return
    marker = f"{pid}-{uuid.uuid4().hex[:12]}"
    os.environ[MARKER_ENV] = marker
    _watchdog[pid] = subprocess.Popen(
        [sys.executable, "-I", str(Path(__file__).resolve()), str(pid), marker, str(log_file or "")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,  # never holds a caller's pipe
        start_new_session=True,
    )


def _alive(proc) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE  # a killed run stays a zombie until reaped
    except psutil.NoSuchProcess:
        return False


def _leftovers(seen: dict[int, float], marker: str) -> list:
    """Processes the run started that still exist (recorded ones, marked ones, and their children)."""
    import psutil

    found: dict[int, psutil.Process] = {}
    for pid, started in seen.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == started:  # not a new process that reused the pid
                found[pid] = proc
        except psutil.Error:
            continue
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(MARKER_ENV) == marker:
                found[proc.pid] = proc
        except psutil.Error:  # gone, or another account's process
            continue
    for proc in list(found.values()):
        try:
            found.update((c.pid, c) for c in proc.children(recursive=True))
        except psutil.Error:
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def _end(procs: list) -> list[str]:
    """SIGTERM, then SIGKILL after GRACE_S; returns a line per process ended."""
    import psutil

    names = []
    for proc in procs:
        try:
            names.append(f"{proc.pid} {proc.name()}")
            proc.terminate()
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(procs, timeout=GRACE_S)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(alive, timeout=GRACE_S)
    return names


def _watch(run_pid: int, marker: str, log_file: str) -> None:
    import psutil

    for sig in (signal.SIGINT, signal.SIGHUP):  # outlive the run's terminal to clean up after it
        signal.signal(sig, signal.SIG_IGN)
    try:
        run = psutil.Process(run_pid)
    except psutil.NoSuchProcess:
        run = None
    seen: dict[int, float] = {}
    while run is not None and _alive(run):
        try:
            seen.update((c.pid, c.create_time()) for c in run.children(recursive=True))
        except psutil.Error:
            pass
        time.sleep(POLL_S)
    ended = _end(_leftovers(seen, marker))
    if ended and log_file:
        with open(log_file, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} run {run_pid} is gone; ended {len(ended)} processes it "
                    f"started: {', '.join(ended)}\n")


if __name__ == "__main__":
    _watch(int(sys.argv[1]), sys.argv[2], sys.argv[3])
