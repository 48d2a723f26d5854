"""conf/config.yaml's own keys and the groups of a run's pipeline stages other than scorer,
selector and eval: backbone, pool (and heldout), sampler, embedding, train, logger."""
from dataclasses import dataclass, field
from typing import Any, List, Optional, Union

from omegaconf import MISSING

from .models import ModelEntry


@dataclass
class BackboneConfig(ModelEntry):
    dtype: str = MISSING
    empty_answer: str = MISSING  # instruction | zero: how ADG embeds an empty answer


# ---------------------------------------------------------------- pool, heldout
@dataclass
class PoolSource:
    """Where records come from and how many: the ``heldout`` set, and the base of every pool."""

    name: str = MISSING
    loader: str = MISSING
    path: Optional[str] = MISSING
    limit: Optional[int] = MISSING
    sample: str = MISSING
    empty_instruction: str = MISSING


@dataclass
class PoolConfig(PoolSource):
    hub_id: Optional[str] = MISSING
    duplicates: str = MISSING  # drop | keep | error (conf/config.yaml)


@dataclass
class HubPool(PoolConfig):
    split: str = MISSING


@dataclass
class FlanCotPool(PoolConfig):
    answer_format: str = MISSING


# ---------------------------------------------------------------- sampler
@dataclass
class SamplerConfig:
    name: str = MISSING
    k: int = MISSING
    temperature: float = MISSING
    top_p: float = MISSING
    top_k: int = MISSING
    repetition_penalty: Optional[float] = MISSING
    eos: str = MISSING
    max_new_tokens: int = MISSING
    prompt_max_tokens: Optional[int] = MISSING
    template: str = MISSING
    batch_size: int = MISSING
    dtype: str = MISSING


@dataclass
class HfSampler(SamplerConfig):
    device: Optional[str] = MISSING


@dataclass
class VllmSampler(SamplerConfig):
    seeding: str = MISSING
    tensor_parallel_size: int = MISSING
    data_parallel_size: int = MISSING
    gpu_memory_utilization: float = MISSING
    max_model_len: Optional[int] = MISSING
    enforce_eager: bool = MISSING
    max_num_seqs: Optional[int] = MISSING
    max_num_batched_tokens: Optional[int] = MISSING
    enable_prefix_caching: Optional[bool] = MISSING
    cpu_kvcache_space_gib: Optional[int] = MISSING
    cpu_reserved_cores: Optional[int] = MISSING


# ---------------------------------------------------------------- embedding
@dataclass
class EmbeddingConfig:
    """The schema of ``selectlab.lm.embedding.EmbeddingConfig`` (which checks the values' ranges)."""

    name: str = MISSING
    layers: List[int] = MISSING
    text: str = MISSING
    empty_answer: str = MISSING
    pool: str = MISSING
    max_length: int = MISSING
    dtype: str = MISSING
    token_budget: int = MISSING
    prefix_reuse: bool = MISSING
    device: Optional[str] = MISSING


# ---------------------------------------------------------------- train
@dataclass
class TrainConfig:
    """train=none; the base of every fine-tune (``selectlab.lm.train.TrainConfig`` checks values)."""

    name: str = MISSING
    method: str = MISSING


@dataclass
class FinetuneConfig(TrainConfig):
    template: str = MISSING
    lr: float = MISSING
    epochs: Union[int, float] = MISSING  # an int stays an int: the fine-tune's key hashes it as written
    max_steps: int = MISSING
    scheduler: str = MISSING
    warmup_ratio: float = MISSING
    weight_decay: float = MISSING
    per_device_batch_size: int = MISSING
    grad_accum: Optional[int] = MISSING
    effective_batch_size: Optional[int] = MISSING
    max_length: int = MISSING
    bf16: bool = MISSING
    gradient_checkpointing: bool = MISSING
    seed: int = MISSING
    save_steps: int = MISSING
    save_total_limit: Optional[int] = MISSING
    logging_steps: int = MISSING


@dataclass
class PaperFinetune(FinetuneConfig):
    drop_input: bool = MISSING


@dataclass
class LoraFinetune(FinetuneConfig):
    lora_r: int = MISSING
    lora_alpha: int = MISSING
    lora_dropout: float = MISSING
    lora_target_modules: List[str] = MISSING


# ---------------------------------------------------------------- logger
@dataclass
class LoggerConfig:
    name: str = MISSING


@dataclass
class WandbLogger(LoggerConfig):
    mode: str = MISSING
    project: str = MISSING
    entity: Optional[str] = MISSING
    group: Optional[str] = MISSING
    tags: List[str] = MISSING
    table_rows: int = MISSING


# ---------------------------------------------------------------- the run's own keys
@dataclass
class SelectionConfig:
    budget: Union[int, float] = MISSING  # a count (int >= 1) or a fraction of the pool (float in (0, 1))


@dataclass
class CompareConfig:
    baselines: List[str] = MISSING
    seeds: Optional[List[int]] = MISSING
    selected_seeds: Optional[List[int]] = MISSING
    random_scorer: Any = MISSING    # composed from conf/scorer/random.yaml (config.yaml's defaults)
    random_selector: Any = MISSING  # composed from conf/selector/topk.yaml


@dataclass
class ExportConfig:
    formats: List[str] = MISSING
    push_to_hub: Optional[str] = MISSING
    name: str = MISSING


@dataclass
class SelectConfig:
    backbone: Any = None  # the scoring model when another than the backbone chooses (backbone@select.backbone=...)


@dataclass
class FitConfig:
    name: str = MISSING
    subsets: int = MISSING
    subset_size: int = MISSING
    indicators: List[str] = MISSING


@dataclass
class ShardConfig:
    index: Optional[int] = MISSING
    count: int = MISSING


@dataclass
class StoreConfig:
    verify: str = MISSING


@dataclass
class RunConfig:
    """conf/config.yaml. The groups are typed by their options' own schemas (named in each file's
    defaults list), not here: ``Any`` lets code replace a whole section (the random baseline's
    scorer) without a type clash; tests/test_schema.py checks that every option has a schema."""

    seed: int = MISSING
    run_dir: str = MISSING
    cache_dir: str = MISSING
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    task: str = MISSING
    heldout: PoolSource = field(default_factory=PoolSource)
    fit: FitConfig = field(default_factory=FitConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    backbone: Any = MISSING
    pool: Any = MISSING
    scorer: Any = MISSING
    selector: Any = MISSING
    sampler: Any = MISSING
    embedding: Any = MISSING
    train: Any = MISSING
    eval: Any = MISSING
    logger: Any = MISSING
