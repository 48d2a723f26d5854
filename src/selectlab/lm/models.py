"""Loading a causal LM and its tokenizer the same way in every stage."""
from __future__ import annotations

import logging

from ..errors import SelectlabError
from ..schema.models import DTYPES as SCHEMA_DTYPES

log = logging.getLogger(__name__)

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16", "auto": "auto"}
assert tuple(DTYPES) == SCHEMA_DTYPES, "a dtype is named in selectlab.schema.models.DTYPES too"


def torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise SelectlabError(f"dtype={name!r}; choose one of {sorted(DTYPES)}")
    return "auto" if DTYPES[name] == "auto" else getattr(torch, DTYPES[name])


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(path: str, padding_side: str = "right"):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = padding_side
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str, dtype: str = "float32", device: str | None = None, attn_implementation: str | None = None):
    """Model in eval mode on ``device`` (default: CUDA when present); ``attn_implementation``:
    transformers' default when None."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype), attn_implementation=attn_implementation)
    return model.to(device or default_device()).eval()
