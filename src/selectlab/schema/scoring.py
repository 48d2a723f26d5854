"""The scorer group (conf/scorer/) and InstructMining's nested groups scorer/rule, scorer/reward."""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .domain import MISSING, at_least, one_of
from .models import HubModel, ModelEntry, NamedHubModel, dtype
from .run import PROMPT_TEMPLATES

LM_TEMPLATES = (*PROMPT_TEMPLATES, "plain")  # selectlab.lm.lm_scoring: "plain" is the answer after the instruction
TEXT_FIELDS = ("instruction", "instruction_input", "conversation")  # selectlab.texts.example_text
TEXT_FORMS = ("repr", "plain")  # selectlab.texts: ZIP's text of a record
ADG_METRICS = ("Sc.cov_trace", "Sc.SED", "Sc.H_spec", "S.SEC", "S.mean_cos", "Sc.eig_ratio_12", "LOOD_var",
               "D", "I", "H_spec", "SEC", "mean_cos", "eig_ratio_12")  # the release's names, then their columns
BIN_SOURCES = ("release", "answer_prefix")
IFD_RATIOS = ("loss", "perplexity")
TOKENIZE = ("joined", "apart")
MIG_QUALITIES = ("annotation", "length", "uniform")


@dataclass
class ScorerConfig:
    """scorer=length's keys; the base of every scorer."""

    name: str = MISSING


@dataclass
class LengthScorer(ScorerConfig):
    order: str = one_of("asc", "desc")


@dataclass
class RandomScorer(ScorerConfig):
    batch_size: int = at_least(1)


@dataclass
class ZipScorer(ScorerConfig):
    text: str = one_of(*TEXT_FORMS)


@dataclass
class MigScorer(ScorerConfig):
    quality: str = one_of(*MIG_QUALITIES)


# ---------------------------------------------------------------- ADG
@dataclass
class AdgBins:
    source: str = one_of(*BIN_SOURCES)
    layers: List[int] = MISSING
    max_length: int = at_least(1)
    add_special_tokens: bool = MISSING
    unweighted: str = one_of("zero", "uniform")
    dtype: str = dtype()
    batch_size: int = at_least(1)


@dataclass
class AdgScorer(ScorerConfig):
    lam: float = at_least(0, 1)
    metric_1: str = one_of(*ADG_METRICS)
    weight_1: Optional[float] = MISSING
    metric_2: str = one_of(*ADG_METRICS)
    weight_2: Optional[float] = MISSING
    bins: AdgBins = field(default_factory=AdgBins)
    batch_size: int = at_least(1)


# ---------------------------------------------------------------- scores from a causal LM's losses
@dataclass
class LmScorer(ScorerConfig):
    template: str = one_of(*LM_TEMPLATES)
    add_bos: bool = MISSING
    max_length: int = at_least(1)
    batch_size: int = at_least(1)
    chunk_size: int = at_least(1)
    dtype: str = dtype()
    device: Optional[str] = MISSING


@dataclass
class PerplexityScorer(LmScorer):
    order: str = one_of("asc", "desc")


@dataclass
class IfdScorer(LmScorer):
    uncond_prefix: str = MISSING
    ratio: str = one_of(*IFD_RATIOS)
    tokenize: str = one_of(*TOKENIZE)
    uncond_length_offset: int = MISSING


@dataclass
class PreExperience:
    enabled: bool = MISSING
    clusters: int = at_least(1)
    per_cluster: int = at_least(1)
    low_percentile: float = at_least(0, 100)
    high_percentile: float = at_least(0, 100)
    max_length: int = at_least(1)


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
    dtype: str = dtype()
    use_chat_template: bool = MISSING


@dataclass
class DeitaScorer(ScorerConfig):
    complexity_model: DeitaJudgeModel = field(default_factory=DeitaJudgeModel)
    quality_model: DeitaJudgeModel = field(default_factory=DeitaJudgeModel)
    complexity_template: str = MISSING
    quality_template: str = MISSING
    scale: int = at_least(2)
    batch_size: int = at_least(1)


@dataclass
class ScarScorer(ScorerConfig):
    model: NamedHubModel = field(default_factory=NamedHubModel)
    text: str = one_of(*TEXT_FIELDS)
    dedupe: bool = MISSING
    english_min_percent: Optional[int] = at_least(0, 100)
    max_length: int = at_least(1)
    batch_size: int = at_least(1)
    chunk_size: int = at_least(1)
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
    n_finetunes: int = at_least(1)


@dataclass
class RewardConfig:
    name: str = MISSING
    kind: str = one_of("judge", "reward_model")
    batch_size: int = at_least(1)


@dataclass
class JudgeReward(RewardConfig):
    """scorer/reward=judge: the backbone rates the answer (a substitute for a reward model)."""

    substitute_for: str = MISSING
    question_template: str = MISSING
    use_chat_template: bool = MISSING
    scale: int = at_least(2)


@dataclass
class RewardModel(RewardConfig):
    """scorer/reward=oasst_deberta: a sequence-classification reward model."""

    model: HubModel = field(default_factory=HubModel)
    input_template: Optional[str] = MISSING
    max_length: int = at_least(1)


@dataclass
class InstructMiningScorer(ScorerConfig):
    log_indicators: List[str] = MISSING
    # indicator name -> its spec ({kind: length | perplexity | mtld | knn | unieval, ...}): a free-form
    # map, since a rule may name new indicators; scorers/instructmining checks each spec's keys.
    indicators: Dict[str, Any] = MISSING
    rule: RuleConfig = field(default_factory=RuleConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
