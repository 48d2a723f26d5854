"""Experiment tracking: Weights & Biases (offline by default) or none.

Everything logged here is also in the run dir (manifest, subset, scores), so ``logger=none``
loses no result, only the dashboard.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SelectlabError
from ..schema.run import LoggerConfig, WandbLogger

log = logging.getLogger(__name__)


class Tracker:
    """``logger=none``: the results live in the run dir only."""

    run = None

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None: ...

    def log_histograms(self, values: dict[str, np.ndarray]) -> None: ...

    def log_artifact(self, name: str, kind: str, files: list[Path], metadata: dict) -> None: ...

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None: ...

    def log_image(self, name: str, path: Path) -> None: ...

    def summary(self, values: dict[str, Any]) -> None: ...

    def finish(self) -> None: ...


class WandbTracker(Tracker):
    def __init__(self, cfg: WandbLogger, run_config: dict, run_dir: Path, name: str):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, group=cfg.group, tags=list(cfg.tags or []),
            mode=cfg.mode, dir=str(run_dir), config=run_config, name=name, reinit="finish_previous",
        )
        log.info("W&B run %s (%s) in %s", self.run.id, cfg.mode, run_dir / "wandb")

    def log_table(self, name, columns, rows):
        self.run.log({name: self.wandb.Table(columns=columns, data=rows)})

    def log_histograms(self, values):
        finite = {k: v[np.isfinite(v)] for k, v in values.items()}
        self.run.log({f"hist/{k}": self.wandb.Histogram(v) for k, v in finite.items() if len(v)})

    def log_artifact(self, name, kind, files, metadata):
        art = self.wandb.Artifact(name, type=kind, metadata=metadata)
        for f in files:
            art.add_file(str(f))
        self.run.log_artifact(art)

    def log_metrics(self, metrics, step=None):
        self.run.log(metrics, step=step)

    def log_image(self, name, path):
        self.run.log({name: self.wandb.Image(str(path))})

    def summary(self, values):
        self.run.summary.update(values)

    def finish(self):
        self.run.finish()


def make_tracker(cfg: LoggerConfig, run_config: dict, run_dir: Path, name: str) -> Tracker:
    if cfg.name == "none" or cfg.mode == "disabled":
        return Tracker()
    if cfg.name == "wandb":
        return WandbTracker(cfg, run_config, run_dir, name)
    raise SelectlabError(f"logger.name={cfg.name!r}; choose wandb or none")
