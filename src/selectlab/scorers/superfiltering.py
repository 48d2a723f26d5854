"""SuperFiltering: IFD computed by a small scoring model instead of the backbone.

``scorer.model`` names that model the way a backbone config does: the embedded SmolLM2
(``gguf_package``/``gguf_file``, offline), a local ``path``, or a ``hub_id`` (the
release's GPT-2: ``scorer=superfiltering_gpt2``; offline it must already be in the local
Hugging Face cache). The release's defaults: the plain "{instruction}\\n{input}\\n" prompt,
loss(A) of the answer alone without BOS, max length 1024, and the ratio of perplexities
(``ratio: perplexity``, its ``ifd_ppl``) rather than of losses.
"""
from __future__ import annotations


from ..lm.backbone import resolve_model
from ..context import RunContext
from . import Scores, register
from .ifd import ifd_scores


@register("superfiltering", reads=("backbone",))
def score_superfiltering(ctx: RunContext) -> Scores:
    model_cfg = ctx.cfg.scorer.model
    return ifd_scores(ctx, resolve_model(model_cfg, "scorer.model", ctx.store), model_cfg)
