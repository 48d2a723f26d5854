"""Process set-up shared by the entry point and the tests: offline defaults, config resolvers,
the config schemas (importing this module registers both before Hydra composes)."""
from __future__ import annotations

import copy
import dataclasses
import functools
import os

from omegaconf import OmegaConf

from .infra.paths import cache_dir, data_dir, safe_component
from .schema import register as register_schemas
from .pools import demo_slice

OmegaConf.register_new_resolver("data_dir", lambda: str(data_dir()), replace=True)
OmegaConf.register_new_resolver("cache_dir", lambda: str(cache_dir()), replace=True)
# ``${safe:${pool.name}}``: a config value made one harmless path component (conf/config.yaml's
# run and sweep folders), so ``pool.name=../../x`` cannot write outside outputs/.
OmegaConf.register_new_resolver("safe", safe_component, replace=True)
register_schemas()  # schema/<group>/<name> in Hydra's ConfigStore, which conf/ files extend
# ``pool.limit``'s default: the demo's slice on a shipped pool with the embedded backbone, else null.
OmegaConf.register_new_resolver("demo_slice", demo_slice, replace=True)


def configure_environment() -> None:
    """Offline unless the user says otherwise (call before importing datasets/transformers)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_SILENT", "true")

    # Weight-loading and dataset bars: a run shows one bar per long stage (selectlab.infra.progress) instead.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def plain(section) -> dict | None:
    """A config section as a plain dict (interpolations resolved), e.g. for artifact keys; None
    stays None. The one conversion every stage uses."""
    if section is None:
        return None
    if dataclasses.is_dataclass(section):
        return dataclasses.asdict(section)
    if OmegaConf.is_config(section):
        return OmegaConf.to_container(section, resolve=True)
    return dict(section)


# Selector options that put a stand-in inside a release's method: a run of the release's scorer
# with one of them is labelled scorer+selector, never the release's name alone.
SUBSTITUTE_SELECTORS = {"deita": ("deita_backbone", "deita_minilm"), "mig": ("mig_minilm", "mig_clusters")}


def scorer_label(cfg) -> str:
    """The scorer as the run chose it, for results rows and tables: the ``scorer=`` config option
    (``deita_judge`` and ``mig_offline`` are the offline substitutes of ``deita`` and ``mig`` and
    share their ``scorer.name``), with ``+<selector>`` when a substitute selector runs inside the
    release's scorer (``deita+deita_backbone``); ``scorer.name`` outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
        choice = choices.get("scorer")
        if choice:
            selector = choices.get("selector")
            return f"{choice}+{selector}" if selector in SUBSTITUTE_SELECTORS.get(str(choice), ()) else str(choice)
    return str(cfg.scorer.name)


def preset(group: str, option: str, **changes):
    """``conf/<group>/<option>.yaml`` composed as a run composes it (its defaults, its schema, the
    interpolations resolved against the default run), as its schema's dataclass with ``changes``:
    how code outside a run (benches, tests) gets a section with the shipped values."""
    return dataclasses.replace(copy.deepcopy(_composed_section(group, option)), **changes)


@functools.lru_cache(maxsize=None)
def _composed_section(group: str, option: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from .infra.paths import REPO_ROOT
    from .schema import typed

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
            return typed(compose("config", overrides=[f"{group}={option}"])[group])
    finally:
        GlobalHydra.instance().clear()
