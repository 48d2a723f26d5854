"""Content-addressed artifact store.

Every stage output lives in ``<root>/<stage>/<key>/`` where ``key`` hashes everything that
decides its bytes (inputs, parameters, the stage's code version). A finished artifact has a
``meta.json`` and is moved into place with one ``rename``, so a reader never sees half of it.
Long stages run through :meth:`ArtifactStore.batched`: each finished batch is written
atomically under ``<key>.partial/`` and skipped when the stage is run again, so a killed run
redoes at most one batch. The same mechanism shards a stage across jobs: with
``shard=(index, count)`` a job computes only batches ``b % count == index`` and stops with
:class:`ShardIncomplete`; any later run (the merge job) reuses every finished batch and
assembles the artifact, identical to an unsharded run's.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

log = logging.getLogger(__name__)

META = "meta.json"
RECORDS = "records.jsonl"
ARRAY = "array.npy"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_hash(obj: Any, length: int = 16) -> str:
    """Stable hash of any JSON-able object (dict key order does not matter)."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:length]


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
    return rows


def _save_array(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


class ShardIncomplete(Exception):
    """This job finished its shard of a batched stage; other shards are still missing."""

    def __init__(self, stage: str, key: str, present: int, total: int):
        super().__init__(f"{stage}/{key}: this shard is done; {present} of {total} batches present. "
                         f"Run the remaining shards, then once without shard.count to merge.")
        self.stage, self.key, self.present, self.total = stage, key, present, total


@dataclass
class StageEvent:
    """One stage's outcome in this run, for the manifest and the W&B timings table."""

    stage: str
    key: str
    reused: bool
    seconds: float
    batches_reused: int = 0
    batches_computed: int = 0


@dataclass
class ArtifactStore:
    root: Path
    shard: tuple[int, int] | None = None  # (index, count): this job's share of every batched stage
    events: list[StageEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @staticmethod
    def key(stage: str, version: int | str, **inputs: Any) -> str:
        return content_hash({"stage": stage, "version": version, "inputs": inputs})

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def identity(self, folder: str | Path) -> str:
        """A folder's identity for artifact keys: ``store:<stage>/<key>`` when it is an artifact
        (its name is its content key, so a moved cache keeps its keys), else its absolute path."""
        path, root = Path(folder).resolve(), self.root.resolve()
        return f"store:{path.relative_to(root)}" if path.is_relative_to(root) else str(path)

    def exists(self, stage: str, key: str) -> bool:
        return (self.path(stage, key) / META).is_file()

    def meta(self, stage: str, key: str) -> dict:
        return json.loads((self.path(stage, key) / META).read_text())

    def records(self, stage: str, key: str) -> list[dict]:
        return read_jsonl(self.path(stage, key) / RECORDS)

    def array(self, stage: str, key: str, mmap: bool = True) -> np.ndarray:
        return np.load(self.path(stage, key) / ARRAY, mmap_mode="r" if mmap else None)

    def _publish(self, stage: str, key: str, tmp: Path, meta: dict) -> Path:
        atomic_write_text(tmp / META, json.dumps({"stage": stage, "key": key, **meta}, indent=2, default=str))
        final = self.path(stage, key)
        try:
            os.rename(tmp, final)
        except OSError:  # another process published the same key first: same bytes by construction
            shutil.rmtree(tmp, ignore_errors=True)
            if not self.exists(stage, key):
                raise
        return final

    def build(self, stage: str, key: str, make: Callable[[Path], dict | None], meta: dict | None = None,
              started: float | None = None) -> Path:
        """Return the artifact folder, calling ``make(tmp_dir)`` only when it is not stored yet.

        ``make`` writes its files into ``tmp_dir`` and may return extra metadata. ``started``
        (a ``time.perf_counter()`` value) dates the stage's start when the work ran before the
        call (a fine-tune publishing its export), so its logged seconds cover the work.
        """
        start = time.perf_counter() if started is None else started
        if self.exists(stage, key):
            log.info("reusing artifact %s/%s", stage, key)
            self.events.append(StageEvent(stage, key, True, time.perf_counter() - start))
            return self.path(stage, key)
        tmp = self.root / stage / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            extra = make(tmp) or {}
            final = self._publish(stage, key, tmp, {**(meta or {}), **extra})
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        seconds = time.perf_counter() - start
        log.info("built artifact %s/%s in %.1fs", stage, key, seconds)
        self.events.append(StageEvent(stage, key, False, seconds))
        return final

    def batched(
        self,
        stage: str,
        key: str,
        items: Sequence[Any],
        batch_size: int,
        compute: Callable[[Sequence[Any]], list[dict] | np.ndarray],
        meta: dict | None = None,
    ) -> Path:
        """Run ``compute`` over ``items`` in batches, resumable batch by batch.

        ``compute`` returns either a list of JSON-able rows (concatenated into
        ``records.jsonl``) or an array whose first axis is the batch (stacked into
        ``array.npy``). Finished batches survive a kill and are not computed again.
        """
        start = time.perf_counter()
        if self.exists(stage, key):
            log.info("reusing artifact %s/%s", stage, key)
            self.events.append(StageEvent(stage, key, True, time.perf_counter() - start))
            return self.path(stage, key)
        partial = self.root / stage / f"{key}.partial" / f"bs{batch_size}"
        partial.mkdir(parents=True, exist_ok=True)
        n_batches = (len(items) + batch_size - 1) // batch_size
        reused = computed = 0
        for b in range(n_batches):
            done = list(partial.glob(f"batch{b:06d}.*"))
            if done:
                reused += 1
                continue
            if self.shard and b % self.shard[1] != self.shard[0]:
                continue
            out = compute(items[b * batch_size : (b + 1) * batch_size])
            if isinstance(out, np.ndarray):
                _save_array(partial / f"batch{b:06d}.npy", out)
            else:
                write_jsonl(partial / f"batch{b:06d}.jsonl", out)
            computed += 1
            log.info("%s/%s: batch %d/%d done", stage, key, b + 1, n_batches)
        if reused:
            log.info("%s/%s: resumed, %d of %d batches reused from an earlier run", stage, key, reused, n_batches)
        if reused + computed < n_batches:
            self.events.append(StageEvent(stage, key, False, time.perf_counter() - start, reused, computed))
            raise ShardIncomplete(stage, key, reused + computed, n_batches)

        def assemble(tmp: Path) -> dict:
            files = [next(partial.glob(f"batch{b:06d}.*")) for b in range(n_batches)]
            if files and files[0].suffix == ".npy":
                _save_array(tmp / ARRAY, np.concatenate([np.load(f) for f in files]))
            else:
                rows = [r for f in files for r in read_jsonl(f)]
                write_jsonl(tmp / RECORDS, rows)
            return {"n_items": len(items), "batch_size": batch_size}

        tmp = self.root / stage / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            extra = assemble(tmp)
            final = self._publish(stage, key, tmp, {**(meta or {}), **extra})
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(partial.parent, ignore_errors=True)
        self.events.append(StageEvent(stage, key, False, time.perf_counter() - start, reused, computed))
        return final
