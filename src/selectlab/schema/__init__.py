"""Typed schemas of every config group, registered in Hydra's ConfigStore, so a mistyped key or a
value of the wrong type fails when Hydra composes the config, naming the key.

Pattern: Hydra's "Structured Config schema" in a different config group (hydra.cc, tutorials/
structured_config/schema). Each schema is stored as ``schema/<group>/<name>`` and each YAML option
extends it from its defaults list, before its own values::

    # conf/scorer/adg.yaml
    defaults:
      - /schema/scorer/adg@_here_
      - _self_

The documented alternative stores ``base_<name>`` inside the group itself (``scorer/base_adg``),
which makes every schema a selectable option (``scorer=base_adg``) listed beside the real ones;
under ``schema/`` the schemas are never mistaken for options. A child option that only changes
values (``train/lora.yaml`` extends ``cpu_small``) inherits its parent's schema; one that adds keys
names its own schema after its parent. conf/config.yaml extends ``schema/run`` (:class:`RunConfig`),
which types each group by its base schema; the option's schema narrows it.

Fields are exactly the YAML keys, all ``MISSING`` here: the values live in the YAML, and the
artifact keys that hash these sections stay as they were. A new option reuses a schema
(``- /schema/<group>/<name>@_here_``) or adds a dataclass here and a line to :data:`SCHEMAS`.

Hydra's ``+key=value`` adds a key even to a typed node; :func:`check_known_keys` (called at the
entry point and by ``validate``) rejects such keys by name.
"""
from __future__ import annotations

import dataclasses

from ..errors import SelectlabError
from . import complexity, evaluation, run, scoring, selection
from .domain import typed_nodes

# ConfigStore name (under schema/) -> dataclass
SCHEMAS = {
    "run": run.RunConfig,
    "complexity": complexity.ComplexityConfig,
    "backbone/backbone": run.BackboneConfig,
    "pool/pool": run.PoolConfig,
    "pool/hub": run.HubPool,
    "pool/flan_cot": run.FlanCotPool,
    "sampler/hf": run.HfSampler,
    "sampler/vllm": run.VllmSampler,
    "embedding/embedding": run.EmbeddingConfig,
    "train/none": run.TrainConfig,
    "train/finetune": run.FinetuneConfig,
    "train/paper": run.FinetuneConfig,  # paper.yaml only changes values
    "train/lora": run.LoraFinetune,
    "logger/none": run.LoggerConfig,
    "logger/wandb": run.WandbLogger,
    "eval/none": evaluation.EvalConfig,
    "eval/lm_eval": evaluation.LmEvalConfig,
    "eval/benchmarks": evaluation.BenchmarkEval,
    "eval/heldout_loss": evaluation.HeldoutLossEval,
    "selector/name_only": selection.SelectorConfig,
    "selector/binwise": selection.BinwiseSelector,
    "selector/blendsearch": selection.BlendSearch,
    "selector/size_grid": selection.SizeGrid,
    "selector/diverse_topk": selection.DiverseTopk,
    "selector/deita": selection.DeitaSelector,
    "selector/fla": selection.FlaSelector,
    "selector/mig": selection.MigSelector,
    "selector/zip": selection.ZipSelector,
    "scorer/length": scoring.LengthScorer,
    "scorer/random": scoring.RandomScorer,
    "scorer/zip": scoring.ZipScorer,
    "scorer/mig": scoring.MigScorer,
    "scorer/adg": scoring.AdgScorer,
    "scorer/perplexity": scoring.PerplexityScorer,
    "scorer/ifd": scoring.CherryIfdScorer,
    "scorer/superfiltering": scoring.SuperfilteringScorer,
    "scorer/deita": scoring.DeitaScorer,
    "scorer/scar": scoring.ScarScorer,
    "scorer/instructmining": scoring.InstructMiningScorer,
    "scorer/rule/published": scoring.RuleConfig,
    "scorer/rule/fitted": scoring.FittedRule,
    "scorer/reward/judge": scoring.JudgeReward,
    "scorer/reward/reward_model": scoring.RewardModel,
    "judge/local": complexity.LocalJudge,
    "judge/openai": complexity.OpenaiJudge,
}


def typed(section):
    """A config section as its schema's dataclass, interpolations resolved: the runtime type that
    code reads by attribute (``typed(cfg.train).lr``). A dataclass is returned as it is."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(section) if OmegaConf.is_config(section) else section


def register() -> None:
    """Store every schema under ``schema/`` in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for path, node in SCHEMAS.items():
        group, _, name = f"schema/{path}".rpartition("/")
        store.store(group=group, name=name, node=node, provider="selectlab")


def check_known_keys(cfg) -> None:
    """Every key of a typed node is a field of its schema. Composition already rejects an unknown
    key given as ``key=value``; this catches one added with ``+key=value``."""
    for schema, node, prefix in typed_nodes(cfg):
        known = [f.name for f in dataclasses.fields(schema)]
        for key in node.keys():
            if key not in known:
                raise SelectlabError(f"{prefix}{key}: unknown key (the schema {schema.__name__} of {prefix.rstrip('.') or 'the config'} "
                                     f"has {', '.join(known)})")
