"""The results rows: the selection beside the configured baselines (``compare.baselines``: the
untouched backbone and a random subset of the same size), each trained once per seed."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from ..config import scorer_label
from ..context import RunContext, with_sections
from ..errors import SelectlabError
from .evaluation import evaluate_model, train_row, train_seed
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


@dataclass(frozen=True)
class Row:
    """One results row: the untouched backbone, a random subset, or the selection, at one seed."""

    label: str  # untrained | random | selected
    scorer: str
    seed: int | None = None
    draws: bool = False  # scores and selects its own subset (the random baseline, scorer=random's seeds)
    trains: bool = True


def planned_rows(cfg) -> list[Row]:
    """The rows a run of ``cfg`` trains and evaluates, in order: the one place that decides them
    (``results_rows`` runs them, ``task=plan`` plans them). The selector keeps its subset (its
    scores do not depend on the training seed) and trains once per ``compare.selected_seeds``;
    random draws its subset and trains once per ``compare.seeds``; scorer=random's own rows draw too."""
    baselines = check_baselines(cfg.compare.baselines)
    trains = cfg.train.name != "none"
    rows = [Row("untrained", "none", trains=False)] if "untrained" in baselines or not trains else []
    if not trains:
        return rows
    selected_is_random = cfg.scorer.name == "random"
    if "random" in baselines and not selected_is_random:
        rows += [Row("random", "random", seed, draws=True) for seed in comparison_seeds(cfg)]
    return rows + [Row("selected", scorer_label(cfg), seed, draws=selected_is_random and seed is not None)
                   for seed in comparison_seeds(cfg, "selected_seeds")]


@dataclass(frozen=True)
class RowStage:
    """A stage of a results row, described once: the store stage it produces, the rows it applies
    to and how it runs (``state`` carries a row's subset, keys and model from stage to stage).
    ``task=plan`` walks the same list (``selectlab.plan.ROW_PLANNERS`` gives each its cost model;
    a stage without one is listed as unplanned)."""

    stage: str
    applies: Callable[[Row], bool]
    run: Callable[[RunContext, Row, dict], dict]


def _draw(ctx: RunContext, row: Row, state: dict) -> dict:
    subset, key = random_subset(ctx, state["budget"], row.seed)
    return {**state, "subset": subset, "subset_key": key}


def _train(ctx: RunContext, row: Row, state: dict) -> dict:
    model = train_row(ctx, state["subset"], state["subset_key"], row.seed)
    return {**state, "model": model, "n_train": len(state["subset"])}


def _evaluate(ctx: RunContext, row: Row, state: dict) -> dict:
    model = state.get("model") or ctx.backbone()  # the untrained row evaluates the backbone itself
    return {**state, "model": model, "result": evaluate_model(ctx, model, row.label)}


ROW_STAGES = [
    RowStage("subsets", lambda row: row.draws, _draw),  # with the scores it selects from
    RowStage("checkpoints", lambda row: row.trains, _train),
    RowStage("evals", lambda row: True, _evaluate),
]


def results_rows(ctx: RunContext, subset: list[dict], subset_key: str) -> list[dict]:
    """The selected subset's rows beside the configured baselines (``planned_rows``), each through
    its ``ROW_STAGES``."""
    out = []
    for row in planned_rows(ctx.cfg):
        state = {"budget": len(subset), "subset": subset, "subset_key": subset_key}
        for stage in ROW_STAGES:
            if stage.applies(row):
                state = stage.run(ctx, row, state)
        n_train = state.get("n_train", 0)
        out.append({"label": row.label, "scorer": row.scorer, "n_train": n_train,
                    "seed": train_seed(ctx.cfg, row.seed) if n_train else None,
                    "model": state["model"], **state["result"]})
    return out
