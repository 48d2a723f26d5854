"""Content-addressed artifact store that many jobs can share.

Every stage output lives in ``<root>/<stage>/<key>/`` where ``key`` hashes everything that
decides its bytes (inputs, parameters, the stage's code version). A finished artifact has a
``meta.json`` and is moved into place with one ``rename``, so a reader never sees half of it.
Long stages run through :meth:`ArtifactStore.batched`: each finished batch is written
atomically under ``<key>.partial/`` and skipped when the stage is run again, so a killed run
redoes at most one batch. The same mechanism shards a stage across jobs: with
``shard=(index, count)`` a job computes only batches ``b % count == index`` and stops with
:class:`ShardIncomplete`; any later run (the merge job) reuses every finished batch and
assembles the artifact, identical to an unsharded run's.

Sharing: jobs on one cache (a sweep, a Slurm array) coordinate through file locks
(``filelock``; kernel ``flock`` locks, which die with their process, so the lock of a killed
job is free at once and its work is taken over):
- a lock per artifact (``<root>/.locks/<stage>/<key>.lock``) held while a job builds it
  (others wait, then reuse) and while a batched artifact is assembled and its ``.partial``
  folder cleared;
- a lock per batch (``<key>.partial/bs<N>/.locks/``): a job computes a batch only when it
  wins the batch's lock and skips batches that others hold, then waits for those, so
  concurrent jobs split the batches instead of duplicating them;
- every job that works in a ``.partial`` folder holds a lock file under its ``.users/``;
  the folder is removed by the last one to leave, once the artifact is published;
- scratch folders (``.tmp-*``) carry an owner lock; one whose owner is gone and that is
  older than ``tmp_max_age_s`` is collected (at once when its owner lock shows the job died).

Integrity: ``meta.json`` lists every file with its size, sha256 and (``.jsonl``) row count.
Reuse checks sizes and row counts (``verify="sizes"``, config ``store.verify``) or also the
hashes (``verify="full"``); a damaged artifact is reported, moved aside and rebuilt. A batch
file is checked (row count; ``.npy`` header against its size) before it is reused, and a
damaged one is reported and recomputed.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import shutil
import time
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from filelock import FileLock, Timeout

from . import preemption
from .paths import data_dir, portable
from ..errors import SelectlabError
from .progress import advance, move_to, stage_bar

log = logging.getLogger(__name__)

META = "meta.json"
RECORDS = "records.jsonl"
ARRAY = "array.npy"
LOCKS = ".locks"
USERS = ".users"
TMP_PREFIX = ".tmp-"
VERIFY_LEVELS = ("sizes", "full")


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
                raise SelectlabError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
    return rows


def _save_numpy(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` (np.save / np.savez into a temporary name beside ``path``), then an atomic
    rename; a failed write (a full disk's short write) leaves no half file behind."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp{path.suffix}")
    try:
        write(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _save_array(path: Path, array: np.ndarray) -> None:
    _save_numpy(path, lambda tmp: np.save(tmp, array))


# ---------------------------------------------------------------- integrity
def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def count_rows(path: Path) -> int:
    """Lines of a JSONL file (newline bytes; every writer here ends each row with one)."""
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n


def describe_files(folder: Path) -> dict[str, dict]:
    """Size, sha256 and (JSONL) row count of every file under ``folder`` except its meta.json."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name == META:
            continue
        files[name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        if path.suffix == ".jsonl":
            files[name]["rows"] = count_rows(path)
    return files


def unrecorded_damage(folder: Path) -> str | None:
    """What is wrong with an artifact written before integrity records existed, as far as its files
    can tell: every JSON and JSONL file parses to its last line, every .npy array reads whole."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != META):
        name = path.relative_to(folder).as_posix()
        try:
            if path.suffix == ".jsonl":
                with open(path, encoding="utf-8") as f:
                    for line in f:
                        if line.strip():
                            json.loads(line)
            elif path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            elif path.suffix == ".npy":
                np.load(path, mmap_mode="r").sum()  # reads every byte: a short file fails
        except (OSError, ValueError, EOFError) as e:
            return f"{name} does not read whole ({type(e).__name__}: {str(e)[:80]})"
    return None


def artifact_damage(folder: Path, full: bool) -> str | None:
    """What is wrong with a published artifact (None: intact). One written before integrity records
    existed is checked as far as its files can tell (:func:`unrecorded_damage`)."""
    try:
        files = json.loads((folder / META).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError) as e:
        return f"{META} is unreadable ({e})"
    if files is None:
        return unrecorded_damage(folder)
    for name, want in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        have = {"bytes": path.stat().st_size, **({"rows": count_rows(path)} if "rows" in want else {})}
        if wrong := [k for k in have if have[k] != want[k]]:
            return (f"{name} has {' and '.join(f'{have[k]} {k}' for k in wrong)}, "
                    f"{META} records {' and '.join(f'{want[k]} {k}' for k in wrong)}")
        if full and file_sha256(path) != want["sha256"]:
            return f"{name}'s sha256 differs from the one {META} records"
    return None


def batch_damage(path: Path, n_rows: int) -> str | None:
    """What is wrong with a stored batch of ``n_rows`` items (None: usable)."""
    try:
        if path.suffix == ".npy":
            with open(path, "rb") as f:
                fmt = np.lib.format
                # header versions 2.0 and 3.0 share a layout (3.0 only allows UTF-8 field names)
                read_header = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else fmt.read_array_header_2_0
                shape, _, dtype = read_header(f)
                need = f.tell() + math.prod(shape) * dtype.itemsize
            if (size := path.stat().st_size) != need:
                return f"{size} bytes, its header {shape} needs {need}"
            rows = shape[0] if shape else 0
        else:
            rows = len(read_jsonl(path))
            if not path.read_bytes().endswith(b"\n"):
                return "its last row is cut"
    except (OSError, ValueError, EOFError) as e:
        return f"unreadable ({e})"
    return None if rows == n_rows else f"{rows} rows for a batch of {n_rows}"


# ---------------------------------------------------------------- store
DISK_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is used up",
               errno.EROFS: "the file system is read-only"}


class StoreWriteError(SelectlabError):
    """The store's disk refused a write (full, over quota, read-only): nothing half-written was published."""


@contextmanager
def disk_errors(root: Path, what: str) -> Iterator[None]:
    """Turn a full or read-only disk under the store into one clear error naming the store folder,
    what was being written and the space left; any other error passes unchanged."""
    try:
        yield
    except OSError as e:
        short_write = e.errno is None and "written" in str(e)  # numpy's tofile: "N requested and M written"
        if e.errno not in DISK_ERRORS and not short_write:
            raise
        reason = DISK_ERRORS.get(e.errno, "no space left on the device (a short write)")
        try:
            free = f"; {shutil.disk_usage(root).free:,} bytes free there"
        except OSError:
            free = ""
        where = f" ({e.filename})" if e.filename else ""
        raise StoreWriteError(f"store {root}: {reason} while writing {what}{where}{free}; nothing "
                              f"half-written was published: free space (or make the store writable) and run the "
                              f"same command again") from None


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
    batches_reused: int = 0  # present already, or computed meanwhile by another job
    batches_computed: int = 0  # computed by this job


@contextmanager
def holding(lock: FileLock, what: str) -> Iterator[None]:
    """Hold ``lock``; say so when another job holds it and this one waits."""
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for %s (another job holds %s)", what, lock.lock_file)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _free(lock_file: Path) -> bool:
    """Whether nobody holds ``lock_file`` (a job that died holds nothing)."""
    probe = FileLock(lock_file)
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return False
    probe.release()
    return True


@dataclass
class ArtifactStore:
    root: Path
    shard: tuple[int, int] | None = None  # (index, count): this job's share of every batched stage
    verify: str = "sizes"  # config store.verify: what reuse checks ("sizes": sizes and row counts; "full": + sha256)
    tmp_max_age_s: float = 3600.0  # scratch folders of dead jobs older than this are collected
    events: list[StageEvent] = field(default_factory=list)
    _intact: set = field(default_factory=set, repr=False)  # (stage, key) verified by this store
    _locks: dict = field(default_factory=dict, repr=False)
    _swept: set = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.verify not in VERIFY_LEVELS:
            raise SelectlabError(f"store.verify={self.verify!r}; choose one of {VERIFY_LEVELS}")

    @staticmethod
    def key(stage: str, version: int | str, **inputs: Any) -> str:
        """The artifact's key: a hash of its stage, version and inputs, with every path inside the data
        folder written ``data:<relative>`` (``paths.portable``), so that machines that keep the shipped
        data in different places compute the same keys. (A model folder enters a key by its own
        identity, e.g. ``sampling.backbone_identity``, which this leaves as it is.)"""
        return content_hash({"stage": stage, "version": version, "inputs": portable(inputs, {"data": data_dir()})})

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def identity(self, folder: str | Path) -> str:
        """A folder's identity for artifact keys: ``store:<stage>/<key>`` when it is an artifact
        (its name is its content key, so a moved cache keeps its keys), else its absolute path."""
        path, root = Path(folder).resolve(), self.root.resolve()
        return f"store:{path.relative_to(root)}" if path.is_relative_to(root) else str(path)

    def exists(self, stage: str, key: str) -> bool:
        """Published (not checked; :meth:`reusable` checks)."""
        return (self.path(stage, key) / META).is_file()

    def meta(self, stage: str, key: str) -> dict:
        return json.loads((self.path(stage, key) / META).read_text())

    def records(self, stage: str, key: str) -> list[dict]:
        return read_jsonl(self.path(stage, key) / RECORDS)

    def array(self, stage: str, key: str, mmap: bool = True) -> np.ndarray:
        return np.load(self.path(stage, key) / ARRAY, mmap_mode="r" if mmap else None)

    # ------------------------------------------------------------ resumable progress
    # A long computation inside one artifact's build (ZIP's rounds) keeps arrays of its progress
    # beside the artifact, so a killed run resumes where it stopped; the caller holds the build's lock.
    def _progress(self, stage: str, key: str) -> Path:
        return self.root / stage / f"{key}.progress.npz"

    def load_progress(self, stage: str, key: str) -> dict | None:
        path = self._progress(stage, key)
        return dict(np.load(path)) if path.exists() else None

    def save_progress(self, stage: str, key: str, arrays: dict) -> None:
        path = self._progress(stage, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_numpy(path, lambda tmp: np.savez(tmp, **arrays))

    def clear_progress(self, stage: str, key: str) -> None:
        self._progress(stage, key).unlink(missing_ok=True)

    # ------------------------------------------------------------ locks and scratch folders
    def lock(self, stage: str, key: str) -> FileLock:
        """The artifact's lock (one object per artifact, so a job may take it again while holding it)."""
        path = self.root / LOCKS / stage / f"{key}.lock"
        if path not in self._locks:
            self._locks[path] = FileLock(path)
        return self._locks[path]

    def _scratch_lock(self, tmp: Path) -> Path:
        return self.root / LOCKS / tmp.parent.name / f"{tmp.name}.lock"

    @contextmanager
    def _scratch(self, stage: str, key: str) -> Iterator[Path]:
        """A fresh ``.tmp-`` folder, owned (locked) while this job uses it; removed if the body fails."""
        tmp = self.root / stage / f"{TMP_PREFIX}{key}-{uuid.uuid4().hex[:8]}"
        owner = FileLock(self._scratch_lock(tmp))
        owner.acquire()
        try:
            tmp.mkdir(parents=True)
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            owner.release()
            Path(owner.lock_file).unlink(missing_ok=True)

    def collect_garbage(self, stage: str) -> None:
        """Remove ``.tmp-*`` folders of ``stage`` whose owner is gone: at once when its owner lock is on
        disk and free (the job died holding it: the kernel frees a dead process's ``flock``), else once
        older than ``tmp_max_age_s`` (damaged artifacts moved aside, kept that long to be looked at)."""
        now = time.time()
        for tmp in (self.root / stage).glob(f"{TMP_PREFIX}*"):
            try:
                age = now - tmp.stat().st_mtime
            except FileNotFoundError:
                continue
            lock_file = self._scratch_lock(tmp)
            owned = lock_file.exists()  # before _free, whose probe creates the file
            if not _free(lock_file) or (not owned and age < self.tmp_max_age_s):
                continue
            shutil.rmtree(tmp, ignore_errors=True)
            lock_file.unlink(missing_ok=True)
            log.info("collected %s (left %.1f h ago by a job that is gone)", tmp, age / 3600)

    def _sweep_once(self, stage: str) -> None:
        if stage not in self._swept:
            self._swept.add(stage)
            self.collect_garbage(stage)

    # ------------------------------------------------------------ integrity
    def reusable(self, stage: str, key: str) -> bool:
        """Whether the artifact is published and intact; a damaged one is reported, moved aside and False returned."""
        if (stage, key) in self._intact and self.exists(stage, key):
            return True
        if not self.exists(stage, key):
            return False
        folder, full = self.path(stage, key), self.verify == "full"
        if artifact_damage(folder, full) is not None:
            with holding(self.lock(stage, key), f"{stage}/{key}"):
                # under the lock: another job may have moved it aside and rebuilt it meanwhile
                if not self.exists(stage, key):
                    return False
                if (problem := artifact_damage(folder, full)) is not None:
                    self._move_aside(folder, problem)
                    return False
        self._record_files_once(stage, key)
        self._intact.add((stage, key))
        return True

    def _record_files_once(self, stage: str, key: str) -> None:
        """An intact artifact written before integrity records existed gets them now, once (under its
        lock), so every later reuse checks its sizes and rows like any other."""
        folder = self.path(stage, key)
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        if "files" in meta:
            return
        with holding(self.lock(stage, key), f"{stage}/{key}"):
            meta = json.loads((folder / META).read_text(encoding="utf-8"))
            if "files" not in meta:
                atomic_write_text(folder / META, json.dumps({**meta, "files": describe_files(folder),
                                                             "files_recorded": "on reuse, after the check"},
                                                            indent=2, default=str))
                log.info("artifact %s/%s had no integrity records: its files read whole; records written", stage, key)

    def _move_aside(self, folder: Path, problem: str) -> None:
        """Report a damaged artifact and rename it to scratch (collected later, so a job still reading it
        is not cut off). The caller holds the artifact's lock."""
        aside = folder.with_name(f"{TMP_PREFIX}damaged-{folder.name}-{uuid.uuid4().hex[:8]}")
        os.rename(folder, aside)
        os.utime(aside)  # its age counts from now
        log.warning("damaged artifact %s: %s; moved aside to %s, rebuilding it", folder, problem, aside.name)

    def _reused(self, stage: str, key: str, start: float) -> Path:
        log.info("reusing artifact %s/%s", stage, key)
        self.events.append(StageEvent(stage, key, True, time.perf_counter() - start))
        return self.path(stage, key)

    def _publish(self, stage: str, key: str, tmp: Path, meta: dict) -> Path:
        files = describe_files(tmp)
        atomic_write_text(tmp / META, json.dumps({"stage": stage, "key": key, **meta, "files": files},
                                                 indent=2, default=str))
        final = self.path(stage, key)
        with holding(self.lock(stage, key), f"{stage}/{key}"):
            if self.reusable(stage, key):  # another job published the same key first: same bytes by construction
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            if final.exists():  # a folder without meta.json: no writer here leaves one
                self._move_aside(final, f"{META} is missing")
            os.rename(tmp, final)
        self._intact.add((stage, key))
        return final

    # ------------------------------------------------------------ stages
    def build(self, stage: str, key: str, make: Callable[[Path], dict | None], meta: dict | None = None,
              started: float | None = None, exclusive: bool = True) -> Path:
        """Return the artifact folder, calling ``make(tmp_dir)`` only when it is not stored yet.

        ``make`` writes its files into ``tmp_dir`` and may return extra metadata. ``started``
        (a ``time.perf_counter()`` value) dates the stage's start when the work ran before the
        call (a fine-tune publishing its export), so its logged seconds cover the work.
        ``exclusive``: hold the artifact's lock while making it, so a concurrent job waits and
        reuses it; pass False when ``make``'s heavy work runs in :meth:`batched` stages (which
        concurrent jobs split) and the rest is cheap (both jobs make it, the first publishes).
        """
        start = time.perf_counter() if started is None else started
        self._sweep_once(stage)
        if self.reusable(stage, key):
            return self._reused(stage, key, start)
        with disk_errors(self.root, f"{stage}/{key}"), \
                holding(self.lock(stage, key), f"{stage}/{key}") if exclusive else nullcontext():
            if exclusive and self.reusable(stage, key):  # built by another job while this one waited
                return self._reused(stage, key, start)
            with self._scratch(stage, key) as tmp:
                extra = make(tmp) or {}
                final = self._publish(stage, key, tmp, {**(meta or {}), **extra})
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
        """Run ``compute`` over ``items`` in batches, resumable batch by batch and shared between jobs.

        ``compute`` returns one entry per item: either a list of JSON-able rows (concatenated
        into ``records.jsonl``) or an array whose first axis is the batch (stacked into
        ``array.npy``). Finished batches survive a kill and are not computed again.
        """
        start = time.perf_counter()
        self._sweep_once(stage)
        if self.reusable(stage, key):
            self._leave_partial(stage, key, None)  # a job killed between publishing and clean-up left it
            return self._reused(stage, key, start)
        n_batches = (len(items) + batch_size - 1) // batch_size
        with disk_errors(self.root, f"{stage}/{key}"), self._partial_user(stage, key) as partial_root:
            partial = partial_root / f"bs{batch_size}"
            reused, computed = self._fill(stage, key, partial, items, batch_size, compute)
            if self.reusable(stage, key):  # another job assembled it while this one was filling
                self.events.append(StageEvent(stage, key, True, time.perf_counter() - start, reused, computed))
                return self.path(stage, key)
            if reused:
                log.info("%s/%s: %d of %d batches reused (earlier runs or other jobs)", stage, key, reused, n_batches)
            if reused + computed < n_batches:
                self.events.append(StageEvent(stage, key, False, time.perf_counter() - start, reused, computed))
                raise ShardIncomplete(stage, key, reused + computed, n_batches)
            final = self._assemble(stage, key, partial, n_batches, {**(meta or {}), "n_items": len(items),
                                                                     "batch_size": batch_size})
        self.events.append(StageEvent(stage, key, False, time.perf_counter() - start, reused, computed))
        return final

    @contextmanager
    def _partial_user(self, stage: str, key: str) -> Iterator[Path]:
        """The ``.partial`` folder, registered as in use by this job while the body runs."""
        root = self.root / stage / f"{key}.partial"
        me = FileLock(root / USERS / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.lock")
        with holding(self.lock(stage, key), f"{stage}/{key}"):  # the folder is never cleared while a job enters
            me.acquire()
        try:
            yield root
        finally:
            self._leave_partial(stage, key, me)

    def _leave_partial(self, stage: str, key: str, me: FileLock | None) -> None:
        """Deregister ``me``; once the artifact is published, the last job to leave removes the folder."""
        root = self.root / stage / f"{key}.partial"
        if me is None and not root.exists():
            return
        with holding(self.lock(stage, key), f"{stage}/{key}"):
            if me is not None:
                me.release()
                Path(me.lock_file).unlink(missing_ok=True)
            if self.exists(stage, key) and all(_free(u) for u in (root / USERS).glob("*.lock")):
                shutil.rmtree(root, ignore_errors=True)

    def _stored_batch(self, partial: Path, b: int) -> Path | None:
        return next((p for p in (partial / f"batch{b:06d}.npy", partial / f"batch{b:06d}.jsonl") if p.is_file()), None)

    def _fill(self, stage: str, key: str, partial: Path, items: Sequence[Any], batch_size: int,
              compute: Callable) -> tuple[int, int]:
        """Compute this job's missing batches: those no other job holds first, then (waiting)
        those that others held, in case their job died. Returns (batches present, computed here)."""
        n_batches = (len(items) + batch_size - 1) // batch_size
        with stage_bar(stage, len(items)) as bar:
            return self._fill_batches(stage, key, partial, items, batch_size, compute, n_batches, bar)

    def _fill_batches(self, stage: str, key: str, partial: Path, items: Sequence[Any], batch_size: int,
                      compute: Callable, n_batches: int, bar) -> tuple[int, int]:
        reused = computed = 0
        held_elsewhere = []
        for b in range(n_batches):
            move_to(min(b * batch_size, len(items)))
            if self.reusable(stage, key):  # another job published it: nothing left to do
                break
            n_rows = len(items[b * batch_size : (b + 1) * batch_size])
            stored = self._stored_batch(partial, b)
            if stored is not None and batch_damage(stored, n_rows) is None:
                reused += 1
                continue
            if self.shard and b % self.shard[1] != self.shard[0]:
                continue
            lock = FileLock(partial / LOCKS / f"batch{b:06d}.lock")
            try:
                lock.acquire(timeout=0)
            except Timeout:
                held_elsewhere.append(b)
                continue
            try:
                done = self._compute_batch(stage, key, partial, b, n_batches, items, batch_size, compute)
            finally:
                lock.release()
            computed, reused = computed + done, reused + (not done)
        move_to(len(items) if not held_elsewhere else bar.n)
        for b in held_elsewhere:  # done by now, or still being computed (wait), or its job died (take over)
            with holding(FileLock(partial / LOCKS / f"batch{b:06d}.lock"), f"batch {b + 1}/{n_batches} of {stage}/{key}"):
                done = self._compute_batch(stage, key, partial, b, n_batches, items, batch_size, compute)
            computed, reused = computed + done, reused + (not done)
            advance(len(items[b * batch_size : (b + 1) * batch_size]))
        return reused, computed

    def _compute_batch(self, stage: str, key: str, partial: Path, b: int, n_batches: int, items: Sequence[Any],
                       batch_size: int, compute: Callable) -> bool:
        """Compute batch ``b`` unless it is stored and usable (the caller holds its lock). True if computed."""
        batch = items[b * batch_size : (b + 1) * batch_size]
        stored = self._stored_batch(partial, b)
        if stored is not None:
            problem = batch_damage(stored, len(batch))
            if problem is None:
                return False
            log.warning("damaged batch %s: %s; recomputing it", stored, problem)
            stored.unlink()
        preemption.check(f"batch {b + 1}/{n_batches} of {stage}/{key}")
        out = compute(batch)
        if len(out) != len(batch):
            raise RuntimeError(f"{stage}: compute returned {len(out)} entries for a batch of {len(batch)} items "
                               f"(it must return one per item)")
        if isinstance(out, np.ndarray):
            _save_array(partial / f"batch{b:06d}.npy", out)
        else:
            write_jsonl(partial / f"batch{b:06d}.jsonl", out)
        log.info("%s/%s: batch %d/%d done", stage, key, b + 1, n_batches)
        return True

    def _assemble(self, stage: str, key: str, partial: Path, n_batches: int, meta: dict) -> Path:
        """Stack every batch into the artifact and publish it (under its lock: one job assembles)."""
        with holding(self.lock(stage, key), f"{stage}/{key}"):
            if self.reusable(stage, key):
                return self.path(stage, key)
            with self._scratch(stage, key) as tmp:
                files = [self._stored_batch(partial, b) for b in range(n_batches)]
                if files and files[0].suffix == ".npy":
                    _save_array(tmp / ARRAY, np.concatenate([np.load(f) for f in files]))
                else:
                    write_jsonl(tmp / RECORDS, [r for f in files for r in read_jsonl(f)])
                return self._publish(stage, key, tmp, meta)
