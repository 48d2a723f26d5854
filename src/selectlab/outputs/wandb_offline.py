"""Read an offline W&B run (``offline-run-*/run-*.wandb``) back into Python.

The file is a LevelDB-style log of protobuf ``Record`` messages: a 7-byte header, then
32 KiB blocks of chunks (4-byte checksum, 2-byte little-endian length, 1-byte type:
1 full, 2 first, 3 middle, 4 last). Tests and analysis/ use this to check what a run
really logged, without a W&B server.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SelectlabError

BLOCK = 32 * 1024
HEADER = 7
CHUNK_HEADER = 7


def iter_records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise SelectlabError(f"{path}: not a W&B run file")
    pos, pending = HEADER, b""
    while pos + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER:
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def _item_key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


@dataclass
class OfflineRun:
    run_id: str
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    tables: dict[str, dict] = field(default_factory=dict)  # name -> {"columns", "data"} (last logged)
    artifacts: list[str] = field(default_factory=list)


def read_run(run_dir: Path) -> OfflineRun:
    """``run_dir``: an ``offline-run-*`` folder."""
    run_dir = Path(run_dir)
    wandb_file = next(run_dir.glob("*.wandb"))
    run = OfflineRun(run_id=wandb_file.stem.removeprefix("run-"))
    for rec in iter_records(wandb_file):
        kind = rec.WhichOneof("record_type")
        if kind in ("config", "run"):
            for item in (rec.config if kind == "config" else rec.run.config).update:
                run.config[_item_key(item)] = json.loads(item.value_json)
        elif kind == "summary":
            for item in rec.summary.update:
                run.summary[_item_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            run.history.append({_item_key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "artifact":
            run.artifacts.append(rec.artifact.name)
    for row in run.history:
        for key, value in row.items():
            if key.endswith("/_type") and value == "table-file":
                name = key.removesuffix("/_type")
                run.tables[name] = json.loads((run_dir / "files" / row[f"{name}/path"]).read_text())
    return run


def find_runs(root: Path) -> list[Path]:
    return sorted(Path(root).rglob("offline-run-*"))
