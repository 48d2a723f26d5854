"""SuperFiltering: IFD computed by a small scoring model instead of the backbone.

``scorer.model`` names that model the way a backbone config does: the embedded SmolLM2
(``gguf_package``/``gguf_file``, offline), a local ``path``, or a ``hub_id`` (the
release's GPT-2: ``scorer=superfiltering_gpt2``; offline it must already be in the local
Hugging Face cache). The release's defaults: the plain "{instruction}\\n{input}\\n" prompt,
loss(A) of the answer alone without BOS, max length 1024, and the ratio of perplexities
(``ratio: perplexity``, its ``ifd_ppl``) rather than of losses.
"""
from __future__ import annotations

from omegaconf import OmegaConf

from ..backbone import BackboneError, resolve_backbone
from . import ScoreContext, Scores, register
from .ifd import ifd_scores


@register("superfiltering")
def score_superfiltering(ctx: ScoreContext) -> Scores:
    model_cfg = OmegaConf.to_container(ctx.cfg.scorer.model, resolve=True)
    try:
        path = resolve_backbone(model_cfg, ctx.store)
    except BackboneError as e:
        raise BackboneError(f"scorer.model (SuperFiltering's scoring model): {e} "
                            f"(here the keys are scorer.model.path / scorer.model.allow_download)") from None
    return ifd_scores(ctx, path, model_cfg)
