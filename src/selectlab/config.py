"""OmegaConf resolvers the configs use; imported by the entry point and the tests."""
from __future__ import annotations

from omegaconf import OmegaConf

from .paths import cache_dir, data_dir

OmegaConf.register_new_resolver("data_dir", lambda: str(data_dir()), replace=True)
OmegaConf.register_new_resolver("cache_dir", lambda: str(cache_dir()), replace=True)
