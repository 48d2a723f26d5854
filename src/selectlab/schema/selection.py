"""The selector group (conf/selector/)."""
from dataclasses import dataclass
from typing import Any, List, Optional, Union

from .domain import MISSING, above, at_least, map_or_null, one_of
from .models import dtype
from .scoring import TEXT_FIELDS

SELECTOR_EMBEDDINGS = ("sbert", "features", "last_token")  # selectlab.selectors.diverse
MIG_LABELS = ("instag", "clusters")
PHI_TYPES = ("pow", "exp")


@dataclass
class SelectorConfig:
    """selector=auto and selector=topk; the base of every selector."""

    name: str = MISSING


@dataclass
class BinwiseSelector(SelectorConfig):
    n_bins: int = at_least(1)
    min_bin_size: int = at_least(0)
    random_state: int = MISSING
    n_init: int = at_least(1)
    max_iter: int = at_least(1)


@dataclass
class SizeSearch(SelectorConfig):
    method: str = one_of("blendsearch", "grid")
    high: int = at_least(1)


@dataclass
class BlendSearch(SizeSearch):
    low: int = at_least(1)
    num_samples: int = at_least(1)
    time_budget_s: Optional[Union[int, float]] = above(0)
    init_n: Optional[int] = at_least(1)


@dataclass
class SizeGrid(SizeSearch):
    grid: List[int] = MISSING


@dataclass
class DiverseTopk(SelectorConfig):
    threshold: float = MISSING
    embeddings: str = one_of(*SELECTOR_EMBEDDINGS)
    text: str = one_of(*TEXT_FIELDS)
    block_size: int = at_least(1)
    batch_size: int = at_least(1)
    device: Optional[str] = MISSING


@dataclass
class DeitaSelector(DiverseTopk):
    """DEITA's release embedder: a causal LM's last-token state."""

    # null = the run's backbone; else a model entry {path | hub_id, allow_download, ...}. Any, not
    # Optional[Dict]: OmegaConf 2.3 cannot set a map on a null Optional[Dict] node (selector.model={...}).
    model: Any = map_or_null()
    dtype: Optional[str] = dtype()
    max_length: int = at_least(1)


@dataclass
class FlaSelector(SelectorConfig):
    ifd_num: Optional[int] = at_least(1)
    ifd_fraction: float = above(0, 1)
    max_seq_length: int = at_least(1)
    batch_size: int = at_least(1)
    device: Optional[str] = MISSING


@dataclass
class MigSelector(SelectorConfig):
    labels: str = one_of(*MIG_LABELS)
    valid_tags: Optional[str] = MISSING
    # a sentence-transformers model entry (null: all-MiniLM-L6-v2). Any: see DeitaSelector.model.
    label_model: Any = map_or_null()
    sim_threshold: float = MISSING
    prop_weight: float = MISSING
    norm: bool = MISSING
    phi_type: str = one_of(*PHI_TYPES)
    phi_a: float = MISSING
    phi_b: float = MISSING
    phi_alpha: float = MISSING
    n_clusters: int = at_least(1)
    labels_per_example: int = at_least(1)
    text: str = one_of(*TEXT_FIELDS)
    batch_size: int = at_least(1)
    device: Optional[str] = MISSING


@dataclass
class ZipSelector(SelectorConfig):
    k1: int = at_least(1)
    k2: int = at_least(1)
    k3: int = at_least(1)
    n_jobs: int = at_least(1)
