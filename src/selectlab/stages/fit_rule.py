"""``task=fit_rule`` (``experiment=fit_rule_cpu``): InstructMining's rule fitted on our own fine-tunes.

M random subsets, each fine-tuned and evaluated on the held-out set (``stages.size_search``'s
``finetuned_eval_loss``), then least squares of log loss on subset-mean indicators. The fitted
rule is written to ``<run_dir>/fitted_<fit.name>.yaml``; a run never edits ``conf/`` (to use it:
copy it into ``conf/scorer/rule/``, docs/rivals.md).
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..schema import typed
from ..context import RunContext
from ..instructmining import fit_experiment, save_rule_yaml
from ..infra.paths import safe_component
from ..infra.store import write_jsonl
from .size_search import eval_records, finetuned_eval_loss

log = logging.getLogger(__name__)


def fit_rule_task(ctx: RunContext, tracker) -> dict:
    """Fit the rule, save it in the run folder, log the fit's data and coefficients."""
    from ..scorers.instructmining import compute_indicators

    fit = typed(ctx.cfg.fit)
    columns, _counts = compute_indicators(ctx, list(fit.indicators))
    heldout = eval_records(ctx)
    result, table = fit_experiment(ctx.pool.records, columns, fit.subsets, fit.subset_size,
                                   int(ctx.cfg.seed), lambda subset: finetuned_eval_loss(ctx, subset, heldout))
    run_dir = Path(ctx.cfg.run_dir)
    write_jsonl(run_dir / "fit_data.jsonl", table)
    train = ctx.cfg.train
    provenance = (f"fitted by selectlab on {len(table)} fine-tunes of {ctx.cfg.backbone.name} (train={train.name}, "
                  f"lr={train.lr}, epochs={train.epochs}) on random {fit.subset_size}-example subsets of "
                  f"{ctx.pool.name}; eval loss on {len(heldout)} held-out {ctx.cfg.heldout.name} examples; "
                  f"R2={result['r2']:.3f}, adjusted R2={result['adj_r2']:.3f}")
    target = save_rule_yaml(result, result["names"], run_dir / f"fitted_{safe_component(fit.name)}.yaml",
                            provenance)
    tracker.log_table("fit_data", list(table[0]), [list(r.values()) for r in table])
    tracker.summary({"fit/r2": result["r2"], "fit/adj_r2": result["adj_r2"], "fit/intercept": result["intercept"],
                     **{f"fit/{n}": c for n, c in zip(result["names"], result["coefficients"])}})
    log.info("fitted rule (R2 %.3f, adjusted %.3f): %.4f %s -> %s", result["r2"], result["adj_r2"], result["intercept"],
             " ".join(f"{c:+.4g}(±{e:.2g})*{n}" for n, c, e in zip(result["names"], result["coefficients"],
                                                              result["std_errors"])), target)
    log.info("to use it: cp %s conf/scorer/rule/ && python src/run.py scorer=instructmining scorer/rule=%s",
             target, target.stem)
    return {**result, "rule_config": str(target), "fit_data": str(run_dir / "fit_data.jsonl")}
