"""Where the repository, the shipped data and the artifact cache live.

Every location can be overridden by an environment variable so that clusters can put
the cache on shared storage and CI can point at a checkout's ``../shared/data``.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """The offline data folder (pools and benchmarks): ``$SELECTLAB_DATA`` or ``../shared/data``."""
    return Path(os.environ.get("SELECTLAB_DATA", REPO_ROOT.parent / "shared" / "data"))


def cache_dir() -> Path:
    """Root of the content-addressed artifact store: ``$SELECTLAB_CACHE`` or ``<repo>/.cache``."""
    return Path(os.environ.get("SELECTLAB_CACHE", REPO_ROOT / ".cache"))
