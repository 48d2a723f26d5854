"""The results rows: the selection beside the configured baselines (``compare.baselines``: the
untouched backbone and a random subset of the same size), each trained once per seed."""
from __future__ import annotations

from dataclasses import replace

from ..config import scorer_label
from ..context import RunContext, with_sections
from ..errors import SelectlabError
from .evaluation import train_and_evaluate
from .scoring import score_stage
from .selection import select_stage


def random_baseline_cfg(cfg, budget: int, seed: int | None = None):
    """The run's config with the random scorer and top-k at ``budget`` (``compare.random_scorer``,
    ``compare.random_selector``, composed by Hydra from conf/scorer/random.yaml and
    conf/selector/topk.yaml); ``seed`` replaces the run's seed (a random row per comparison seed)."""
    selection = with_sections(cfg.selection, budget=budget)
    return with_sections(cfg, scorer=cfg.compare.random_scorer, selector=cfg.compare.random_selector,
                         selection=selection, **({} if seed is None else {"seed": seed}))


def random_subset(ctx: RunContext, budget: int, seed: int | None = None) -> tuple[list[dict], str]:
    """The random baseline at the same budget, through the same stages (same pool; the run's seed,
    or ``seed``)."""
    random_ctx = replace(ctx, cfg=random_baseline_cfg(ctx.cfg, budget, seed))
    scores, key = score_stage(random_ctx)
    subsets, subset_key, _, _ = select_stage(random_ctx, scores, key)
    return subsets["main"], subset_key


def comparison_seeds(cfg, key: str = "seeds") -> list[int | None]:
    """``compare.<key>`` as a list; [None] (one row per model, seeds as configured) when unset.
    ``compare.selected_seeds`` (the selector's rows) defaults to ``compare.seeds``."""
    seeds = getattr(cfg.compare, key, None)
    if seeds is None and key != "seeds":
        return comparison_seeds(cfg)
    if seeds is None or (not isinstance(seeds, int) and len(seeds) == 0):
        return [None]
    if isinstance(seeds, int) or len(set(seeds)) != len(seeds):
        raise SelectlabError(f"compare.{key}={seeds!r}: give a list of distinct ints, e.g. [1, 2, 3]")
    return [int(s) for s in seeds]


BASELINES = ("untrained", "random")


def check_baselines(baselines) -> list[str]:
    """``compare.baselines`` as a list, each one known (the one place this is checked)."""
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise SelectlabError(f"compare.baselines: unknown {unknown}; choose from {', '.join(BASELINES)}")
    return list(baselines)


def results_rows(ctx: RunContext, subset: list[dict], subset_key: str) -> list[dict]:
    """The selected subset's rows plus the configured baseline rows, one per seed of
    ``compare.seeds``: random draws its subset and trains with each seed; the selector keeps its
    subset (its scores do not depend on the training seed) and trains with each seed of
    ``compare.selected_seeds`` (default: the same), except scorer=random, whose subset is the seed's draw."""
    cfg = ctx.cfg
    baselines = check_baselines(cfg.compare.baselines)
    trains = cfg.train.name != "none"
    rows = []
    if "untrained" in baselines or not trains:
        rows.append(train_and_evaluate(ctx, [], None, "untrained", "none"))
    if not trains:
        return rows
    selected_is_random = cfg.scorer.name == "random"
    if "random" in baselines and not selected_is_random:
        rows += [train_and_evaluate(ctx, *random_subset(ctx, len(subset), seed), "random", "random", seed)
                 for seed in comparison_seeds(cfg)]
    for seed in comparison_seeds(cfg, "selected_seeds"):
        chosen = random_subset(ctx, len(subset), seed) if selected_is_random and seed is not None \
            else (subset, subset_key)
        rows.append(train_and_evaluate(ctx, *chosen, "selected", scorer_label(cfg), seed))
    return rows
