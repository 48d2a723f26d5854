"""Where the repository, the shipped data and the artifact cache live.

Every location can be overridden by an environment variable so that clusters can put
the cache on shared storage and CI can point at a checkout's ``../shared/data``.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


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
