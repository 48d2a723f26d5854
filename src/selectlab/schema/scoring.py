"""The scorer group (conf/scorer/) and InstructMining's nested groups scorer/rule, scorer/reward."""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from .models import HubModel, ModelEntry, NamedHubModel


@dataclass
class ScorerConfig:
    """scorer=length's keys; the base of every scorer."""

    name: str = MISSING


@dataclass
class LengthScorer(ScorerConfig):
    order: str = MISSING


@dataclass
class RandomScorer(ScorerConfig):
    batch_size: int = MISSING


@dataclass
class ZipScorer(ScorerConfig):
    text: str = MISSING


@dataclass
class MigScorer(ScorerConfig):
    quality: str = MISSING


# ---------------------------------------------------------------- ADG
@dataclass
class AdgBins:
    source: str = MISSING
    layers: List[int] = MISSING
    max_length: int = MISSING
    add_special_tokens: bool = MISSING
    unweighted: str = MISSING
    dtype: str = MISSING
    batch_size: int = MISSING


@dataclass
class AdgScorer(ScorerConfig):
    lam: float = MISSING
    metric_1: str = MISSING
    weight_1: Optional[float] = MISSING
    metric_2: str = MISSING
    weight_2: Optional[float] = MISSING
    bins: AdgBins = field(default_factory=AdgBins)
    batch_size: int = MISSING


# ---------------------------------------------------------------- scores from a causal LM's losses
@dataclass
class LmScorer(ScorerConfig):
    template: str = MISSING
    add_bos: bool = MISSING
    max_length: int = MISSING
    batch_size: int = MISSING
    chunk_size: int = MISSING
    dtype: str = MISSING
    device: Optional[str] = MISSING


@dataclass
class PerplexityScorer(LmScorer):
    order: str = MISSING


@dataclass
class IfdScorer(LmScorer):
    uncond_prefix: str = MISSING
    ratio: str = MISSING
    tokenize: str = MISSING
    uncond_length_offset: int = MISSING


@dataclass
class PreExperience:
    enabled: bool = MISSING
    clusters: int = MISSING
    per_cluster: int = MISSING
    low_percentile: float = MISSING
    high_percentile: float = MISSING
    max_length: int = MISSING


@dataclass
class CherryIfdScorer(IfdScorer):
    pre_experience: PreExperience = field(default_factory=PreExperience)


@dataclass
class SuperfilteringScorer(IfdScorer):
    model: ModelEntry = field(default_factory=ModelEntry)


# ---------------------------------------------------------------- DEITA, SCAR
@dataclass
class DeitaJudgeModel(NamedHubModel):
    use_backbone: bool = MISSING
    dtype: str = MISSING
    use_chat_template: bool = MISSING


@dataclass
class DeitaScorer(ScorerConfig):
    complexity_model: DeitaJudgeModel = field(default_factory=DeitaJudgeModel)
    quality_model: DeitaJudgeModel = field(default_factory=DeitaJudgeModel)
    complexity_template: str = MISSING
    quality_template: str = MISSING
    scale: int = MISSING
    batch_size: int = MISSING


@dataclass
class ScarScorer(ScorerConfig):
    model: NamedHubModel = field(default_factory=NamedHubModel)
    text: str = MISSING
    dedupe: bool = MISSING
    english_min_percent: Optional[int] = MISSING
    max_length: int = MISSING
    batch_size: int = MISSING
    chunk_size: int = MISSING
    device: Optional[str] = MISSING


# ---------------------------------------------------------------- InstructMining
@dataclass
class RuleConfig:
    """A published rule (scorer/rule=paper_a, paper_b)."""

    name: str = MISSING
    target: str = MISSING
    intercept: float = MISSING
    coefficients: Dict[str, float] = MISSING
    r2: Optional[float] = MISSING
    provenance: str = MISSING
    scaling: str = MISSING


@dataclass
class FittedRule(RuleConfig):
    """A rule fitted by task=fit_rule and promoted into conf/scorer/rule/."""

    adj_r2: Optional[float] = MISSING
    std_errors: Dict[str, float] = MISSING
    n_finetunes: int = MISSING


@dataclass
class RewardConfig:
    name: str = MISSING
    kind: str = MISSING
    batch_size: int = MISSING


@dataclass
class JudgeReward(RewardConfig):
    """scorer/reward=judge: the backbone rates the answer (a substitute for a reward model)."""

    substitute_for: str = MISSING
    question_template: str = MISSING
    use_chat_template: bool = MISSING
    scale: int = MISSING


@dataclass
class RewardModel(RewardConfig):
    """scorer/reward=oasst_deberta: a sequence-classification reward model."""

    model: HubModel = field(default_factory=HubModel)
    input_template: Optional[str] = MISSING
    max_length: int = MISSING


@dataclass
class InstructMiningScorer(ScorerConfig):
    log_indicators: List[str] = MISSING
    # indicator name -> its spec ({kind: length | perplexity | mtld | knn | unieval, ...}): a free-form
    # map, since a rule may name new indicators; scorers/instructmining checks each spec's keys.
    indicators: Dict[str, Any] = MISSING
    rule: RuleConfig = field(default_factory=RuleConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
