"""Fitting an InstructMining rule on one's own fine-tunes (docs/methods.md §2).

Draw M random subsets of the pool, fine-tune on each and measure the held-out eval loss
(``train_and_eval``, wired by the pipeline to ``selectlab.lm.train``), then least-squares fit
log(loss) ~ beta0 + sum_i beta_i * mean_subset(indicator_i).
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import yaml

from ..errors import SelectlabError

log = logging.getLogger(__name__)


def fit_rule(X: np.ndarray, loss: np.ndarray) -> dict:
    """Ordinary least squares of log(loss) on the columns of X, with an intercept.

    Returns ``{coefficients: [p], intercept, r2, adj_r2, std_errors: [p], n}``: R^2 on the log
    scale, in-sample; adjusted R^2 (penalised for p coefficients on n fine-tunes: a small fit
    with a high R^2 and a low adjusted R^2 is noise); the OLS standard error of each coefficient
    (|coefficient| / std_error is its t value).
    """
    X = np.asarray(X, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    if X.ndim != 2 or len(X) != len(loss):
        raise ValueError(f"fit_rule: X must be (M, p) and loss (M,); got {X.shape} and {loss.shape}")
    if not np.all(np.isfinite(X)) or not np.all(np.isfinite(loss)):
        raise ValueError("fit_rule: X and loss must be finite (a NaN indicator mean or loss cannot be fitted)")
    if np.any(loss <= 0):
        raise ValueError("fit_rule: every eval loss must be > 0 (the target is log(loss))")
    n, p = X.shape
    if n <= p + 1:
        raise SelectlabError(f"fit_rule: {n} fine-tunes cannot fit {p} coefficients and an intercept; need more than {p + 1} (fit.subsets)")
    y = np.log(loss)
    design = np.column_stack([np.ones(n), X])
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ beta
    total = np.sum((y - y.mean()) ** 2)
    r2 = float(1 - residual @ residual / total) if total > 0 else float("nan")
    dof = n - p - 1
    adj_r2 = float(1 - (1 - r2) * (n - 1) / dof)
    sigma2 = residual @ residual / dof
    std_errors = np.sqrt(np.clip(np.diag(np.linalg.pinv(design.T @ design)) * sigma2, 0, None))
    return {"coefficients": [float(b) for b in beta[1:]], "intercept": float(beta[0]), "r2": r2, "adj_r2": adj_r2,
            "std_errors": [float(e) for e in std_errors[1:]], "n": int(n)}


def save_rule_yaml(result: Mapping, names: Sequence[str], path: str | Path, provenance: str) -> Path:
    """Write a fitted rule as ``<name>.yaml``; copied into conf/scorer/rule/ it is ``scorer/rule=<name>``."""
    path = Path(path)
    if len(names) != len(result["coefficients"]):
        raise ValueError(f"save_rule_yaml: {len(names)} names for {len(result['coefficients'])} coefficients")
    rule = {
        "name": path.stem,
        "target": "log_eval_loss",
        "intercept": result["intercept"],
        "coefficients": dict(zip(names, result["coefficients"])),
        "r2": result["r2"],
        "adj_r2": result["adj_r2"],
        "std_errors": dict(zip(names, result["std_errors"])),
        "n_finetunes": result["n"],
        "provenance": provenance,
        "scaling": "the units this project's indicators are computed in (see the indicator configs used for the fit)",
    }
    header = (f"# Fitted InstructMining rule ({result['n']} fine-tunes, R^2 {result['r2']:.3f}, "
              f"adjusted R^2 {result['adj_r2']:.3f}).\n"
              f"# Copy this file into conf/scorer/rule/, then:\n"
              f"#   python src/run.py scorer=instructmining scorer/rule={path.stem}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = yaml.safe_dump({"defaults": ["/schema/scorer/rule/fitted@_here_", "_self_"]})  # typed keys
    path.write_text(header + schema + yaml.safe_dump(rule, sort_keys=False))
    return path


def fit_experiment(records: Sequence[dict], columns: Mapping[str, np.ndarray], M: int, subset_size: int, seed: int,
                   train_and_eval: Callable[[list[dict]], float]) -> tuple[dict, list[dict]]:
    """Fine-tune on M seeded random subsets, fit the rule; returns (fit result + names, one row per subset).

    ``columns`` are per-example indicator arrays aligned with ``records``; each table row holds
    the subset index, its ids, the subset means and the measured eval loss.
    """
    names = list(columns)
    values = np.column_stack([np.asarray(columns[c], dtype=np.float64) for c in names])
    if len(values) != len(records):
        raise ValueError(f"fit_experiment: {len(records)} records but indicator columns of length {len(values)}")
    if not 0 < subset_size <= len(records):
        raise SelectlabError(f"fit.subset_size={subset_size} must be in 1..{len(records)} (the pool's size)")
    rng = random.Random(seed)
    table = []
    for m in range(M):
        picked = sorted(rng.sample(range(len(records)), subset_size))
        means = np.nanmean(values[picked], axis=0)  # NaN indicators are left out of a subset's mean ...
        n_nan = int(np.isnan(values[picked]).any(axis=1).sum())  # ... and counted
        loss = float(train_and_eval([records[i] for i in picked]))
        log.info("fit subset %d/%d: eval loss %.4f", m + 1, M, loss)
        table.append({"subset": m, "ids": [records[i]["id"] for i in picked], "eval_loss": loss,
                      "examples_with_nan_indicator": n_nan, **dict(zip(names, map(float, means)))})
    X = np.array([[row[c] for c in names] for row in table])
    result = fit_rule(X, np.array([row["eval_loss"] for row in table]))
    return {**result, "names": names, "M": M, "subset_size": subset_size, "seed": seed}, table
