"""conf/complexity.yaml (python -m analysis.complexity) and its judge group (conf/judge/)."""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .domain import MISSING, above, at_least, one_of
from .models import ModelEntry, dtype


@dataclass
class JudgeConfig:
    kind: str = one_of("local", "openai")
    name: Optional[str] = MISSING
    batch_size: int = at_least(1)


@dataclass
class LocalJudge(JudgeConfig):
    model: ModelEntry = field(default_factory=ModelEntry)
    dtype: str = dtype()
    device: Optional[str] = MISSING
    template: str = MISSING


@dataclass
class OpenaiJudge(JudgeConfig):
    base_url: str = MISSING
    model: str = MISSING
    api_key_env: Optional[str] = MISSING
    seed: Optional[int] = MISSING
    concurrency: int = at_least(1)
    max_retries: int = at_least(0)
    backoff_s: float = at_least(0)
    max_backoff_s: float = at_least(0)
    timeout_s: int = at_least(1)


@dataclass
class Bootstrap:
    samples: int = at_least(1)
    confidence: float = above(0, 1)
    seed: int = MISSING


@dataclass
class JudgeQuestion:
    """One question put to the judge about every example."""

    temperature: float = at_least(0)
    max_tokens: int = at_least(1)
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

    per_source: int = at_least(1)
    seed: int = MISSING
    folds: int = at_least(2)
    contrast_n: int = at_least(1)
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
    limit: Optional[int] = at_least(1)
    uniform_seed: int = MISSING
    max_field_chars: Optional[int] = MISSING
    bootstrap: Bootstrap = field(default_factory=Bootstrap)
    classification: Classification = field(default_factory=Classification)
    ratings: Dict[str, Rating] = MISSING
