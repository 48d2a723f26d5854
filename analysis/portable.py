"""Rewrite run folders so they name no machine's paths (``selectlab.infra.paths.portable``).

    python -m analysis.portable analysis/evidence/double_descent [MORE ...]

Run it on a run or sweep folder before committing it as evidence. Each ``manifest*.json`` is
rewritten against its own places: the run folder it records (``run_dir`` -> ``run:``), the store
its config used (``cache_dir`` -> ``cache:``) and the data folder (``data:``, this machine's
``selectlab.infra.paths.data_dir``, or ``--data``); ``results.json`` and ``size_search.json`` against
their folder's manifest; Hydra's ``multirun.yaml`` against its sweep folder, with the repository
it ran from written ``repo:``. Idempotent: a rewritten folder is left as it is. Prints what changed.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from selectlab.infra.paths import data_dir, portable, portable_text, run_places

ABSOLUTE = re.compile(r"(?<![\w.:-])/(?:work|home|root|Users|scratch|mnt|tmp)/[^\s\"',]*")


def _places_of(manifest: dict, data: Path) -> dict[str, Path]:
    places = run_places(manifest.get("run_dir") or "/nonexistent", (manifest.get("config") or {}).get("cache_dir"))
    places["data"] = data
    return {k: v for k, v in places.items() if str(v).startswith("/")}


def _rewrite_json(path: Path, places: dict[str, Path]) -> bool:
    before = path.read_text()
    after = json.dumps(portable(json.loads(before), places), indent=2) + "\n"
    if after.strip() == before.strip():
        return False
    path.write_text(after)
    return True


def _rewrite_sweep_yaml(path: Path, data: Path) -> bool:
    from omegaconf import OmegaConf

    before = path.read_text()
    hydra = OmegaConf.load(path).get("hydra") or {}
    places = {"data": data}
    sweep, cwd = OmegaConf.select(hydra, "sweep.dir"), OmegaConf.select(hydra, "runtime.cwd")
    if isinstance(sweep, str) and sweep.startswith("/"):
        places["run"] = Path(sweep)
    if isinstance(cwd, str) and cwd.startswith("/"):
        places["repo"] = Path(cwd)
    after = portable_text(before, places)
    if after == before:
        return False
    path.write_text(after)
    return True


def rewrite_folder(root: Path, data: Path) -> list[Path]:
    """Every run record under ``root`` made portable; returns the files that changed."""
    changed = []
    for manifest_path in sorted(root.rglob("manifest*.json")):
        places = _places_of(json.loads(manifest_path.read_text()), data)
        changed += [manifest_path] if _rewrite_json(manifest_path, places) else []
        if manifest_path.name == "manifest.json":
            for sibling in ("results.json", "size_search.json"):
                path = manifest_path.parent / sibling
                if path.exists() and _rewrite_json(path, places):
                    changed.append(path)
    for sweep_yaml in sorted(root.rglob("multirun.yaml")):
        changed += [sweep_yaml] if _rewrite_sweep_yaml(sweep_yaml, data) else []
    return changed


def absolute_paths(text: str) -> list[str]:
    """The absolute machine paths in ``text`` (a user's home, a work or scratch folder, /tmp, ...)."""
    return ABSOLUTE.findall(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, default=data_dir(), help="the data folder the runs read")
    args = parser.parse_args(argv)
    for folder in args.folders:
        for path in rewrite_folder(folder, args.data):
            print(f"rewrote {path}")
        left = [(p, hit) for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in (".json", ".yaml")
                for hit in absolute_paths(p.read_text())]
        for path, hit in left:
            print(f"still absolute: {path}: {hit}")


if __name__ == "__main__":
    main()
