"""Model size and FLOPs from a Hugging Face ``config.json`` alone (no weights are read).

The parameter counts come from the model transformers would build, instantiated on the
``meta`` device (shapes only, no memory), so any architecture transformers knows is counted
the way it really is (GQA, biases, tied heads). FLOPs per token follow the usual
accounting: 2 per weight of every matrix multiply a token goes through (the decoder layers
it needs and, when logits are computed, the LM head; embedding lookups and norms are not
matmuls), plus attention's 4 x context x attention width per layer; a backward pass costs
twice its forward, gradient checkpointing adds one more forward.

Imports only torch and transformers: ``bench/gpu_check.py`` uses it on machines without Hydra.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from ..infra.paths import REPO_ROOT

CONFIG_ONLY_DIR = REPO_ROOT / "conf" / "backbone" / "configs"


@dataclass(frozen=True)
class Arch:
    """What the FLOPs of a decoder depend on."""

    name: str
    source: str  # the config.json it was read from
    model_type: str
    n_layers: int
    hidden: int
    attn_width: int  # query heads x head dim
    vocab: int
    params: int  # every parameter (tied weights once)
    layer_params: int  # one decoder layer
    head_params: int  # the LM head matmul (vocab x hidden), run even when tied to the embeddings

    @property
    def matmul_params(self) -> int:
        return self.layer_params * self.n_layers + self.head_params

    def forward_flops_per_token(self, context: float, depth: int | None = None, head: bool = True) -> float:
        """One token through ``depth`` layers (all by default), attending to ``context`` tokens on average."""
        depth = self.n_layers if depth is None else depth
        return 2.0 * (self.layer_params * depth + (self.head_params if head else 0)) + 4.0 * depth * context * self.attn_width

    def train_flops_per_token(self, context: float, method: str = "full", checkpointing: bool = False) -> float:
        """Forward + backward of one training token. Full: weight and activation gradients (3x a
        forward); LoRA: activation gradients only (2x; the adapters' own matmuls are negligible)."""
        passes = {"full": 3.0, "lora": 2.0}[method] + (1.0 if checkpointing else 0.0)
        return passes * self.forward_flops_per_token(context)

    def as_dict(self) -> dict:
        return {**asdict(self), "matmul_params": self.matmul_params}


def _repeated_blocks(model, n_layers: int):
    """The module list holding the ``n_layers`` decoder blocks (model.model.layers, transformer.h, ...)."""
    import torch

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers]
    if not lists:
        raise ValueError(f"{type(model).__name__}: no list of {n_layers} layers found")
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


@lru_cache(maxsize=32)
def arch_from_config(folder: str, name: str | None = None) -> Arch:
    """The :class:`Arch` of the model whose ``config.json`` is in ``folder``."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        try:
            model = AutoModelForCausalLM.from_config(config)
        except ValueError:  # an encoder (a sentence embedder, a reward model)
            model = AutoModel.from_config(config)
    n_layers = int(config.num_hidden_layers)
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    blocks = _repeated_blocks(model, n_layers)
    layer_params = sum(p.numel() for p in blocks.parameters()) // n_layers
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_params = int(out.weight.numel()) if out is not None else 0
    return Arch(
        name=name or Path(folder).name, source=str(path), model_type=config.model_type, n_layers=n_layers,
        hidden=hidden, attn_width=heads * head_dim, vocab=int(config.vocab_size),
        params=sum(p.numel() for p in model.parameters()), layer_params=layer_params, head_params=head_params,
    )


def config_only_dir(name: str) -> Path | None:
    """``conf/backbone/configs/<name>/``: the shipped config of a preset whose weights are not here."""
    folder = CONFIG_ONLY_DIR / name
    return folder if (folder / "config.json").is_file() else None
