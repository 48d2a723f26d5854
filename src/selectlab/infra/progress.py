"""One progress bar per long stage (count, rate, ETA), on stderr.

:meth:`selectlab.infra.store.ArtifactStore.batched` opens the bar of every batched stage (sampling,
embedding, LM scoring passes, ...) and moves it at each finished batch; work inside a batch can move
it further with :func:`advance` (vLLM's sampling reports each finished prompt through
:func:`vllm_progress`). ``TQDM_DISABLE=1`` turns the bars off.
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator

from tqdm import tqdm

_active: list[tqdm] = []  # the stage bar now open (stages do not nest their bars)


@contextmanager
def stage_bar(stage: str, total: int, done: int = 0, unit: str = "ex") -> Iterator[tqdm]:
    """A bar for ``total`` items of ``stage``, ``done`` of them already stored. On a terminal it redraws
    each second; in a file (a log, CI) it writes a line at most every 30 s, and its last line on close."""
    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    bar = tqdm(total=total, initial=done, desc=stage, unit=unit, dynamic_ncols=True, file=sys.stderr,
               mininterval=1.0 if interactive else 30.0)
    _active.append(bar)
    try:
        yield bar
    finally:
        _active.remove(bar)
        bar.close()


def advance(n: int = 1) -> None:
    """Move the open stage bar by ``n`` items (no-op when none is open)."""
    if _active:
        _active[-1].update(n)


def move_to(position: int) -> None:
    """Set the open stage bar to ``position`` items (a batch's end, whatever its work reported)."""
    if _active and position > _active[-1].n:
        _active[-1].update(position - _active[-1].n)


class _PromptCounter:
    """What vLLM's ``LLM.generate(use_tqdm=...)`` needs of a bar; each finished prompt moves the stage bar."""

    def __init__(self, **_: object):
        self.n, self.postfix, self._start = 0, "", time.perf_counter()

    @property
    def format_dict(self) -> dict:
        return {"elapsed": max(time.perf_counter() - self._start, 1e-6)}

    def update(self, _n: int = 1) -> None:  # vLLM passes the answers of one finished prompt
        self.n += 1
        advance(1)

    def refresh(self) -> None: ...

    def close(self) -> None: ...


def vllm_progress(iterable=None, **kwargs):
    """``use_tqdm`` for vLLM: no bar of its own; finished prompts move the stage bar."""
    return iterable if iterable is not None else _PromptCounter(**kwargs)
