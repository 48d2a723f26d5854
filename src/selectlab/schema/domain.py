"""A schema field's domain, declared beside the field; ``validate`` checks every declared domain of
the composed config (:func:`check_domains`), so a range or a list of choices lives in one place.

    lr: float = above(0)
    template: str = one_of("alpaca", "alpaca_no_input", "chat")
    k: int = at_least(1)

Types are Hydra's to check (a string where an int belongs fails at composition, naming the key);
a domain adds what a type cannot say. ``None`` passes every domain: an ``Optional`` field's null
means "unset" (the YAML or the code says what that means).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import SelectlabError

# omegaconf.MISSING, named here so that the schemas import without OmegaConf (bench/gpu_check.py runs on
# machines without it); composition and validation import OmegaConf themselves.
MISSING = "???"


@dataclass(frozen=True)
class Domain:
    choices: tuple = ()
    low: float | None = None  # inclusive unless ``open_low``
    high: float | None = None  # inclusive
    open_low: bool = False
    a_map: bool = False  # an ``Any`` field that holds a map or null (OmegaConf cannot set a map on a null Dict)

    def admits(self, value: Any) -> bool:
        if value is None:
            return True
        if self.a_map:
            return isinstance(value, Mapping)
        if self.choices:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or value <= self.high

    def describe(self) -> str:
        if self.a_map:
            return "must be a map of keys to values, or null"
        if self.choices:
            return f"choose one of {', '.join(map(str, self.choices))}"
        low = f"{'>' if self.open_low else '>='} {self.low:g}" if self.low is not None else ""
        high = f"<= {self.high:g}" if self.high is not None else ""
        return f"must be {' and '.join(p for p in (low, high) if p)}"

    def outside(self, integer: bool) -> Any:
        """A value of the field's type that the domain refuses (the out-of-domain test uses it)."""
        if self.a_map:
            return 5
        if self.choices:
            return "not-a-choice"
        if self.low is not None:
            return int(self.low) - 1 if integer else self.low - 0.5
        return int(self.high) + 1 if integer else self.high + 0.5


def _knob(domain: Domain, default: Any = MISSING):
    return field(default=default, metadata={"domain": domain})


def one_of(*choices: Any, default: Any = MISSING):
    return _knob(Domain(choices=tuple(choices)), default)


def at_least(low: float, high: float | None = None, default: Any = MISSING):
    return _knob(Domain(low=low, high=high), default)


def above(low: float, high: float | None = None, default: Any = MISSING):
    return _knob(Domain(low=low, high=high, open_low=True), default)


def map_or_null(default: Any = MISSING):
    return _knob(Domain(a_map=True), default)


def check_against(schema: type, values: Any, prefix: str) -> None:
    """The declared domains of ``schema``'s fields checked on ``values`` (a config node, a map or a
    dataclass); a missing value is not checked here (``validate`` reports it by name)."""
    from omegaconf import DictConfig, OmegaConf

    get = values.get if hasattr(values, "get") else lambda key, default=None: getattr(values, key, default)
    for f in dataclasses.fields(schema):
        if isinstance(values, Mapping) and f.name not in values:  # a caller's own map (a config node always has the key)
            if f.default in (MISSING, dataclasses.MISSING):
                raise SelectlabError(f"{prefix}{f.name} is missing")
            continue  # the schema's default applies
        domain = f.metadata.get("domain")
        if domain is None or (isinstance(values, DictConfig) and OmegaConf.is_missing(values, f.name)):
            continue
        value = get(f.name, None)
        if not domain.admits(value):
            raise SelectlabError(f"{prefix}{f.name}={value!r}: {domain.describe()}")


def typed_nodes(cfg, prefix: str = ""):
    """(schema, node, dotted prefix) of every node under ``cfg`` that a schema dataclass types; an
    interpolated section is left to the place it points at."""
    from omegaconf import DictConfig, OmegaConf

    schema = OmegaConf.get_type(cfg)
    if dataclasses.is_dataclass(schema):
        yield schema, cfg, prefix
    for key in cfg.keys():
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing() \
                and not child._is_interpolation():
            yield from typed_nodes(child, f"{prefix}{key}.")


def check_domains(cfg) -> None:
    """Every set value of every typed node lies in its field's declared domain; the first that does
    not is a :class:`SelectlabError` naming the key, the value and the domain."""
    for schema, node, prefix in typed_nodes(cfg):
        check_against(schema, node, prefix)
