"""A full or read-only store on a real small file system (tmpfs): one clear error naming the store
folder and what was being written, nothing half-written published, and the same call succeeds once
space is freed or the store is writable again."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from selectlab.infra.store import ArtifactStore, StoreWriteError


def _mount(where: Path, options: str) -> bool:
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (root only; skipped where mounting is not allowed)."""
    where = tmp_path / "store"
    where.mkdir()
    if os.geteuid() != 0 or not _mount(where, "size=256k"):
        pytest.skip("needs root and mount to build a real small file system")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.name.startswith(".tmp-") or p.name.endswith(".partial"))


def test_full_disk_is_one_clear_error_publishes_nothing_and_the_rerun_succeeds(small_disk):
    store = ArtifactStore(small_disk)

    def make(tmp):
        (tmp / "big.bin").write_bytes(os.urandom(512 * 1024))  # twice the disk

    with pytest.raises(StoreWriteError, match=rf"store {small_disk}: no space left on the device while writing "
                                              r"stage/k1.*; [\d,]+ bytes free there; nothing half-written"):
        store.build("stage", "k1", make)
    assert not store.exists("stage", "k1") and _leftovers(small_disk) == []
    _remount(small_disk, "size=2m")  # space freed
    folder = ArtifactStore(small_disk).build("stage", "k1", make)
    assert (folder / "big.bin").stat().st_size == 512 * 1024


def test_full_disk_during_a_batched_stage_keeps_finished_batches(small_disk):
    items = list(range(8))
    calls = []

    def compute(batch):
        calls.append(list(batch))
        return np.zeros((len(batch), 16 * 1024), dtype=np.float32)  # 64 KiB a row: 128 KiB a batch

    with pytest.raises(StoreWriteError, match=r"no space left on the device.* while writing embed/k"):
        ArtifactStore(small_disk).batched("embed", "k", items, 2, compute)
    done = len(calls)
    assert not list(small_disk.rglob("*.tmp.npy"))  # the batch that did not fit left no half file
    _remount(small_disk, "size=4m")
    folder = ArtifactStore(small_disk).batched("embed", "k", items, 2, compute)
    assert np.load(folder / "array.npy").shape == (8, 16 * 1024)
    assert len(calls) - done <= 4 and _leftovers(small_disk) == []  # only the batches not stored are computed


def test_read_only_store_is_one_clear_error_and_writable_again_succeeds(small_disk):
    store = ArtifactStore(small_disk)
    store.build("stage", "old", lambda tmp: (tmp / "a.txt").write_text("a") and None)
    _remount(small_disk, "ro")
    with pytest.raises(StoreWriteError, match=rf"store {small_disk}: the file system is read-only while writing stage/new"):
        ArtifactStore(small_disk).build("stage", "new", lambda tmp: (tmp / "b.txt").write_text("b") and None)
    assert ArtifactStore(small_disk).reusable("stage", "old")  # reading still works
    _remount(small_disk, "rw")
    assert (ArtifactStore(small_disk).build("stage", "new", lambda tmp: (tmp / "b.txt").write_text("b") and None)
            / "b.txt").read_text() == "b"
