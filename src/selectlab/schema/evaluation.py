"""The eval group (conf/eval/)."""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from .domain import MISSING, above, at_least, map_or_null, one_of
from .models import dtype
from .run import PROMPT_TEMPLATES


@dataclass
class EvalConfig:
    """eval=none; the base of every eval."""

    name: str = MISSING
    # task key -> {lm_eval, num_fewshot, metric, filter}: a free-form map (presets add tasks with
    # '+eval.tasks.<key>={...}' and drop them with '~eval.tasks.<key>')
    tasks: Dict[str, Any] = MISSING
    groups: Dict[str, List[str]] = MISSING


@dataclass
class LmEvalConfig(EvalConfig):
    """lm-evaluation-harness settings (eval=openllm)."""

    backend: str = one_of("hf", "vllm")
    dtype: str = dtype()
    batch_size: Union[int, str] = MISSING  # an int or "auto"
    device: Optional[str] = MISSING
    model_args: Dict[str, Any] = MISSING
    limit: Optional[Union[int, float]] = above(0)  # a count, or a fraction below 1
    offline: bool = MISSING
    allow_code_execution: bool = MISSING
    apply_chat_template: bool = MISSING
    gen_kwargs: Any = map_or_null()  # null or a map; Any, as DeitaSelector.model (a map set on a null Optional[Dict] fails)
    log_samples: bool = MISSING
    task_dirs: List[str] = MISSING
    bootstrap_iters: int = at_least(0)


@dataclass
class BenchmarkEval(LmEvalConfig):
    """eval=adg_six, eval=smoke: GSM8K's score in the groups follows gsm8k_filter."""

    gsm8k_filter: str = one_of("strict-match", "flexible-extract")


@dataclass
class HeldoutLoss:
    template: str = one_of(*PROMPT_TEMPLATES)
    max_length: int = at_least(1)
    batch_size: int = at_least(1)
    dtype: str = dtype()


@dataclass
class HeldoutLossEval(LmEvalConfig):
    heldout_loss: HeldoutLoss = field(default_factory=HeldoutLoss)
