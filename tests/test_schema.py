"""Typed configs (selectlab.schema): every preset and every group option composes against its
schema with every value set; a mistyped key or a value of the wrong type fails at compose time
naming the key; preset names say their kind (sweep_* for -m, <task>_* for task != select)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from selectlab.errors import SelectlabError
from selectlab.schema import check_known_keys
from selectlab.validate import validate

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
GROUPS = ("backbone", "pool", "scorer", "selector", "sampler", "embedding", "train", "eval", "logger")
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# An option that cannot compose alone gets the overrides it needs.
NEEDS = {("pool", "json"): ["pool.path=/data/pool.jsonl"]}
OPTIONS = [(group, p.stem) for group in GROUPS for p in sorted((CONF / group).glob("*.yaml"))]
NESTED = [(sub, p.stem) for sub in ("scorer/rule", "scorer/reward") for p in sorted((CONF / sub).glob("*.yaml"))]
JUDGES = sorted(p.stem for p in (CONF / "judge").glob("*.yaml"))


def assert_typed_and_complete(cfg, sections) -> None:
    """Each section is typed by a schema dataclass, has no key its schema lacks, and every value
    is set and resolves (to_object builds the dataclasses: a ??? or a broken interpolation fails)."""
    for section in sections:
        assert dataclasses.is_dataclass(OmegaConf.get_type(OmegaConf.select(cfg, section))), f"{section} has no schema"
    check_known_keys(cfg)
    OmegaConf.to_object(cfg)


def compose_error(compose, *overrides) -> str:
    """The composition error with its causes, as a user reads it (Hydra prints the chain)."""
    with pytest.raises(ConfigCompositionException) as caught:
        compose(*overrides)
    error, text = caught.value, []
    while error is not None:
        text.append(str(error))
        error = error.__cause__
    return "\n".join(text)


def test_there_is_something_to_check():
    assert len(EXPERIMENTS) >= 10 and len(OPTIONS) >= 50 and len(NESTED) == 5 and len(JUDGES) == 2


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_against_the_schemas(compose, name):
    cfg = compose(f"experiment={name}")
    assert_typed_and_complete(cfg, ("selection", "compare", "heldout", "fit", "shard", "store", *GROUPS))


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes_against_its_schema(compose, group, option):
    cfg = compose(f"{group}={option}", *NEEDS.get((group, option), []))
    assert cfg[group].name is not None or group == "pool"
    assert_typed_and_complete(cfg, GROUPS)


@pytest.mark.parametrize("group, option", NESTED, ids=[f"{g}={o}" for g, o in NESTED])
def test_every_instructmining_rule_and_reward_composes_against_its_schema(compose, group, option):
    cfg = compose("scorer=instructmining", f"{group}={option}")
    assert_typed_and_complete(cfg, ("scorer", "scorer.rule", "scorer.reward"))


@pytest.mark.parametrize("judge", JUDGES)
def test_complexity_config_composes_against_its_schema(judge):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("complexity", overrides=[f"judge={judge}"])
    GlobalHydra.instance().clear()
    assert_typed_and_complete(cfg, ("judge", "bootstrap", "classification"))
    assert cfg.judge.kind == judge


# ---------------------------------------------------------------- typos and wrong types, by name
@pytest.mark.parametrize("overrides, key", [
    (["scorer=adg", "scorer.lamm=0.3"], "scorer.lamm"),
    (["scorer=adg", "scorer.bins.sourc=release"], "scorer.bins.sourc"),
    (["train=cpu_small", "train.lrr=1e-4"], "train.lrr"),
    (["train=lora", "train.lora_rank=8"], "train.lora_rank"),
    (["eval=heldout_loss", "eval.heldout_loss.max_len=256"], "eval.heldout_loss.max_len"),
    (["pool=alpaca", "pool.limt=10"], "pool.limt"),
    (["heldout.limt=10"], "heldout.limt"),
    (["scorer=instructmining", "scorer.rule.intercep=1"], "scorer.rule.intercep"),
])
def test_a_mistyped_key_fails_at_compose_naming_it(compose, overrides, key):
    assert f"Could not override '{key}'" in compose_error(compose, *overrides)


@pytest.mark.parametrize("overrides, key", [
    (["selection.budget=abc"], "selection.budget"),
    (["pool.limit=abc"], "pool.limit"),
    (["scorer=adg", "scorer.lam=high"], "scorer.lam"),
    (["train=cpu_small", "train.epochs=two"], "train.epochs"),
    (["selector=binwise", "selector.n_bins=many"], "selector.n_bins"),
    (["sampler=vllm", "sampler.enforce_eager=maybe"], "sampler.enforce_eager"),
    (["compare.seeds=3"], "compare.seeds"),
    (["scorer=adg", "scorer.bins.layers=[-4,x]"], "scorer.bins.layers"),
])
def test_a_value_of_the_wrong_type_fails_at_compose_naming_the_key(compose, overrides, key):
    text = compose_error(compose, *overrides)
    assert f"full_key: {key}" in text, text


def test_a_key_added_with_plus_fails_naming_it_before_any_work(compose):
    """Hydra's +key=value adds a key even to a typed node; the entry point and validate() refuse it."""
    cfg = compose("scorer=adg", "selector=binwise", "+selector.n_binz=5")
    with pytest.raises(SelectlabError, match=r"^selector.n_binz: unknown key \(the schema BinwiseSelector of selector has "
                                             r"name, n_bins, min_bin_size"):
        check_known_keys(cfg)
    with pytest.raises(SelectlabError, match=r"^selector.n_binz: unknown key"):
        validate(cfg)
    with pytest.raises(SelectlabError, match=r"^scorer.bins.sourc: unknown key"):
        check_known_keys(compose("scorer=adg", "+scorer.bins.sourc=release"))


def test_typed_values_keep_their_type(compose):
    cfg = compose("scorer=adg", "selector=binwise", "selector.n_bins=500", "selection.budget=0.25", "train=cpu_small",
                  "train.epochs=2", "scorer.lam=1")
    assert cfg.selector.n_bins == 500 and type(cfg.selector.n_bins) is int
    assert cfg.selection.budget == 0.25 and type(cfg.selection.budget) is float
    assert type(compose("selection.budget=10").selection.budget) is int  # a count stays a count
    # an int epoch count stays an int: the fine-tune's artifact key hashes the value as written
    assert type(cfg.train.epochs) is int and type(compose("train=cpu_small", "train.epochs=1.5").train.epochs) is float
    assert cfg.scorer.lam == 1.0 and type(cfg.scorer.lam) is float
    # free-form maps stay open: a preset may add an lm-eval task
    added = compose("eval=heldout_loss", "+eval.tasks.arc_easy={lm_eval: selectlab_arc_easy, num_fewshot: 0}")
    assert added.eval.tasks.arc_easy.num_fewshot == 0


def test_a_map_can_replace_a_null_map_key(compose):
    """selector.model and eval.gen_kwargs are null or a map (typed Any: OmegaConf 2.3 cannot set a
    map on a null Optional[Dict] node), as the headers of conf/selector/deita.yaml and eval/adg_six.yaml show."""
    cfg = compose("selector=deita", "selector.model={hub_id: mistralai/Mistral-7B-v0.1, allow_download: true}",
                  "eval=adg_six", "eval.gen_kwargs={max_gen_toks: 256}")
    assert cfg.selector.model.hub_id == "mistralai/Mistral-7B-v0.1" and cfg.eval.gen_kwargs.max_gen_toks == 256


def test_an_unknown_experiment_fails_instead_of_running_the_defaults(compose):
    """conf/config.yaml's experiment entry is not `optional`: `optional` skipped a missing file, so
    experiment=<typo> (or a renamed preset's old name) ran the CPU demo defaults silently."""
    with pytest.raises(Exception, match=r"Could not find 'experiment/ablation_k'"):
        compose("experiment=ablation_k")


# ---------------------------------------------------------------- preset kinds
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_a_preset_name_says_its_kind(name):
    """sweep_*: a multirun (hydra.sweeper.params, run it with -m); <task>_*: a task other than
    select (task=fit_rule -> fit_rule_*); any other name: one select run."""
    raw = yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text()) or {}
    sweeps = bool(((raw.get("hydra") or {}).get("sweeper") or {}).get("params"))
    assert name.startswith("sweep_") == sweeps, f"{name}: sweep_ prefix iff hydra.sweeper.params"
    task = raw.get("task", "select")
    if task != "select":
        assert name.startswith(f"{task}_"), f"{name} sets task={task}: name it {task}_..."
    if sweeps:
        header = (CONF / "experiment" / f"{name}.yaml").read_text()
        assert f"python src/run.py -m experiment={name}" in header, f"{name}'s header shows how to run it with -m"


# ---------------------------------------------------------------- sections composed, not loaded
def test_the_random_rows_scorer_and_selector_are_the_composed_options(compose):
    """The random baseline row's scorer and selector come from Hydra (compare.random_scorer and
    compare.random_selector), so its artifact keys equal those of a scorer=random run."""
    from selectlab.config import plain
    from selectlab.stages.compare import random_baseline_cfg

    random_row = random_baseline_cfg(compose("scorer=adg"), 8)
    assert plain(random_row.scorer) == plain(compose("scorer=random").scorer)
    assert plain(random_row.selector) == plain(compose("scorer=random").selector) == {"name": "topk"}
