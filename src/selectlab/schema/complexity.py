"""conf/complexity.yaml (python -m analysis.complexity) and its judge group (conf/judge/)."""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from omegaconf import MISSING

from .models import ModelEntry


@dataclass
class JudgeConfig:
    kind: str = MISSING
    name: Optional[str] = MISSING
    batch_size: int = MISSING


@dataclass
class LocalJudge(JudgeConfig):
    model: ModelEntry = field(default_factory=ModelEntry)
    dtype: str = MISSING
    device: Optional[str] = MISSING
    template: str = MISSING


@dataclass
class OpenaiJudge(JudgeConfig):
    base_url: str = MISSING
    model: str = MISSING
    api_key_env: Optional[str] = MISSING
    seed: Optional[int] = MISSING
    concurrency: int = MISSING
    max_retries: int = MISSING
    backoff_s: float = MISSING
    max_backoff_s: float = MISSING
    timeout_s: int = MISSING


@dataclass
class Bootstrap:
    samples: int = MISSING
    confidence: float = MISSING
    seed: int = MISSING


@dataclass
class JudgeQuestion:
    """One question put to the judge about every example."""

    temperature: float = MISSING
    max_tokens: int = MISSING
    system: str = MISSING
    user: str = MISSING


@dataclass
class Classification(JudgeQuestion):
    categories: List[str] = MISSING


@dataclass
class Rating(JudgeQuestion):
    scale: List[int] = MISSING


@dataclass
class Prototype:
    description: str = MISSING
    exemplars: List[str] = MISSING


@dataclass
class JudgeCheck:
    """The labelled check set and the rating contrasts the judge is measured on (analysis/judge_check.py)."""

    per_source: int = MISSING
    seed: int = MISSING
    folds: int = MISSING
    contrast_n: int = MISSING
    category_judge: str = MISSING
    prototypes: Dict[str, Prototype] = MISSING


@dataclass
class ComplexityConfig:
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    runs: List[str] = MISSING
    figures: str = MISSING
    evidence: str = MISSING
    check: JudgeCheck = field(default_factory=JudgeCheck)
    scorers: List[str] = MISSING
    limit: Optional[int] = MISSING
    uniform_seed: int = MISSING
    max_field_chars: Optional[int] = MISSING
    bootstrap: Bootstrap = field(default_factory=Bootstrap)
    classification: Classification = field(default_factory=Classification)
    ratings: Dict[str, Rating] = MISSING
