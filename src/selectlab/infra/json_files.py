"""Reading a user's JSON or JSONL file of records, with every error naming the file and line
(the pool loaders of :mod:`selectlab.pools` build on it)."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import SelectlabError


class PoolError(SelectlabError):
    """A pool file that cannot be read as a pool; the message names the file and line."""


def read_text(path: Path) -> str:
    """The file as UTF-8 text (a BOM is dropped); a byte that is not UTF-8 is reported with its line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise PoolError(f"{path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {column}); "
                        f"re-encode the file as UTF-8") from None


def json_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) pairs from a JSON array of records or a JSONL file (one record a line)."""
    text = read_text(path)
    if not text.strip():
        raise PoolError(f"{path}:1: the file is empty; a pool needs at least one record")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise PoolError(f"{path}:{e.lineno}: malformed JSON ({e.msg}, column {e.colno})") from None
        line_of = _element_start_lines(text)
        pairs = [(line_of[i] if i < len(line_of) else 1, r) for i, r in enumerate(rows)]
    else:
        _reject_single_document(path, text)
        pairs = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                pairs.append((line_no, json.loads(line)))
            except json.JSONDecodeError as e:
                raise PoolError(f"{path}:{line_no}: malformed JSON line ({e.msg}, column {e.colno})") from None
    for line_no, row in pairs:
        if not isinstance(row, dict):
            raise PoolError(f"{path}:{line_no}: expected a JSON object (one record), got {type(row).__name__}")
    return pairs


def _reject_single_document(path: Path, text: str) -> None:
    """A file that is one valid JSON document over several lines (a pretty-printed object, e.g.
    ``{"data": [...]}``) is the wrong shape, not malformed JSONL: say so."""
    if sum(1 for line in text.splitlines() if line.strip()) < 2:
        return  # one line: a one-record JSONL file
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return  # not one document: JSONL, checked line by line
    what = f"an object with keys {sorted(doc)[:8]}" if isinstance(doc, dict) else f"a {type(doc).__name__}"
    raise PoolError(f"{path}:1: the file is one JSON document ({what}) spread over several lines; a pool is "
                    f"a JSON array of records ([{{...}}, ...]) or JSONL (one record per line)")


def _element_start_lines(text: str) -> list[int]:
    """Line numbers where each element of a top-level JSON array starts (for error messages)."""
    lines, depth, line, in_str, escape, expect = [], 0, 1, False, False, False
    for ch in text:
        if ch == "\n":
            line += 1
        if in_str:
            escape = (not escape) if ch == "\\" else False
            if ch == '"' and not escape:
                in_str = False
            continue
        if depth == 1 and expect and not ch.isspace() and ch not in ",]":
            lines.append(line)
            expect = False
        if ch == '"':
            in_str, escape = True, False
        elif ch in "[{":
            depth += 1
            expect = depth == 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 1:
            expect = True
    return lines
