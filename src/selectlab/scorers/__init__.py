"""Scorers: one module each, registered by name, selected with ``scorer=<name>``.

A scorer turns the pool into :class:`Scores`: one number per example (higher = selected
first), any per-example columns worth logging (D and I for ADG, each indicator for
InstructMining), optional per-example features for selectors (instruction embeddings for
semantic bins) and the counts of degenerate cases. Adding a scorer = one module with a
function decorated by :func:`register` plus one YAML in ``conf/scorer/``.
"""
from __future__ import annotations

import importlib
import pkgutil
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import SelectlabError
from ..context import RunContext


@dataclass
class Scores:
    ids: list[str]
    score: np.ndarray  # higher = selected first; NaN = not selectable (e.g. IFD >= 1)
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    features: np.ndarray | None = None  # e.g. instruction embeddings for selector=binwise
    counts: dict[str, int] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def save(self, folder: Path) -> dict:
        rows = [{"id": i, "score": _num(self.score[n]), **{k: _num(v[n]) for k, v in self.columns.items()}}
                for n, i in enumerate(self.ids)]
        (folder / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if self.features is not None:
            np.save(folder / "features.npy", self.features)
        return {"counts": self.counts, "columns": list(self.columns), "scorer_meta": self.meta}

    @classmethod
    def load(cls, folder: Path) -> "Scores":
        rows = [json.loads(l) for l in (folder / "scores.jsonl").read_text().splitlines()]
        meta = json.loads((folder / "meta.json").read_text())
        features = np.load(folder / "features.npy") if (folder / "features.npy").exists() else None
        nan = float("nan")
        return cls(
            ids=[r["id"] for r in rows],
            score=np.array([nan if r["score"] is None else r["score"] for r in rows], dtype=np.float64),
            columns={c: np.array([nan if r[c] is None else r[c] for r in rows], dtype=np.float64)
                     for c in meta.get("columns", [])},
            features=features,
            counts=meta.get("counts", {}),
            meta=meta.get("scorer_meta", {}),
        )


def _num(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


SCORERS: dict[str, Callable[[RunContext], Scores]] = {}
# The run sections besides ``scorer``, ``pool`` and ``seed`` that can change a scorer's numbers; the scores
# key hashes only these, so a sweep over ADG's sampler or embedding reuses every other scorer's scores
# (and the random baseline's subsets and fine-tunes). A scorer that declares nothing is keyed on all of them.
SECTIONS = ("backbone", "sampler", "embedding")
READS: dict[str, tuple[str, ...]] = {}


def register(name: str, reads: tuple[str, ...] = SECTIONS):
    unknown = set(reads) - set(SECTIONS)
    if unknown:
        raise ValueError(f"register({name!r}): reads {sorted(unknown)}, not among {SECTIONS}")

    def deco(fn: Callable[[RunContext], Scores]):
        SCORERS[name], READS[name] = fn, tuple(reads)
        return fn

    return deco


def scorer_reads(name: str) -> tuple[str, ...]:
    """The run sections scorer ``name`` reads (imports its module to find out)."""
    get_scorer(name)
    return READS.get(name, SECTIONS)


def get_scorer(name: str) -> Callable[[RunContext], Scores]:
    if name not in SCORERS:
        try:
            importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    if name not in SCORERS:
        known = sorted({*SCORERS, *(m.name for m in pkgutil.iter_modules(__path__))})
        raise SelectlabError(f"scorer.name={name!r} is not registered; known: {', '.join(known)}")
    return SCORERS[name]
