"""vLLM's top-k + top-p mask on CPU without sorting the vocabulary.

vLLM's PyTorch path (``apply_top_k_top_p_pytorch``, the one its CPU sampler uses) sorts every row of
the logits (49,152 entries for SmolLM2) at every decoding step to apply top-k and then top-p. With
top-k set, only the ``k`` largest logits can survive, so :func:`top_k_top_p` takes them with
``topk``, lays them out as vLLM's sorted row has them and applies the same two masks with the same
arithmetic: the masked logits are the ones vLLM's path returns, bit for bit (tested against it), and
the sampled tokens are the same. A batch with a row that needs the whole vocabulary (no top-k) or
equal logits among the kept ones (whose order only vLLM's sort decides) goes through vLLM's own
function.

On 2 CPU cores the sort took about half of ADG's decode time (docs/speed.md). :func:`installed`
puts the function in place while an in-process engine samples on a CPU (``sampler.in_process``: the
engine's worker runs in this process, so the replacement reaches it; GPUs keep vLLM's own kernels).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

log = logging.getLogger(__name__)


def top_k_top_p(logits, k, p, fallback):
    """The logits with every entry outside top-k, then outside top-p, set to -inf (in place, as
    vLLM's path does); ``fallback`` is vLLM's own function, used where this one would differ."""
    import torch

    if k is None or p is None or bool((k >= logits.shape[1]).any()):
        return fallback(logits, k, p)
    k = k.to(torch.long)
    k_max = int(k.max())
    top_values, top_index = logits.topk(k_max, dim=1)  # descending
    kth = top_values.gather(1, (k - 1).unsqueeze(1))  # vLLM keeps every logit >= the k-th largest
    if bool(((logits >= kth).sum(1) > k_max).any()) or bool((top_values[:, 1:] == top_values[:, :-1]).any()):
        return fallback(logits, k, p)  # a tie: vLLM's sort decides which of the equal logits comes first
    # vLLM's sorted row, rebuilt: -inf where its top-k mask put it, then the kept logits ascending. The
    # softmax and the cumulative sum then run over the same numbers in the same places, so the top-p cut
    # falls where vLLM's falls, to the last bit.
    row = torch.full_like(logits, -float("inf"))
    values, index = top_values.flip(1), top_index.flip(1)
    row[:, -k_max:] = values.masked_fill(values < kth, -float("inf"))
    cumulative = torch.cumsum(row.softmax(dim=-1)[:, -k_max:], dim=-1)  # the zeros before add nothing
    cut = cumulative <= 1 - p.unsqueeze(1)
    cut[:, -1] = False  # at least one
    kept = row[:, -k_max:].masked_fill(cut, -float("inf"))
    return logits.fill_(-float("inf")).scatter_(1, index, kept)


@contextmanager
def installed():
    """vLLM's CPU sampler uses :func:`top_k_top_p` while the block runs (nothing changes when this
    vLLM has no such function: the sampler then stays as it is, and a log line says so)."""
    try:
        from vllm.v1.sample.ops import topk_topp_sampler as ops
    except ImportError:
        yield
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        yield
        return
    original = getattr(ops, "apply_top_k_top_p", None)
    if original is None:
        log.info("vLLM has no apply_top_k_top_p: its own top-k/top-p sampling is used")
        yield
        return
    ops.apply_top_k_top_p = lambda logits, k, p: top_k_top_p(logits, k, p, original)
    try:
        yield
    finally:
        ops.apply_top_k_top_p = original
