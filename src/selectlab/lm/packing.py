"""Examples laid end to end in one row: no padding, attention within each example, logits only
where a response token is predicted.

A fine-tune's step and the held-out loss average cross-entropy over response tokens only, so the
padding of a batch, the logits of prompt positions (``vocab`` wide: a fifth of a small model's
work) and, at a micro-batch of one, the per-example gradient accumulation are all work whose result
is thrown away. A packed batch is one row holding the examples one after another; its positions
restart at 0 for each example, and :func:`packed_sdpa` runs PyTorch's causal SDPA on each
example's own slice, so every example sees exactly the tokens it would see alone: the same sums as
one example per batch, laid out differently (gradients equal to about 1e-7, tested). The model
computes logits only at ``logits_to_keep`` (the positions whose next token is a response token)
and its loss reads ``shift_labels``, the targets of those positions.

A model takes it with ``attn_implementation=ATTENTION`` (:func:`attention`); without packed
batches it behaves as ``sdpa``.
"""
from __future__ import annotations

from typing import Sequence

IGNORE_INDEX = -100  # label value that torch's cross-entropy (and transformers' loss) skips
ATTENTION = "selectlab_packed_sdpa"
PACKED_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def packed_sdpa(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention on each packed example's slice (``cu_seq_lens_q`` bounds them);
    an unpacked batch goes to transformers' SDPA as it is."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.pop("cu_seq_lens_q", None)
    for name in PACKED_KEYS[1:]:
        kwargs.pop(name, None)
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    bounds = bounds.tolist()
    outputs = [sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, **kwargs)[0]
               for a, b in zip(bounds[:-1], bounds[1:])]
    return torch.cat(outputs, dim=1), None


def padding_mask_only(*args, attention_mask=None, **kwargs):
    """transformers' SDPA mask where a batch brings a padding mask; none otherwise. Without a cache,
    transformers reads a packed row's restarting positions and would build a block mask of the
    row's length squared (256 MiB for 8 examples of 2048 tokens) that :func:`packed_sdpa` never
    reads: the bounds say it all. A packed row therefore always carries its bounds (:func:`pack`)."""
    from transformers.masking_utils import sdpa_mask

    return None if attention_mask is None else sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def attention() -> str:
    """The name to load a model with (``attn_implementation=``), registered with transformers once."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION, packed_sdpa)
    AttentionMaskInterface.register(ATTENTION, padding_mask_only)
    return ATTENTION


def check_launch(world_size: int) -> None:
    """A packed row is one sequence: the Trainer's DataParallel (several GPUs, one process) would
    cut its bounds and kept positions apart across replicas. One process per GPU is fine."""
    import torch

    from ..errors import SelectlabError

    if world_size == 1 and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        raise SelectlabError(f"train.packing=true with {torch.cuda.device_count()} GPUs in one process: launch with "
                             "torchrun or accelerate (one process per GPU), show one GPU (CUDA_VISIBLE_DEVICES), "
                             "or set train.packing=false")


def pack(examples: Sequence[dict]) -> dict:
    """One packed row of encoded examples (``input_ids`` and ``labels``, prompt labels -100): the
    model's inputs and the loss's targets. ``segment`` says which example each kept position
    belongs to (for per-example sums)."""
    import torch

    ids = [t for ex in examples for t in ex["input_ids"]]
    labels = [t for ex in examples for t in ex["labels"]]
    lengths = [len(ex["input_ids"]) for ex in examples]
    # the target of position i is token i + 1 of the same example; an example's last position has none
    targets = [t for ex in examples for t in (*ex["labels"][1:], IGNORE_INDEX)]
    keep = [i for i, t in enumerate(targets) if t != IGNORE_INDEX]
    bounds = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return {
        "input_ids": torch.tensor([ids]),
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([[p for n in lengths for p in range(n)]]),
        "cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds,
        "max_length_q": max(lengths), "max_length_k": max(lengths),
        "logits_to_keep": torch.tensor(keep, dtype=torch.long),
        "shift_labels": torch.tensor([[targets[i] for i in keep]]),
        "segment": torch.searchsorted(bounds[1:], torch.tensor(keep, dtype=torch.int32), right=True),
    }


class PackingCollator:
    """The Trainer's collator for ``train.packing``: each micro-batch becomes one packed row."""

    def __call__(self, examples: Sequence[dict]) -> dict:
        batch = pack(examples)
        del batch["segment"]
        return batch
