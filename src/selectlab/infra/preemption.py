"""Preemption: SIGTERM or SIGUSR1 turns into "stop at the next safe point, keep everything, requeue".

A cluster preempts a job with SIGTERM (SLURM, then SIGKILL after its grace time) or warns it with
SIGUSR1 ahead of the time limit (``sbatch --signal=USR1@120``; submitit's launcher asks for it).
:func:`install` (the entry point calls it) only notes the signal. The stages stop at their next
safe point: :meth:`ArtifactStore.batched` before its next batch (finished batches are stored), a
fine-tune at the end of its current optimiser step after saving a Trainer checkpoint of that step
(:class:`StopOnSignal`; the rerun resumes from it), an evaluation before its next task. There
:func:`check` raises :class:`Preempted`; the entry point calls :func:`hand_off`: the handler that
was installed before ours gets the signal (submitit's USR1 handler checkpoints and requeues the
job), otherwise the process exits with :data:`REQUEUE_EXIT_CODE` for a wrapper to requeue on.
Nothing half-made is published: the exception leaves the store the way a kill leaves it.
"""
from __future__ import annotations

import logging
import signal
import sys

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): "try again later"

_received: int | None = None
_previous: dict[int, object] = {}


class Preempted(Exception):
    """Raised at a safe point after a preemption signal; not a user error and not a bug."""


def _note(signum, _frame) -> None:
    global _received
    if _received is None:
        _received = signum
        log.warning("received %s: stopping at the next safe point (a batch, an optimiser step, an eval task)",
                    signal.Signals(signum).name)


def install() -> None:
    """Note SIGTERM/SIGUSR1 instead of dying at once; the handlers found are kept for :func:`hand_off`."""
    global _received
    _received = None
    for sig in SIGNALS:
        current = signal.getsignal(sig)
        if current is not _note:
            _previous[sig] = current
        signal.signal(sig, _note)


def requested() -> int | None:
    """The preemption signal received, if any."""
    return _received


def check(where: str) -> None:
    """Raise :class:`Preempted` if a preemption signal has arrived (call it at a safe point)."""
    if _received is not None:
        raise Preempted(f"{signal.Signals(_received).name} received; stopped before {where}")


def hand_off(error: Preempted) -> None:
    """After a run stopped at a safe point: pass the signal to the handler that was there before
    ours (submitit's requeues the job), else exit with :data:`REQUEUE_EXIT_CODE`."""
    signum = _received if _received is not None else signal.SIGTERM
    print(f"preempted: {error}; every finished batch, step and task is stored, rerun the same command to resume",
          file=sys.stderr, flush=True)
    previous = _previous.get(signum)
    if callable(previous) and previous is not signal.default_int_handler:
        previous(signum, None)
    sys.exit(REQUEUE_EXIT_CODE)


def stop_on_signal_callback():
    """A ``TrainerCallback``: after the step during which a preemption signal arrived, save a
    checkpoint of that step and stop training (the caller then raises :class:`Preempted`)."""
    from transformers import TrainerCallback

    class StopOnSignal(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if _received is not None:
                control.should_save = True
                control.should_training_stop = True
            return control

    return StopOnSignal()
