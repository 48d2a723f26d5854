"""ZIP (entropy-law selection, USTC-StarTeam/ZIP ``ZIP.py``): pick the examples whose union
compresses worst (zlib level 9), i.e. carries the least redundant information.

The release's algorithm, kept step for step:

- state[i] = compression ratio (raw bytes / zlib-9 bytes) of example i alone;
- each round: stage 1 takes the k1 examples of lowest state; stage 2 re-scores them jointly
  with everything selected so far (ratio of ``selected + [x]``), writes those ratios back into
  state and keeps the k2 lowest, which leave the pool for good (the release marks all k2 as
  taken; the k2 - k3 that stage 3 does not pick are never offered again); stage 3 picks k3 of
  the k2 one at a time, each time the one whose ratio with this round's picks so far (not the
  earlier rounds') is lowest;
- rounds repeat until the budget. Every choice is the release's own: ``torch.topk(..., largest=False)``
  on float32 tensors (the release builds them with ``torch.tensor`` from Python floats), over the
  whole state with taken examples set to 1,000,000 (stage 1) and over all k2 candidates with this
  round's picks set to 1,000,000 (stage 3), so ratios that are equal in float32 tie as they tie
  there (52,002 single-record ratios take only 22,105 distinct float32 values). The last round
  stops at the budget, which is the release's pick order cut there (stage 3 is sequential). k1,
  k2, k3 are capped at the examples still available (on a pool smaller than k1 the release would
  re-offer taken examples).

What is compressed (``text``): ``repr`` (release) is Python's ``str()`` of the list of records,
each record the dict ``{'instruction', 'input', 'output'}`` as in the pool file; ``plain`` joins
each example's "instruction\\ninput\\noutput" with blank lines.

Speed: the release recompresses the whole selected set for every candidate (4.5 h on its pool
with 64 processes). Here the compressor state after the selected prefix is kept and copied per
candidate (``zlib.compressobj().copy()``): deflate's output does not depend on how its input
is split, so the compressed size is byte-for-byte the one-shot ``zlib.compress(str(...), 9)``
(tests check it), at a cost that no longer grows with the selected set.
"""
from __future__ import annotations

import logging
import multiprocessing
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import SelectlabError
from ..texts import PrefixCompressor, TextForm

log = logging.getLogger(__name__)

# Worker side: each process keeps one compressor per slot ("joint" for stage 2, "round" for
# stage 3) and only feeds it the prefix items it has not seen, so a round costs the new items.
_TEXTS: list[bytes] = []
_FORM: TextForm | None = None
_COMPRESSORS: dict[str, PrefixCompressor] = {}


def _init_worker(texts: list[bytes], form: TextForm) -> None:
    global _TEXTS, _FORM
    _TEXTS, _FORM = texts, form
    _COMPRESSORS.clear()


def _ratios_task(task: tuple[str, list[int], list[int]]) -> np.ndarray:
    slot, prefix, candidates = task
    comp = _COMPRESSORS.get(slot)
    if comp is None or comp.prefix != prefix[: len(comp.prefix)]:
        comp = _COMPRESSORS[slot] = PrefixCompressor(_FORM)
    comp.extend(prefix[len(comp.prefix):], _TEXTS)
    return comp.ratios(candidates, _TEXTS)


class RatioEngine:
    """Joint ratios of (prefix + [candidate]) for many candidates, in this process or split
    over ``n_jobs`` forked processes (each keeping its own prefix compressors)."""

    def __init__(self, texts: list[bytes], form: TextForm, n_jobs: int):
        self.n_jobs = max(1, min(int(n_jobs), multiprocessing.cpu_count()))
        self.compressions = 0
        _init_worker(texts, form)
        self._pool = (multiprocessing.get_context("fork").Pool(self.n_jobs, _init_worker, (texts, form))
                      if self.n_jobs > 1 else None)

    def ratios(self, slot: str, prefix: list[int], candidates: np.ndarray) -> np.ndarray:
        self.compressions += len(candidates)
        candidates = [int(c) for c in candidates]
        if self._pool is None or len(candidates) < 2 * self.n_jobs:
            return _ratios_task((slot, prefix, candidates))
        chunks = [candidates[j :: self.n_jobs] for j in range(self.n_jobs)]  # interleaved: even lengths
        parts = self._pool.map(_ratios_task, [(slot, prefix, c) for c in chunks])
        out = np.empty(len(candidates), dtype=np.float64)
        for j, part in enumerate(parts):
            out[j :: self.n_jobs] = part
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()


@dataclass
class ZipResult:
    order: list[int]
    rounds: int = 0
    discarded: int = 0  # stage-2 survivors that stage 3 did not pick: never offered again
    compressions: int = 0
    seconds: dict = field(default_factory=dict)


TAKEN = 1000000.0  # the release's mark of an example that can no longer be chosen


def _lowest(values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k lowest values as the release finds them: ``torch.topk`` with
    ``largest=False`` on a float32 tensor (its rounding and its order among ties)."""
    import torch

    return torch.topk(torch.from_numpy(np.asarray(values, dtype=np.float32)), k=k, largest=False).indices.numpy()


def zip_select(texts: list[bytes], form: TextForm, state: np.ndarray, budget: int, k1: int, k2: int, k3: int,
               n_jobs: int = 1, selectable: np.ndarray | None = None, resume: dict | None = None,
               on_round: Callable[[dict], None] | None = None) -> ZipResult:
    """The release's three-stage greedy. ``state``: each example's single ratio (copied, then
    overwritten by stage 2 as the release does). ``selectable``: a mask of allowed examples.
    ``on_round(snapshot)`` is called after every round with everything the loop carries
    (state, available, order, rounds, discarded); passing such a snapshot as ``resume``
    continues exactly where it was taken."""
    if not (k1 >= k2 >= k3 >= 1):
        raise SelectlabError(f"selector: need k1 >= k2 >= k3 >= 1, got k1={k1}, k2={k2}, k3={k3}")
    state = np.array(state, dtype=np.float64)
    available = np.ones(len(texts), dtype=bool) if selectable is None else np.array(selectable, dtype=bool)
    result = ZipResult(order=[])
    if resume is not None:
        state, available = np.array(resume["state"], dtype=np.float64), np.array(resume["available"], dtype=bool)
        result.order = [int(i) for i in resume["order"]]
        result.rounds, result.discarded = int(resume["rounds"]), int(resume["discarded"])
        log.info("zip: resuming after round %d (%d selected)", result.rounds, len(result.order))
    engine = RatioEngine(texts, form, n_jobs)
    t_joint = t_round = 0.0
    try:
        while len(result.order) < budget and available.any():
            started = time.perf_counter()
            stage1 = _lowest(np.where(available, state, TAKEN), min(k1, int(available.sum())))
            joint = engine.ratios("joint", result.order, stage1)
            state[stage1] = joint
            stage2 = stage1[_lowest(joint, k2)]
            available[stage2] = False
            t_joint += time.perf_counter() - started

            started = time.perf_counter()
            picked: list[int] = []  # positions in stage2
            for _ in range(min(k3, budget - len(result.order), len(stage2))):
                remaining = np.array([j for j in range(len(stage2)) if j not in picked])
                ratios = np.full(len(stage2), TAKEN)
                ratios[remaining] = engine.ratios("round", [int(stage2[j]) for j in picked], stage2[remaining])
                picked.append(int(_lowest(ratios, 1)[0]))
            picks = [int(stage2[j]) for j in picked]
            t_round += time.perf_counter() - started
            result.order += picks
            result.discarded += len(stage2) - len(picks)
            result.rounds += 1
            if on_round is not None:
                on_round({"state": state, "available": available, "order": np.array(result.order, dtype=np.int64),
                          "rounds": result.rounds, "discarded": result.discarded})
            if result.rounds % 10 == 0:
                log.info("zip: round %d, %d selected (stage 1+2 %.0fs, stage 3 %.0fs so far)",
                         result.rounds, len(result.order), t_joint, t_round)
    finally:
        engine.close()
    result.compressions = engine.compressions
    result.seconds = {"stage1_2": round(t_joint, 2), "stage3": round(t_round, 2)}
    return result
