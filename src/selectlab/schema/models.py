"""Model entries: where a model's weights come from (the shapes shared by backbone, judges,
scorers' own models)."""
from dataclasses import dataclass
from typing import Optional

from .domain import MISSING, one_of

DTYPES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16", "auto")  # selectlab.lm.models.torch_dtype


def dtype():
    """A model's dtype field."""
    return one_of(*DTYPES)


@dataclass
class HubModel:
    """A model from a local folder or the hub (UniEval, reward models)."""

    path: Optional[str] = MISSING
    hub_id: Optional[str] = MISSING
    revision: Optional[str] = MISSING
    allow_download: bool = MISSING


@dataclass
class NamedHubModel(HubModel):
    """A hub model with a display name (SCAR's ranker)."""

    name: str = MISSING


@dataclass
class ModelEntry(NamedHubModel):
    """A causal LM that may also come from a GGUF file in a PyPI package (judge=local,
    SuperFiltering's scorer)."""

    gguf_package: Optional[str] = MISSING
    gguf_file: Optional[str] = MISSING


@dataclass
class SentenceModel:
    """A sentence-transformers model shipped in a PyPI package (InstructMining's KNN indicator)."""

    package: Optional[str] = MISSING
    subdir: Optional[str] = MISSING
    path: Optional[str] = MISSING
    hub_id: Optional[str] = MISSING
    allow_download: bool = MISSING
