"""The few lines a run ends with: what was scored, what was chosen, what went wrong, how long each
stage took, and where everything is. Built from the run's manifest alone (``<run_dir>/manifest.json``)."""
from __future__ import annotations

import logging
from pathlib import Path

from .console import engine_warnings
from ..infra.store import read_jsonl

log = logging.getLogger(__name__)

TOP = 3
TEXT_WIDTH = 72


def _short(text: str, width: int = TEXT_WIDTH) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _seconds(s: float) -> str:
    return f"{s:.1f}s" if s < 120 else f"{s / 60:.1f}min"


def stage_times(stages: list[dict]) -> list[tuple[str, float, bool]]:
    """(stage, seconds, reused) per stage name, in the order the stages first ran."""
    out: dict[str, list] = {}
    for e in stages:
        entry = out.setdefault(e["stage"], [0.0, True])
        entry[0] += float(e["seconds"])
        entry[1] = entry[1] and bool(e["reused"])
    return [(name, seconds, reused) for name, (seconds, reused) in out.items()]


def top_examples(subset_path: Path, n: int = TOP) -> list[dict]:
    """The ``n`` selected examples with the highest scores (a selector's order need not be by score)."""
    rows = read_jsonl(subset_path) if Path(subset_path).is_file() else []
    scored = [r for r in rows if r.get("score") is not None]
    return sorted(scored, key=lambda r: -r["score"])[:n]


def wandb_sync_command(run_dir: Path, logger: dict) -> str | None:
    if logger.get("name") != "wandb" or logger.get("mode") != "offline":
        return None
    runs = sorted((Path(run_dir) / "wandb").glob("offline-run-*"))
    return f"wandb sync {runs[-1]}" if runs else None


def summary_lines(manifest: dict) -> list[str]:
    run_dir = Path(manifest["run_dir"])
    config = manifest.get("config") or {}
    pool = manifest["pool"]
    limit = (config.get("pool") or {}).get("limit")
    sliced = f" (a seeded slice: pool.limit={limit}; pool.limit=null for all)" if pool["n"] < pool["n_total"] and limit \
        else ""
    lines = [f"pool      {pool['name']}: {pool['n']:,} of {pool['n_total']:,} examples scored{sliced}"]
    extra = ", ".join(f"{name} {e['n']}" for name, e in (manifest.get("extra_subsets") or {}).items())
    lines.append(f"selected  {manifest['n_selected']} -> {manifest['subset_path']}" + (f" (also {extra})" if extra else ""))
    for i, r in enumerate(top_examples(Path(manifest["subset_path"]))):
        lines.append(f"{'top' if i == 0 else '':9} {r['score']:.4g}  {_short(r['instruction'])}")
    degenerate = {k: v for k, v in (manifest.get("counts") or {}).items() if v}
    if degenerate:
        lines.append("counts    " + ", ".join(f"{k} {v}" for k, v in degenerate.items()))
    times = stage_times(manifest.get("stages") or [])
    if times:
        lines.append("stages    " + ", ".join(f"{name} {_seconds(s)}{' (reused)' if reused else ''}"
                                              for name, s, reused in times)
                     + f"; run {_seconds(float(manifest.get('seconds', 0)))}")
    for label, path in (("report", run_dir / "selection_report.png"), ("results", run_dir / "results.json"),
                        ("export", run_dir / "export"), ("manifest", run_dir / "manifest.json"),
                        ("log", run_dir / "run.log")):
        if path.exists():
            warnings = engine_warnings(path) if label == "log" else 0
            lines.append(f"{label:9} {path}" + (f" ({warnings} warnings from vLLM's engine there)" if warnings else ""))
    sync = wandb_sync_command(run_dir, config.get("logger") or {})
    if sync:
        lines.append(f"W&B       offline; upload with: {sync}")
    return lines


def log_summary(manifest: dict) -> dict:
    """Log the summary (console and run.log); returns the manifest unchanged."""
    log.info("summary\n  %s", "\n  ".join(summary_lines(manifest)))
    return manifest
