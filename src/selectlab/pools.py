"""Instruction pools, normalised to records ``{id, instruction, input, output, source}``.

Ids are stable: they follow the row's position in the original release (for Alpaca 52K,
the index into ``alpaca_data.json``), so a subset names the same examples on every machine.
A user's rows (pool=json) keep their own ``id``; rows without one get an id derived from their
text, so inserting or removing a row elsewhere in the file leaves every other id as it was.
Malformed files fail with the file and line; records with an empty instruction and exact
duplicates are reported by count and id, never dropped silently.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from .infra.json_files import PoolError, json_rows, read_text
from .schema import typed
from .schema.run import LOADERS as LOADER_NAMES, FlanCotPool, HubPool, PoolConfig

log = logging.getLogger(__name__)


@dataclass
class Pool:
    name: str
    records: list[dict]
    empty_instruction_ids: list[str] = field(default_factory=list)
    n_total: int = 0  # rows in the source before limit / empty / duplicate filtering
    duplicate_ids: list[str] = field(default_factory=list)  # repeats of an earlier record (dropped unless keep)


# Where each shipped pool's data lives under the data dir (conf/pool/<name>.yaml's path). A shipped
# loader reads only this copy: another file goes through pool=json, which reads any JSON/JSONL file.
SHIPPED_POOLS = {
    "alpaca": "pools/alpaca_52k",
    "flan_cot": "pools/flan_cot",
    "lima": "pools/lima/lima.json",
    "code_alpaca": "pools/code_alpaca_2k/code_alpaca_2k.json",
    "self_instruct_seed": "pools/self_instruct_seed/seed_tasks.jsonl",
}


def is_shipped_location(loader: str | None, path: str | None) -> bool:
    """The pool reads its shipped copy (conf/pool/<name>.yaml's own path, under the data dir)."""
    from .infra.paths import data_dir

    return (loader in SHIPPED_POOLS and path is not None
            and Path(path).resolve() == (data_dir() / SHIPPED_POOLS[loader]).resolve())


def demo_slice(size: int, loader: str | None, path: str | None, gguf_package: str | None) -> int | None:
    """``pool.limit``'s default (conf/config.yaml): the CPU demo's ``size``-example slice where the run is
    the documented demo (a shipped pool on the embedded backbone), else None (the whole pool: your own
    file, another backbone). A pool.limit given on the command line or in a preset replaces it."""
    return int(size) if gguf_package and is_shipped_location(loader, path) else None


def pool_source(cfg) -> PoolConfig:
    """A pool or held-out section as its loader's schema dataclass (HubPool, FlanCotPool, else
    PoolConfig): the composed section, or a mapping (a run record's config, a test's or a bench's
    literal); keys the section does not have (``duplicates`` of the held-out set, ``split`` of an
    old record) take the schema's defaults."""
    cfg = typed(cfg)
    values = dict(cfg) if isinstance(cfg, Mapping) else vars(cfg)
    schema = {"hub": HubPool, "flan_cot": FlanCotPool}.get(values["loader"], PoolConfig)
    if isinstance(cfg, schema):
        return cfg
    fields = {f.name for f in dataclasses.fields(schema)}
    return schema(**{k: v for k, v in values.items() if k in fields})


def check_pool_location(pool: PoolConfig) -> None:
    """``pool.path`` set for a shipped or hub-backed pool: that loader would read (or ignore) it as its
    own data; a user's file goes through pool=json."""
    loader, path = pool.loader, pool.path
    if loader == "hub" and path:
        raise PoolError(f"pool.path={path} is given with pool={pool.name}, which loads {pool.hub_id} "
                        f"from the hub and ignores pool.path; for a local copy use pool=json pool.path={path}")
    if loader in SHIPPED_POOLS and path and not is_shipped_location(loader, path):
        raise PoolError(f"pool.path={path} is given with pool={pool.name} (loader {loader}), which reads only "
                        f"its shipped copy; for your own file use pool=json pool.path={path}")


def content_id(instruction: str, inp: str, output: str) -> str:
    """An id from a row's (stripped) texts: the same row gets the same id wherever it sits in the file."""
    digest = hashlib.sha256(json.dumps([instruction, inp, output], ensure_ascii=False).encode("utf-8"))
    return f"user-{digest.hexdigest()[:12]}"


def _record(rid: str, instruction, inp, output, source: str, where: str) -> dict:
    for fieldname, value in (("instruction", instruction), ("input", inp), ("output", output)):
        if value is not None and not isinstance(value, str):
            raise PoolError(f"{where}: field {fieldname!r} must be a string, got {type(value).__name__}")
    return {"id": rid, "instruction": (instruction or "").strip(), "input": (inp or "").strip(),
            "output": (output or "").strip(), "source": source}


SHAPE_FIELDS = {"id", "instruction", "input", "output", "context", "response", "category", "source", "dialogs"}
USER_ROLES, ASSISTANT_ROLES = {"user", "human"}, {"assistant", "gpt"}


def _last_exchange(turns, where: str) -> tuple[str, str]:
    """(last user message, the assistant reply after it) of a chat record: ``dialogs`` (MIG's
    annotated pools) as role/content or from/value turns; earlier turns are not kept."""
    if not isinstance(turns, list):
        raise PoolError(f"{where}: 'dialogs' must be a list of turns")
    roles = [(t.get("role", t.get("from")), t.get("content", t.get("value"))) for t in turns if isinstance(t, dict)]
    for k in range(len(roles) - 2, -1, -1):
        if roles[k][0] in USER_ROLES and roles[k + 1][0] in ASSISTANT_ROLES:
            return roles[k][1], roles[k + 1][1]
    raise PoolError(f"{where}: 'dialogs' has no user turn followed by an assistant turn")


def _from_instruction_rows(path: Path, prefix: str, source: str, offset: int = 0, keep_extra: bool = False) -> list[dict]:
    """Alpaca shape (instruction/input/output), Dolly shape (instruction/context/response) or,
    with ``keep_extra``, MIG's chat shape (``dialogs``: the last user/assistant exchange).
    ``keep_extra``: other top-level fields (e.g. MIG's ``annotation`` with InsTag tags and DEITA
    scores) stay on the record, so scorers and selectors can read them."""
    out, line_of_id = [], {}
    for i, (line_no, row) in enumerate(json_rows(path)):
        where = f"{path}:{line_no}"
        if keep_extra and "instruction" not in row and "dialogs" in row:
            row = {**row, **dict(zip(("instruction", "output"), _last_exchange(row["dialogs"], where)))}
        if "instruction" not in row:
            raise PoolError(f"{where}: record has no 'instruction' field (keys: {sorted(row)})")
        if "output" in row:
            inp, output = row.get("input", ""), row["output"]
        elif "response" in row:
            inp, output = row.get("context", ""), row["response"]
        else:
            raise PoolError(f"{where}: record has neither 'output' (Alpaca) nor 'response' (Dolly)")
        # a user's own ``source`` field names the record's source (kept into subset.jsonl)
        own_source = row.get("source") if prefix == "user" else None
        record = _record("", row["instruction"], inp, output, own_source or row.get("category", source), where)
        if prefix != "user":
            rid = f"{prefix}-{offset + i:05d}"
        elif "id" in row:
            rid = str(row["id"])
        else:  # from the text; a repeat of an earlier row is told apart by its occurrence (-2, -3, ...)
            rid = base = content_id(record["instruction"], record["input"], record["output"])
            occurrence = 1
            while rid in line_of_id:
                occurrence += 1
                rid = f"{base}-{occurrence}"
        if rid in line_of_id:
            raise PoolError(f"{where}: id {rid!r} is already used at line {line_of_id[rid]}; ids must be unique")
        line_of_id[rid] = line_no
        record["id"] = rid
        if keep_extra:
            record.update({k: v for k, v in row.items() if k not in SHAPE_FIELDS})
        out.append(record)
    return out


def load_alpaca(root: Path) -> list[dict]:
    parts = sorted(root.glob("alpaca_data_part*.json"))
    if len(parts) != 18:
        raise PoolError(f"{root}: expected the 18 Alpaca 52K parts, found {len(parts)}")
    records: list[dict] = []
    for part in parts:
        records += _from_instruction_rows(part, "alpaca", "alpaca_52k", offset=len(records))
    return records


def load_flan_cot(root: Path, answer_format: str = "{rationale} So the answer is {answer}.") -> list[dict]:
    """FLAN v2 CoT triples (question, answer, rationale); literal ``\\n`` become newlines."""
    records = []
    files = sorted(root.glob("*_train.tsv"))
    if not files:
        raise PoolError(f"{root}: no *_train.tsv files")
    for path in files:
        task = path.name.removesuffix("_train.tsv")
        rows = csv.reader(io.StringIO(read_text(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
        for line_no, row in enumerate(rows, 1):
            if len(row) != 3:
                raise PoolError(f"{path}:{line_no}: expected 3 tab-separated fields, got {len(row)}")
            question, answer, rationale = (c.replace("\\n", "\n").strip() for c in row)
            output = answer_format.format(rationale=rationale, answer=answer)
            records.append(_record(f"cot-{task}-{line_no - 1:05d}", question, "", output, f"flan_cot/{task}",
                                   f"{path}:{line_no}"))
    return records


def load_self_instruct_seed(path: Path) -> list[dict]:
    out = []
    for line_no, row in json_rows(path):
        where = f"{path}:{line_no}"
        try:
            inst = row["instances"][0]
            out.append(_record(row["id"], row["instruction"], inst.get("input", ""), inst["output"],
                               "self_instruct_seed", where))
        except (KeyError, IndexError, TypeError):
            raise PoolError(f"{where}: expected id, instruction and instances[0].output") from None
    return out


def load_hub(hub_id: str, split: str, prefix: str) -> list[dict]:
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise PoolError(
            f"pool {prefix!r} is hub-backed ({hub_id}) and this run is offline; its data is not shipped. "
            f"Go online (unset HF_HUB_OFFLINE/HF_DATASETS_OFFLINE) or give a local copy with pool=json pool.path=FILE.json"
        )
    try:
        import datasets
    except ImportError:
        raise PoolError(f"pool {prefix!r} loads {hub_id} from the hub and needs `pip install datasets`") from None
    rows = datasets.load_dataset(hub_id, split=split)
    return [_record(f"{prefix}-{i:05d}", r["instruction"], r.get("input", r.get("context", "")),
                    r.get("output", r.get("response", "")), prefix, f"{hub_id}[{i}]") for i, r in enumerate(rows)]


LOADERS: dict[str, Callable[[PoolConfig], list[dict]]] = {
    "alpaca": lambda c: load_alpaca(Path(c.path)),
    "flan_cot": lambda c: load_flan_cot(Path(c.path), c.answer_format),
    "lima": lambda c: _from_instruction_rows(Path(c.path), "lima", "lima"),
    "code_alpaca": lambda c: _from_instruction_rows(Path(c.path), "code_alpaca", "code_alpaca_2k"),
    "self_instruct_seed": lambda c: load_self_instruct_seed(Path(c.path)),
    "json": lambda c: _from_instruction_rows(Path(c.path), "user", Path(c.path).stem, keep_extra=True),
    "hub": lambda c: load_hub(c.hub_id, c.split, c.name),
}
assert tuple(LOADERS) == LOADER_NAMES, "a loader is named in selectlab.schema.run.LOADERS too"


def load_pool(cfg, seed: int) -> Pool:
    """Load, validate, report empty instructions, then apply ``limit`` (:func:`take`). ``cfg``: a
    pool or held-out section, or a mapping (:func:`pool_source`)."""
    cfg = pool_source(cfg)
    if cfg.loader not in LOADERS:
        raise PoolError(f"pool.loader={cfg.loader!r} is not one of {sorted(LOADERS)}")
    if cfg.loader != "hub" and not Path(cfg.path).exists():
        raise PoolError(f"pool {cfg.name!r}: pool.path={cfg.path} does not exist")
    records = LOADERS[cfg.loader](cfg)
    where = cfg.path or cfg.hub_id
    if not records:
        raise PoolError(f"pool {cfg.name!r}: {where} holds no records; a pool needs at least one")
    n_total = len(records)
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        raise PoolError(f"pool {cfg.name!r}: ids are not unique ({len(ids) - len(set(ids))} duplicates)")
    empty = [r["id"] for r in records if not r["instruction"]]
    if empty:
        msg = f"pool {cfg.name!r}: {len(empty)} records have an empty instruction: {empty[:20]}"
        if cfg.empty_instruction == "error":
            raise PoolError(msg)
        log.warning("%s%s; they are left out of selection and counted in the run's log", msg,
                    " ..." if len(empty) > 20 else "")
        records = [r for r in records if r["instruction"]]
        if not records:
            raise PoolError(f"pool {cfg.name!r}: every record of {where} has an empty instruction")
    records, duplicates = handle_duplicates(records, cfg.name, cfg.duplicates)
    return Pool(cfg.name, take(records, cfg, seed), empty, n_total, duplicates)


def take(records: list[dict], cfg: PoolConfig, seed: int) -> list[dict]:
    """``cfg.limit`` of the records (all when null or more): a sample seeded with ``seed`` in pool
    order (``sample=random``) or the first ones (``sample=head``)."""
    if cfg.limit is None or cfg.limit >= len(records):
        return records
    if cfg.sample == "head":
        return records[: int(cfg.limit)]
    keep = sorted(random.Random(seed).sample(range(len(records)), int(cfg.limit)))
    return [records[i] for i in keep]


def handle_duplicates(records: list[dict], name: str, mode: str) -> tuple[list[dict], list[str]]:
    """Exact duplicates (same instruction, input and output as an earlier record) reported with their
    count and a few ids, then, by ``mode`` (``pool.duplicates``; the held-out set drops them): drop
    (keep the first of each), keep, or error. Returns (records, the repeats' ids)."""
    first_of: dict[tuple, str] = {}
    repeats: list[tuple[str, str]] = []  # (repeat id, id of its first occurrence)
    for r in records:
        text = (r["instruction"], r["input"], r["output"])
        if text in first_of:
            repeats.append((r["id"], first_of[text]))
        else:
            first_of[text] = r["id"]
    if not repeats:
        return records, []
    examples = ", ".join(f"{rid} (= {first})" for rid, first in repeats[:5]) + (" ..." if len(repeats) > 5 else "")
    msg = (f"pool {name!r}: {len(repeats)} records repeat an earlier record exactly (same instruction, "
           f"input and output): {examples}")
    if mode == "error":
        raise PoolError(f"{msg}; remove them, or set pool.duplicates=drop (keep the first of each) or keep")
    repeat_ids = [rid for rid, _ in repeats]
    if mode == "keep":
        log.warning("%s; kept (pool.duplicates=keep), so both copies can be selected", msg)
        return records, repeat_ids
    log.warning("%s; dropped, the first of each kept (pool.duplicates=drop; counted in the manifest)", msg)
    dropped = set(repeat_ids)
    return [r for r in records if r["id"] not in dropped], repeat_ids


def announce_demo_slice(pool: Pool, demo_limit: int | None) -> None:
    """Say once that the run scores the demo's slice (``demo_limit``: pool.limit when it is the default,
    conf/config.yaml's demo_slice), and how to score the whole pool."""
    if demo_limit is not None and len(pool.records) < pool.n_total:
        log.info("using a %d-example slice of %s (the CPU demo); pool.limit=null for all %s", len(pool.records),
                 pool.name, f"{pool.n_total:,}")
