"""Linear quality rules: predicted (log) eval loss = intercept + sum_i coefficient_i * indicator_i.

A rule is a plain mapping (a ``conf/scorer/rule/*.yaml``): ``name``, ``intercept``,
``coefficients`` {indicator column: beta}, ``target`` (what the linear predictor estimates),
``provenance`` and ``scaling`` (the indicator units the coefficients assume). Lower
prediction = better data, so the scorer ranks ascending.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ..errors import SelectlabError


class RuleError(SelectlabError):
    pass


def validate_rule(rule: Mapping) -> dict:
    """The rule as a dict with float coefficients; a missing or non-numeric field names the key."""
    rule = dict(rule)
    name = rule.get("name", "?")
    for key in ("intercept", "coefficients"):
        if rule.get(key) is None:
            raise RuleError(f"scorer.rule ({name}): missing '{key}'")
    coefficients = dict(rule["coefficients"])
    if not coefficients:
        raise RuleError(f"scorer.rule ({name}): 'coefficients' is empty")
    try:
        rule["intercept"] = float(rule["intercept"])
        rule["coefficients"] = {str(k): float(v) for k, v in coefficients.items()}
    except (TypeError, ValueError) as e:
        raise RuleError(f"scorer.rule ({name}): coefficients and intercept must be numbers ({e})") from None
    return rule


def predicted_loss(columns: Mapping[str, np.ndarray], rule: Mapping) -> np.ndarray:
    """beta0 + sum_i beta_i * x_i per example; NaN where any indicator the rule uses is NaN."""
    rule = validate_rule(rule)
    missing = [k for k in rule["coefficients"] if k not in columns]
    if missing:
        raise RuleError(f"rule {rule.get('name')!r} needs indicators {missing}; computed: {sorted(columns)}")
    out = np.full(len(next(iter(columns.values()))), rule["intercept"], dtype=np.float64)
    for name, beta in rule["coefficients"].items():
        out = out + beta * np.asarray(columns[name], dtype=np.float64)
    return out
