"""Every field of every config schema refuses a value outside its domain with one line that names
the key: a declared domain (``selectlab.schema.domain``) through ``validate``, which a run calls
before any work; a value of the wrong type through composition, which ``src/run.py`` reports as one
line and exit 2 (two of them checked through the real entry point below).

The walk composes each group option and each experiment, finds every typed node in it, and takes
the first place each (schema, field) appears; a schema field that no shipped option reaches fails
the coverage test, so a new field cannot skip this.
"""
from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from selectlab.errors import SelectlabError, config_error_line, one_line
from selectlab.schema import SCHEMAS
from selectlab.schema.domain import check_domains
from selectlab.validate import validate

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
GROUPS = ("backbone", "pool", "scorer", "selector", "sampler", "embedding", "train", "eval", "logger")
# Options composed over a base that brings every stage's sections to life.
BASE = {"scorer": "adg", "train": "cpu_small", "eval": "smoke"}
OPTIONS = ([{**BASE, group: p.stem} for group in GROUPS for p in sorted((CONF / group).glob("*.yaml"))]
           + [{"scorer": "instructmining", f"scorer/{sub}": p.stem} for sub in ("rule", "reward")
              for p in sorted((CONF / "scorer" / sub).glob("*.yaml"))]
           + [{"experiment": p.stem} for p in sorted((CONF / "experiment").glob("*.yaml"))])
NEEDS = {"json": ["pool.path=/data/pool.jsonl"]}


def _is_section(value) -> bool:
    return isinstance(value, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(value))


def typed_fields(cfg: DictConfig, prefix: str = ""):
    """(schema, field, dotted key) of every field of every typed node under ``cfg``."""
    schema = OmegaConf.get_type(cfg)
    for f in dataclasses.fields(schema):
        node = cfg._get_node(f.name)
        value = None if node is None or node._is_missing() or node._is_none() or node._is_interpolation() \
            else cfg[f.name]
        if _is_section(value):
            yield from typed_fields(value, f"{prefix}{f.name}.")
        else:
            yield schema, f, f"{prefix}{f.name}"


def owner(schema, name: str):
    """The class that declares the field (an inherited field is its base's)."""
    return next(c for c in reversed(schema.__mro__) if name in getattr(c, "__annotations__", {}))


def _places(configs) -> dict:
    """(declaring schema, field name) -> (schema, field, key, config, overrides): where each field is
    first reached in ``configs`` ((overrides, composed config) pairs)."""
    places = {}
    for overrides, cfg in configs:
        for schema, f, key in typed_fields(cfg):
            places.setdefault((owner(schema, f.name), f.name), (schema, f, key, cfg, overrides))
    return places


def _all_fields() -> set:
    out = set()

    def walk(schema):
        for f in dataclasses.fields(schema):
            if f.type is not typing.Any or f.metadata.get("domain"):  # Any: a section typed by its own schema
                out.add((owner(schema, f.name), f.name))
            inner = typing.get_type_hints(schema).get(f.name)
            if dataclasses.is_dataclass(inner):
                walk(inner)
    for schema in SCHEMAS.values():
        walk(schema)
    return out


def outside(schema, f) -> object:
    """A value the field must refuse: outside its declared domain, else of the wrong type."""
    hint = typing.get_type_hints(schema)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint
    domain = f.metadata.get("domain")
    if domain is not None:
        return domain.outside(integer=base is int)
    if base is str:
        return {"oops": 1}
    if base is bool:
        return "maybe"
    if base in (int, float) or typing.get_origin(base) in (list, dict, typing.Union):
        return "abc" if typing.get_origin(base) is not typing.Union else [1]
    raise AssertionError(f"{schema.__name__}.{f.name}: type {hint} has no out-of-domain value; declare a domain")


@pytest.fixture(scope="module")
def places(compose_once):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    runs = []
    for option in OPTIONS:
        overrides = [f"{g}={o}" for g, o in option.items()] + NEEDS.get(option.get("pool", ""), [])
        runs.append((overrides, compose_once(*overrides)))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        judges = [([f"judge={p.stem}"], compose("complexity", overrides=[f"judge={p.stem}"]))
                  for p in sorted((CONF / "judge").glob("*.yaml"))]
    GlobalHydra.instance().clear()
    found, judged = _places(runs), _places(judges)
    return {**found, **{k: v for k, v in judged.items() if k not in found}}, set(judged) - set(found)


def refusal(cfg: DictConfig, key: str, value, check) -> str:
    """The one line a user reads for ``key=value`` (composition error or validation error)."""
    cfg = copy.deepcopy(cfg)
    try:
        OmegaConf.update(cfg, key, value, merge=False)
        check(cfg)
    except OmegaConfBaseException as error:
        return config_error_line(error)
    except SelectlabError as error:
        return one_line(error)
    raise AssertionError(f"{key}={value!r} was accepted")


def test_every_schema_field_is_reached_by_a_shipped_option(places):
    found, _ = places
    missing = sorted(f"{s.__name__}.{name}" for s, name in _all_fields() - set(found)
                     if not dataclasses.is_dataclass(typing.get_type_hints(s).get(name)))
    assert not missing, f"no shipped option reaches these fields, so nothing tests their domain: {missing}"


def test_every_field_refuses_an_out_of_domain_value_naming_its_key(places):
    found, judge_fields = places
    checked, wrong = 0, []
    for place, (schema, f, key, cfg, overrides) in found.items():
        if f.type is typing.Any and f.metadata.get("domain") is None:
            continue  # a whole section typed by its own schema (run.scorer, compare.random_scorer): walked there
        check = check_domains if place in judge_fields else (lambda c: validate(c, here=False))
        line = refusal(cfg, key, outside(schema, f), check)
        checked += 1
        if key not in line or "\n" in line:
            wrong.append(f"{key} ({' '.join(overrides)}): {line}")
    assert not wrong, "\n".join(wrong)
    assert checked >= 250  # every field of every schema but the sections (278 when written)


@pytest.mark.parametrize("override, says", [("sampler.k=abc", "sampler.k: Value 'abc'"),
                                            ("train.template=foo", "train.template='foo': choose one of")])
def test_the_entry_point_says_it_in_one_line_and_exits_2(override, says, tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "src" / "run.py"), "scorer=adg", "train=cpu_small", "eval=smoke",
                          override, "task=plan", "logger=none", f"cache_dir={tmp_path}", f"run_dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], out.stderr
