"""The selector group (conf/selector/)."""
from dataclasses import dataclass
from typing import Any, List, Optional, Union

from omegaconf import MISSING


@dataclass
class SelectorConfig:
    """selector=auto and selector=topk; the base of every selector."""

    name: str = MISSING


@dataclass
class BinwiseSelector(SelectorConfig):
    n_bins: int = MISSING
    min_bin_size: int = MISSING
    random_state: int = MISSING
    n_init: int = MISSING
    max_iter: int = MISSING


@dataclass
class SizeSearch(SelectorConfig):
    method: str = MISSING
    high: int = MISSING


@dataclass
class BlendSearch(SizeSearch):
    low: int = MISSING
    num_samples: int = MISSING
    time_budget_s: Optional[Union[int, float]] = MISSING
    init_n: Optional[int] = MISSING


@dataclass
class SizeGrid(SizeSearch):
    grid: List[int] = MISSING


@dataclass
class DiverseTopk(SelectorConfig):
    threshold: float = MISSING
    embeddings: str = MISSING
    text: str = MISSING
    block_size: int = MISSING
    batch_size: int = MISSING
    device: Optional[str] = MISSING


@dataclass
class DeitaSelector(DiverseTopk):
    """DEITA's release embedder: a causal LM's last-token state."""

    # null = the run's backbone; else a model entry {path | hub_id, allow_download, ...}. Any, not
    # Optional[Dict]: OmegaConf 2.3 cannot set a map on a null Optional[Dict] node (selector.model={...}).
    model: Any = MISSING
    dtype: Optional[str] = MISSING
    max_length: int = MISSING


@dataclass
class FlaSelector(SelectorConfig):
    ifd_num: Optional[int] = MISSING
    ifd_fraction: float = MISSING
    max_seq_length: int = MISSING
    batch_size: int = MISSING
    device: Optional[str] = MISSING


@dataclass
class MigSelector(SelectorConfig):
    labels: str = MISSING
    valid_tags: Optional[str] = MISSING
    # a sentence-transformers model entry (null: all-MiniLM-L6-v2). Any: see DeitaSelector.model.
    label_model: Any = MISSING
    sim_threshold: float = MISSING
    prop_weight: float = MISSING
    norm: bool = MISSING
    phi_type: str = MISSING
    phi_a: float = MISSING
    phi_b: float = MISSING
    phi_alpha: float = MISSING
    n_clusters: int = MISSING
    labels_per_example: int = MISSING
    text: str = MISSING
    batch_size: int = MISSING
    device: Optional[str] = MISSING


@dataclass
class ZipSelector(SelectorConfig):
    k1: int = MISSING
    k2: int = MISSING
    k3: int = MISSING
    n_jobs: int = MISSING
