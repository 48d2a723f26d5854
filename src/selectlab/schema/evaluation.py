"""The eval group (conf/eval/)."""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from omegaconf import MISSING


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

    backend: str = MISSING
    dtype: str = MISSING
    batch_size: Union[int, str] = MISSING  # an int or "auto"
    device: Optional[str] = MISSING
    model_args: Dict[str, Any] = MISSING
    limit: Optional[Union[int, float]] = MISSING
    offline: bool = MISSING
    allow_code_execution: bool = MISSING
    apply_chat_template: bool = MISSING
    gen_kwargs: Any = MISSING  # null or a map; Any, as DeitaSelector.model (a map set on a null Optional[Dict] fails)
    log_samples: bool = MISSING
    task_dirs: List[str] = MISSING
    bootstrap_iters: int = MISSING


@dataclass
class BenchmarkEval(LmEvalConfig):
    """eval=adg_six, eval=smoke: GSM8K's score in the groups follows gsm8k_filter."""

    gsm8k_filter: str = MISSING


@dataclass
class HeldoutLoss:
    template: str = MISSING
    max_length: int = MISSING
    batch_size: int = MISSING
    dtype: str = MISSING


@dataclass
class HeldoutLossEval(LmEvalConfig):
    heldout_loss: HeldoutLoss = field(default_factory=HeldoutLoss)
