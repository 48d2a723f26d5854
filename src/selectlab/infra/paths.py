"""Where the repository, the shipped data and the artifact cache live.

Every location can be overridden by an environment variable so that clusters can put
the cache on shared storage and CI can point at a checkout's ``../shared/data``.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]


def data_dir() -> Path:
    """The offline data folder (pools and benchmarks): ``$SELECTLAB_DATA`` or ``../shared/data``."""
    return Path(os.environ.get("SELECTLAB_DATA", REPO_ROOT.parent / "shared" / "data"))


def cache_dir() -> Path:
    """Root of the content-addressed artifact store: ``$SELECTLAB_CACHE`` or ``<repo>/.cache``."""
    return Path(os.environ.get("SELECTLAB_CACHE", REPO_ROOT / ".cache"))


UNSAFE_RUN = re.compile(r"[^\w.+=,@-]+")  # \w: letters and digits of any script, and _
MAX_COMPONENT = 120  # well under the 255-byte file name limit, with room for a prefix


def safe_component(value) -> str:
    """``value`` (a name from config: ``pool.name``, ``fit.name``, Hydra's override_dirname) as
    one harmless path component: separators and other unsafe characters become ``_``, leading
    dots are dropped (no ``..``, no hidden folders), and an over-long name is cut and suffixed
    with a hash of the whole so two long names stay distinct."""
    text = str(value)
    name = UNSAFE_RUN.sub("_", text).lstrip(".") or "_"
    if len(name) > MAX_COMPONENT:
        digest = hashlib.sha256(text.encode()).hexdigest()[:10]
        name = f"{name[:MAX_COMPONENT - 11]}-{digest}"
    return name


# ---- run records that travel ---------------------------------------------------------------
# A run record (manifest.json, results.json) names its places relative to roots every reader
# knows: ``run:subset.jsonl`` (inside the run folder), ``cache:checkpoints/<key>`` (the artifact
# store), ``data:pools/alpaca_52k`` (the shipped data). Readers turn them back into paths of their
# own machine (``localize``), so committed evidence publishes no machine's layout.
PLACE = re.compile(r"^(run|cache|data):([^\s:]*)$")


def run_places(run_dir: str | Path, cache: str | Path | None = None) -> dict[str, Path]:
    """The roots a run record is written against: its run folder, the store and the data folder."""
    return {"run": Path(run_dir), "cache": Path(cache) if cache else cache_dir(), "data": data_dir()}


def _spellings(places: dict[str, Path]) -> list[tuple[str, str]]:
    """(root as written, place name), longest root first so a nested root wins over its parent."""
    pairs = {(str(Path(p)), name) for name, p in places.items()}
    pairs |= {(str(Path(p).resolve()), name) for name, p in places.items()}
    return sorted(pairs, key=lambda pair: -len(pair[0]))


def portable_text(text: str, places: dict[str, Path]) -> str:
    """``text`` with every absolute path under one of ``places`` written as ``<place>:<relative>``."""
    for root, name in _spellings(places):
        text = re.sub(re.escape(root) + r"(/|(?![\w.-]))", f"{name}:", text)
    return text


def portable(value, places: dict[str, Path]):
    """A JSON-like value with ``portable_text`` applied to every string in it."""
    if isinstance(value, dict):
        return {k: portable(v, places) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, places) for v in value]
    return portable_text(value, places) if isinstance(value, str) else value


def localize(value, places: dict[str, Path]):
    """The inverse of ``portable`` for whole-string places: ``data:pools/x`` -> ``<data dir>/pools/x``."""
    if isinstance(value, dict):
        return {k: localize(v, places) for k, v in value.items()}
    if isinstance(value, list):
        return [localize(v, places) for v in value]
    match = PLACE.match(value) if isinstance(value, str) else None
    if match is None:
        return value
    root = Path(places[match.group(1)])
    return str(root / match.group(2)) if match.group(2) else str(root)
