"""DEITA (Liu et al. 2024, hkust-nlp/deita): score = complexity x quality, each an expected 1-6 rating.

A judge LM reads a fixed prompt (the release's templates) and the rating is the expectation of
1..6 under the softmax of its next-token logits restricted to the six digit tokens (the
release's ``Scorer.infer_score``). Complexity rates the instruction (+ input) alone, quality
the (instruction, response) pair. Selection is DEITA's own: ``selector=auto`` resolves to
conf/selector/deita.yaml (score-first, skip cosine > 0.9, see :mod:`selectlab.selectors.diverse`).

Judges: ``scorer.complexity_model`` / ``scorer.quality_model`` name the released scorers on the
hub (``hkust-nlp/deita-complexity-scorer``, ``hkust-nlp/deita-quality-scorer``); offline they must
already be in the local Hugging Face cache or at ``path``. With ``use_backbone: true`` the run's
backbone judges instead, with the same templates: a SUBSTITUTE (``scorer=deita_judge``), logged
as such and recorded in the scores' meta, because a model not trained to rate gives ratings on
another scale. Each axis is its own cached, batch-resumable artifact (shared with InstructMining's
judge code).
"""
from __future__ import annotations

import functools
import logging

import numpy as np

from ..lm.backbone import resolve_model
from ..errors import SelectlabError
from ..lm.models import load_causal_lm, load_tokenizer
from ..config import plain
from ..context import RunContext
from ..schema.scoring import DeitaJudgeModel, DeitaScorer
from . import Scores, register
from .instructmining import _backbone_loaders, judge_ratings

log = logging.getLogger(__name__)

AXES = ("complexity", "quality")


class DeitaConfigError(SelectlabError):
    pass


def _judge(ctx: RunContext, axis: str, entry: DeitaJudgeModel, shared: dict) -> tuple[object, object, str]:
    """(loader of (model, tokenizer), model identity for the cache key, description) for one axis.

    Resolves the model folder now, so a missing model fails before any rating is computed."""
    key = f"scorer.{axis}_model"
    if entry.use_backbone:
        tokenizer = load_tokenizer(ctx.backbone(), "right")
        described = f"the backbone {ctx.cfg.backbone.name} (SUBSTITUTE for {entry.hub_id})"
        loader, ident = shared["backbone"], plain(ctx.cfg.backbone)
    else:
        path = resolve_model(entry, key, ctx.store, error=DeitaConfigError)
        tokenizer = load_tokenizer(path, "right")
        described = entry.hub_id or path
        loader = functools.cache(lambda: (load_causal_lm(path, entry.dtype), load_tokenizer(path, "right")))
        ident = {k: v for k, v in plain(entry).items() if k not in ("allow_download",)}
    if entry.use_chat_template and not getattr(tokenizer, "chat_template", None):
        raise DeitaConfigError(f"{key}.use_chat_template=true but the tokenizer of {described} has no chat template")
    return loader, ident, described


def combined_score(complexity: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """The release's final score (Combined_Filter._sort): complexity x quality, summed over turns
    (one turn per record here). NaN when either rating is NaN."""
    return np.asarray(complexity, np.float64) * np.asarray(quality, np.float64)


@register("deita", reads=("backbone",))
def score_deita(ctx: RunContext) -> Scores:
    scfg: DeitaScorer = ctx.cfg.scorer
    shared = _backbone_loaders(ctx)
    models = {axis: getattr(scfg, f"{axis}_model") for axis in AXES}
    judges = {axis: _judge(ctx, axis, models[axis], shared) for axis in AXES}
    substitutes = [axis for axis in AXES if models[axis].use_backbone]
    for axis in substitutes:
        log.warning("DEITA %s: %s judges with the release's template; ratings are not the trained scorer's",
                    axis, judges[axis][2])
    columns, counts = {}, {}
    for axis in AXES:
        loader, ident, _ = judges[axis]
        spec = {"kind": "judge", "question_template": getattr(scfg, f"{axis}_template"), "scale": scfg.scale,
                "use_chat_template": models[axis].use_chat_template, "batch_size": scfg.batch_size}
        columns[axis], c = judge_ratings(ctx, f"deita_{axis}", spec, loader, ident)
        counts.update(c)
    score = combined_score(columns["complexity"], columns["quality"])
    counts["empty_answer"] = sum(not r["output"].strip() for r in ctx.pool.records)  # rated anyway, as released
    log.info("DEITA: complexity mean %.3f, quality mean %.3f (scale 1-%d)", np.nanmean(columns["complexity"]),
             np.nanmean(columns["quality"]), scfg.scale)
    return Scores(
        ids=[r["id"] for r in ctx.pool.records], score=score, columns=columns, counts=counts,
        meta={"judges": {axis: judges[axis][2] for axis in AXES}, "substitute": substitutes},
    )
