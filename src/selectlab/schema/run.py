"""conf/config.yaml's own keys and the groups of a run's pipeline stages other than scorer,
selector and eval: backbone, pool (and heldout), sampler, embedding, train, logger."""
from dataclasses import asdict, dataclass, field
from typing import Any, List, Optional, Union

from ..errors import SelectlabError
from ..infra.store import VERIFY_LEVELS
from .domain import MISSING, above, at_least, map_or_null, one_of
from .models import ModelEntry, dtype

DUPLICATE_MODES = ("drop", "keep", "error")
LOADERS = ("alpaca", "flan_cot", "lima", "code_alpaca", "self_instruct_seed", "json", "hub")  # selectlab.pools.LOADERS
SAMPLER_BACKENDS = ("vllm", "hf")
SEEDING = ("request", "engine")
EOS_RULES = ("tokenizer", "generation_config")
PROMPT_TEMPLATES = ("alpaca", "alpaca_no_input", "chat")  # selectlab.lm.prompts.render_prompt
EMBEDDED_TEXT = ("instruction+answer", "answer")
EMPTY_ANSWER_RULES = ("instruction", "zero")
POOLING = ("all", "answer")
TRAIN_METHODS = ("none", "full", "lora")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
              "warmup_stable_decay")  # transformers' SchedulerType (5.x) that the Trainer takes by name
TASKS = ("select", "fit_rule", "plan")


@dataclass
class BackboneConfig(ModelEntry):
    dtype: str = dtype()
    empty_answer: str = one_of(*EMPTY_ANSWER_RULES)  # how ADG embeds an empty answer


# ---------------------------------------------------------------- pool, heldout
@dataclass
class PoolSource:
    """Where records come from and how many: the ``heldout`` set, and the base of every pool."""

    name: str = MISSING
    loader: str = one_of(*LOADERS)
    path: Optional[str] = MISSING
    limit: Optional[int] = at_least(1, default=None)  # null: the whole pool
    sample: str = one_of("random", "head", default="random")
    empty_instruction: str = one_of("drop", "error", default="drop")


@dataclass
class PoolConfig(PoolSource):
    hub_id: Optional[str] = None
    duplicates: str = one_of(*DUPLICATE_MODES, default="drop")


@dataclass
class HubPool(PoolConfig):
    split: str = "train"


@dataclass
class FlanCotPool(PoolConfig):
    answer_format: str = "{rationale} So the answer is {answer}."


# ---------------------------------------------------------------- sampler
@dataclass
class SamplerConfig:
    name: str = one_of(*SAMPLER_BACKENDS)
    k: int = at_least(1)
    temperature: float = above(0)  # this stage samples
    top_p: float = above(0, 1)
    top_k: int = at_least(0)  # 0 = off
    repetition_penalty: Optional[float] = above(0)
    eos: str = one_of(*EOS_RULES)
    max_new_tokens: int = at_least(1)
    prompt_max_tokens: Optional[int] = at_least(1)  # null: no cut
    template: str = one_of(*PROMPT_TEMPLATES)
    batch_size: int = at_least(1)
    dtype: str = dtype()

    # The knobs that decide the answers' bytes (batch_size does for hf, whose random stream is per batch);
    # engine knobs (memory share, eager mode, where the engine runs) do not and stay out of every key.
    ANSWER_KNOBS = ("name", "k", "temperature", "top_p", "top_k", "repetition_penalty", "eos", "max_new_tokens",
                    "prompt_max_tokens", "template", "dtype", "batch_size", "seeding")

    def key_fields(self) -> dict:
        """The answer knobs (``seeding`` is None for hf, which has none)."""
        return {k: getattr(self, k, None) for k in self.ANSWER_KNOBS}


@dataclass
class HfSampler(SamplerConfig):
    device: Optional[str] = MISSING


@dataclass
class VllmSampler(SamplerConfig):
    seeding: str = one_of(*SEEDING)
    tensor_parallel_size: int = at_least(1)
    # vLLM's LLM(...) refuses single-process data parallelism: shard the pool over several runs instead
    data_parallel_size: int = at_least(1, 1)
    gpu_memory_utilization: float = above(0, 1)
    max_model_len: Optional[int] = at_least(1)
    enforce_eager: bool = MISSING
    max_num_seqs: Optional[int] = at_least(1)
    max_num_batched_tokens: Optional[int] = at_least(1)
    enable_prefix_caching: Optional[bool] = MISSING
    cpu_kvcache_space_gib: Optional[int] = at_least(1)
    cpu_reserved_cores: Optional[int] = at_least(0)
    # the engine core and its worker in the run's process (lm.sampling.engine_placement; with tensor_parallel_size 1
    # only); false, vLLM's own processes, for a sampler map written before the key existed
    in_process: bool = False


# ---------------------------------------------------------------- embedding
@dataclass
class EmbeddingConfig:
    """ADG's answer embedding (conf/embedding/; selectlab.lm.embedding reads it)."""

    name: str = MISSING
    layers: List[int] = MISSING  # indices into the model's hidden_states (n_layers + 1 entries)
    text: str = one_of(*EMBEDDED_TEXT)
    empty_answer: str = one_of(*EMPTY_ANSWER_RULES)
    pool: str = one_of(*POOLING)
    max_length: int = at_least(1)
    dtype: str = dtype()
    token_budget: int = at_least(1)  # a text longer than the budget runs alone
    prefix_reuse: bool = MISSING
    device: Optional[str] = MISSING

    @property
    def embeds_empty_answers(self) -> bool:
        """The LLaMA release tests the joint text `instruction + " " + answer` for emptiness, so an
        empty answer embeds the instruction alone; the Qwen release gives it the zero vector."""
        return self.empty_answer == "instruction" and self.text == "instruction+answer"

    def empty_answer_counts(self, n_empty: int) -> dict[str, int]:
        """How many empty answers took each path (manifest and W&B counts)."""
        return {"empty_answers_as_instruction": n_empty if self.embeds_empty_answers else 0,
                "empty_answers_as_zero": 0 if self.embeds_empty_answers else n_empty}


# ---------------------------------------------------------------- train
@dataclass
class TrainConfig:
    """train=none; the base of every fine-tune."""

    name: str = MISSING
    method: str = one_of(*TRAIN_METHODS)


@dataclass
class FinetuneConfig(TrainConfig):
    """A fine-tune (train=cpu_small, paper; selectlab.lm.train reads it)."""

    method: str = one_of("none", "full")  # lora: train=lora, whose schema has the lora_* keys
    template: str = one_of(*PROMPT_TEMPLATES)
    drop_input: bool = MISSING  # train without the records' `input` (the ADG release's top.json has none)
    lr: float = above(0)
    epochs: Union[int, float] = above(0)  # an int stays an int: the fine-tune's key hashes it as written
    max_steps: int = at_least(-1)  # > 0 overrides epochs
    scheduler: str = one_of(*SCHEDULERS)
    warmup_ratio: float = at_least(0, 1)
    weight_decay: float = at_least(0)
    per_device_batch_size: int = at_least(1)
    grad_accum: Optional[int] = at_least(1)  # null: from effective_batch_size
    effective_batch_size: Optional[int] = at_least(1)
    max_length: int = at_least(1)
    # each micro-batch as one packed row (selectlab.lm.packing): no padding, logits at response positions only
    packing: bool = False
    bf16: bool = MISSING
    gradient_checkpointing: bool = MISSING
    seed: int = MISSING
    save_steps: int = at_least(1)
    save_total_limit: Optional[int] = at_least(1)
    logging_steps: int = at_least(1)

    # Settings that change how often we save or log, never the weights, stay out of the fine-tune's key.
    NOT_IN_KEY = ("name", "save_steps", "save_total_limit", "logging_steps")

    def key_fields(self) -> dict:
        """The settings that decide the weights (the ``lora_*`` ones only for ``method=lora``)."""
        fields = {k: v for k, v in asdict(self).items() if k not in self.NOT_IN_KEY}
        if self.method != "lora":
            fields = {k: v for k, v in fields.items() if not k.startswith("lora_")}
        if not self.packing:  # a key written before the option existed stays the same
            del fields["packing"]
        return fields

    def grad_accum_for(self, world_size: int) -> int:
        """Accumulation steps that give ``effective_batch_size`` on ``world_size`` processes."""
        if self.effective_batch_size is None:
            if self.grad_accum is None:
                raise SelectlabError("set train.grad_accum or train.effective_batch_size")
            return self.grad_accum
        per_step = self.per_device_batch_size * world_size
        if self.effective_batch_size % per_step:
            raise SelectlabError(
                f"train.effective_batch_size={self.effective_batch_size} is not a multiple of "
                f"train.per_device_batch_size * world size = {self.per_device_batch_size} * {world_size}"
            )
        accum = self.effective_batch_size // per_step
        if self.grad_accum is not None and self.grad_accum != accum:
            raise SelectlabError(
                f"train.grad_accum={self.grad_accum} contradicts train.effective_batch_size="
                f"{self.effective_batch_size} on {world_size} process(es) (needs {accum}); set one of them to null"
            )
        return accum


@dataclass
class LoraFinetune(FinetuneConfig):
    method: str = one_of(*TRAIN_METHODS)
    lora_r: int = at_least(1)
    lora_alpha: int = at_least(1)
    lora_dropout: float = at_least(0, 1)
    lora_target_modules: List[str] = MISSING


# ---------------------------------------------------------------- logger
@dataclass
class LoggerConfig:
    name: str = one_of("wandb", "none")


@dataclass
class WandbLogger(LoggerConfig):
    mode: str = one_of("offline", "online", "disabled")
    project: str = MISSING
    entity: Optional[str] = MISSING
    group: Optional[str] = MISSING
    tags: List[str] = MISSING
    table_rows: int = at_least(0)


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
    backbone: Any = map_or_null(None)  # the scoring model when another than the backbone chooses (backbone@select.backbone=...)


@dataclass
class FitConfig:
    name: str = MISSING
    subsets: int = at_least(1)
    subset_size: int = at_least(1)
    indicators: List[str] = MISSING


@dataclass
class ShardConfig:
    index: Optional[int] = at_least(0)  # < count (validate)
    count: int = at_least(1)


@dataclass
class StoreConfig:
    verify: str = one_of(*VERIFY_LEVELS)


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
    task: str = one_of(*TASKS)
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
