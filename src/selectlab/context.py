"""What every stage of one run may use, built once by the pipeline: :class:`RunContext`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from omegaconf import OmegaConf, open_dict

from .pools import Pool
from .schema import typed
from .infra.store import ArtifactStore


@dataclass
class RunContext:
    """The run's resolved config, its artifact store and pool. ``backbone()`` resolves (and if
    needed converts) the run's model lazily; ``log_metrics`` sends live metrics to the run's
    tracker (W&B).

    With ``select.backbone`` (a small model choosing data for a big one) the scorers and selectors
    get a context whose ``cfg.backbone`` and ``backbone()`` are the scoring model, and whose
    ``training`` is the run's own context (the model that is fine-tuned: the size search's trials)."""

    cfg: Any  # the run's config as the schemas' dataclasses (a composed DictConfig is typed here)
    store: ArtifactStore
    pool: Pool
    pool_key: str
    backbone: Callable[[], str]
    log_metrics: Callable[[dict], None] = lambda metrics: None
    training: RunContext | None = None

    def __post_init__(self):
        self.cfg = typed(self.cfg)

    def for_training(self) -> RunContext:
        return self.training or self


def with_sections(cfg, **sections):
    """A copy of the run config with whole sections replaced (``scorer=...``, ``backbone=...``)
    or top-level values (``seed=1``); the original is untouched."""
    if dataclasses.is_dataclass(cfg):
        return dataclasses.replace(cfg, **sections)
    cfg = cfg.copy()
    with open_dict(cfg):
        for key, value in sections.items():
            OmegaConf.update(cfg, key, value, merge=False)
    return cfg
