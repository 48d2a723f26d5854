"""Pool -> scores: the scorer's output as an artifact."""
from __future__ import annotations

from ..context import RunContext
from ..scorers import Scores, get_scorer, scorer_reads
from ..infra.store import ArtifactStore, content_hash
from ..config import plain
from ..schema import typed

SCORES_VERSION = 1


def pool_content_key(records: list[dict]) -> str:
    """Hash of the pool's texts, plus any extra fields a record carries (pool=json keeps them,
    e.g. annotations a scorer reads), so changed annotations give new artifacts."""
    core = ("id", "instruction", "input", "output", "source")
    rows = []
    for r in records:
        extra = {k: v for k, v in r.items() if k not in core}
        rows.append([r["id"], r["instruction"], r["input"], r["output"], *([extra] if extra else [])])
    return content_hash(rows)


def scores_key(cfg, pool_key: str) -> str:
    """Key of the scores artifact: the scorer's config, the pool, the seed and the run sections the
    scorer declares it reads (``scorers.register(..., reads=...)``; also used by task=plan), each by
    the fields that decide results where its schema names them (``key_fields``: the sampler's answer
    knobs, not its engine knobs)."""
    reads = scorer_reads(cfg.scorer.name)
    return ArtifactStore.key("scores", SCORES_VERSION, scorer=plain(cfg.scorer), pool=pool_key, seed=int(cfg.seed),
                             **{section: key_part(getattr(cfg, section)) for section in reads})


def key_part(section) -> dict:
    """A config section as it enters an artifact key: its schema's ``key_fields()``, else all of it."""
    typed_section = typed(section)
    return typed_section.key_fields() if hasattr(typed_section, "key_fields") else plain(section)


def score_stage(ctx: RunContext) -> tuple[Scores, str]:
    """The scorer's output as an artifact; (scores, key)."""
    key = scores_key(ctx.cfg, ctx.pool_key)
    scorer = get_scorer(ctx.cfg.scorer.name)
    # not exclusive: a scorer's heavy work runs in batched stages, which concurrent jobs split
    folder = ctx.store.build("scores", key, lambda tmp: scorer(ctx).save(tmp), {"scorer": ctx.cfg.scorer.name},
                             exclusive=False)
    return Scores.load(folder), key
