"""Checks that need no model, run when a run starts (``pipeline.run``) before any pool is scored
or model loaded: each failure is a :class:`SelectlabError` naming the config key.

``validate(cfg)`` checks the config alone; ``check_against_pool(cfg, pool)`` the values that
depend on the loaded pool's size (a budget above the pool warns, as it is then clamped).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .lm.backbone import resolve_model
from .errors import SelectlabError
from .outputs.export import check_export
from .pools import Pool, check_pool_location
from .schema import check_known_keys, typed
from .schema.domain import check_domains
from .scorers import get_scorer
from .stages.compare import check_baselines
from .selectors import SELECTORS, SIZE_SEARCH, resolve_budget

log = logging.getLogger(__name__)

# Scorers whose Scores carry per-example features (instruction embeddings) for selectors that
# cluster or compare examples (selector=binwise, selector=diverse_topk selector.embeddings=features).
SCORERS_WITH_FEATURES = ("adg",)


def validate(cfg: DictConfig, here: bool = True) -> None:
    """Every config value that can be checked without a model; the first bad one is raised.
    ``here=False`` (task=plan, which plans runs for other machines) leaves out whether the pool's
    files and the named models are on this machine: the plan reports those itself."""
    check_known_keys(cfg)  # a key added with +key=value that its group's schema does not have
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise SelectlabError(f"{missing[0]} has no value (???); set it, e.g. {missing[0]}=...")
    check_domains(cfg)  # each value within its field's declared domain (selectlab.schema)
    check_run_values(cfg)
    check_pool_config(cfg.pool, "pool", here)
    check_pool_location(typed(cfg.pool))
    check_export(typed(cfg.export))
    for key, model in (("backbone", cfg.backbone), ("select.backbone", cfg.select.backbone)):
        if here and getattr(model, "path", None):
            resolve_model(model, key)  # a folder with config.json; nothing loads
    check_scorer(cfg)
    check_selector(cfg.selector, cfg.scorer.name, here)
    check_fine_tuning(cfg, cfg.selector.name, here)
    check_eval_tasks(cfg.eval)


def check_eval_tasks(eval_cfg: DictConfig) -> None:
    """Each ``eval.tasks`` entry names its lm-eval task, shots, metric and filter."""
    for key, entry in (eval_cfg.get("tasks") or {}).items():
        absent = [f for f in ("lm_eval", "num_fewshot", "metric", "filter") if f not in (entry or {})]
        if absent:
            raise SelectlabError(f"eval.tasks.{key} lacks {', '.join(absent)}")


def check_run_values(cfg: DictConfig) -> None:
    """The run's own keys beyond their domains: the budget (a count or a fraction; the pool's size
    comes later), the baselines, the shard's index within its count."""
    resolve_budget(cfg.selection.budget, 1)
    check_baselines(cfg.compare.baselines)
    if cfg.shard.index is not None and cfg.shard.index >= cfg.shard.count:
        raise SelectlabError(f"shard.index={cfg.shard.index} must be in 0..{cfg.shard.count - 1} "
                             f"(shard.count={cfg.shard.count})")


def check_scorer(cfg: DictConfig) -> None:
    """The scorer exists; ADG's sampler gives it at least two answers to compare, its embedding
    at least one layer."""
    scorer = cfg.scorer.name
    get_scorer(scorer)
    if scorer == "adg":
        if cfg.sampler.k < 2:
            raise SelectlabError(f"sampler.k={cfg.sampler.k}: ADG needs at least 2 answers per instruction "
                                 f"(with 1 answer dispersion and anisotropy are 0 for every example)")
        if not cfg.embedding.layers:
            raise SelectlabError("embedding.layers is empty; name at least one hidden_states index")


def check_fine_tuning(cfg: DictConfig, selector: str, here: bool = True) -> None:
    """Runs that fine-tune (size search, rule fitting, eval after selection) get a train config
    that parses, and the held-out set that the size search and the fit score against."""
    searches = selector in SIZE_SEARCH
    if (cfg.task == "fit_rule" or searches or cfg.eval.name != "none") and cfg.train.name != "none":
        tc, world_size = typed(cfg.train), int(os.environ.get("WORLD_SIZE", "1"))
        tc.grad_accum_for(world_size)
        if here and tc.packing:
            from .lm.packing import check_launch

            check_launch(world_size)
    if cfg.task == "fit_rule" or searches:
        what = "task=fit_rule" if cfg.task == "fit_rule" else f"selector={selector}"
        if cfg.train.name == "none":
            raise SelectlabError(f"{what} fine-tunes on subsets; choose a train config (e.g. train=cpu_small), "
                                 f"not train=none")
        check_pool_config(cfg.heldout, "heldout", here)
    if cfg.task == "fit_rule":
        if cfg.scorer.name != "instructmining":
            raise SelectlabError(f"task=fit_rule fits InstructMining's rule on its indicators; use "
                                 f"scorer=instructmining, not scorer={cfg.scorer.name}")
        check_fit(cfg.fit)


def check_pool_config(pool, key: str, here: bool = True) -> None:
    """A pool (or the held-out set) that can be read: known loader, existing path (``here``)."""
    if pool.loader == "hub":
        if not getattr(pool, "hub_id", None):  # the held-out section's schema has no hub_id
            raise SelectlabError(f"{key}.hub_id is not set (loader=hub)")
    elif not pool.path or (here and not Path(pool.path).exists()):
        raise SelectlabError(f"{key}.path={pool.path} does not exist")


def check_selector(selector: DictConfig, scorer: str, here: bool = True) -> None:
    """The selector exists and gets what it needs from the scorer."""
    name = selector.name
    if name not in SELECTORS and name not in SIZE_SEARCH:
        raise SelectlabError(f"selector.name={name!r}; known: {sorted([*SELECTORS, *SIZE_SEARCH])}")
    needs_features = name == "binwise" or (name == "diverse_topk" and selector.get("embeddings") == "features")
    if needs_features and scorer not in SCORERS_WITH_FEATURES:
        what = "selector=binwise" if name == "binwise" else "selector.embeddings=features"
        raise SelectlabError(f"{what} needs per-example features, which scorer={scorer} does not give; "
                             f"use a scorer that does ({', '.join(SCORERS_WITH_FEATURES)}) or selector=topk")
    if here and selector.get("embeddings") == "last_token" and selector.get("model"):
        resolve_model(selector["model"], "selector.model")  # an embedder that is not here fails now
    if name == "mig" and selector.get("labels") == "instag":
        from .selectors.mig_labels import VALID_TAGS_MISSING

        if selector.get("valid_tags") is None:
            raise SelectlabError(VALID_TAGS_MISSING)
        if here and selector.get("label_model"):
            resolve_model(selector["label_model"], "selector.label_model")  # the tag embedder is here
    if name == "zip" and scorer != "zip":
        raise SelectlabError(f"selector=zip needs scorer=zip (its text form and per-example compression ratios), "
                             f"not scorer={scorer}")


def check_fit(fit: DictConfig) -> None:
    """task=fit_rule: enough fine-tunes for the rule's coefficients."""
    n_coefficients = len(fit.indicators)
    if n_coefficients < 1:
        raise SelectlabError("fit.indicators is empty; name at least one indicator")
    if fit.subsets <= n_coefficients + 1:
        raise SelectlabError(f"fit.subsets={fit.subsets} cannot fit {n_coefficients} coefficients and an intercept; "
                             f"need more than {n_coefficients + 1}")


def check_against_pool(cfg: DictConfig, pool: Pool) -> None:
    """Values that depend on the loaded pool: a budget above it warns (it is clamped to the pool);
    a fit subset larger than the pool fails."""
    n = len(pool.records)
    budget = cfg.selection.budget
    uses_budget = cfg.task == "select" and cfg.selector.name not in SIZE_SEARCH
    if uses_budget and budget >= 1 and budget > n:
        log.warning("selection.budget=%s is more than the %d examples of pool %s; all %d are selected",
                    budget, n, pool.name, n)
    if cfg.task == "fit_rule" and int(cfg.fit.subset_size) > n:
        raise SelectlabError(f"fit.subset_size={cfg.fit.subset_size} is more than the {n} examples of pool "
                             f"{pool.name}")
