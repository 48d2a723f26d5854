"""Subset-size search with FLAML's BlendSearch (InstructMining picked 2 532 of 100 000 this way).

The objective maps a size n to a loss (in the pipeline: eval loss after fine-tuning on the
rule's top-n); the search space is log-uniform over integers, as quality vs size spans
orders of magnitude and shows double descent.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable

from ..errors import SelectlabError

log = logging.getLogger(__name__)


def search_subset_size(objective: Callable[[int], float], low: int, high: int, num_samples: int,
                       time_budget_s: float | None, seed: int, init_n: int | None = None) -> tuple[int, list[dict]]:
    """Minimise ``objective(n)`` over integers low..high with BlendSearch; returns (best n, trials).

    ``init_n`` is the low-cost starting point of BlendSearch's local search (default: ``low``,
    the cheapest fine-tune). ``trials`` lists ``{n, loss, time}`` in the order run.
    """
    from flaml import tune
    from flaml.tune.searcher.blendsearch import BlendSearch

    if not 1 <= low < high:
        raise SelectlabError(f"selector.low={low}, selector.high={high} (capped at the pool): need 1 <= low < high")
    trials: list[dict] = []

    def evaluate(config: dict) -> dict:
        n = int(config["n"])
        start = time.perf_counter()
        loss = float(objective(n))
        trials.append({"n": n, "loss": loss, "time": time.perf_counter() - start})
        log.info("subset size %d: loss %.5f", n, loss)
        if not math.isfinite(loss):
            raise ValueError(f"objective({n}) returned {loss}; the search needs finite losses")
        return {"loss": loss}

    space = {"n": tune.lograndint(low, high + 1)}  # upper bound exclusive in flaml's randint family
    start = {"n": int(init_n if init_n is not None else low)}
    algo = BlendSearch(metric="loss", mode="min", space=space, low_cost_partial_config=start, seed=seed)
    tune.run(evaluate, search_alg=algo, metric="loss", mode="min", config=space, num_samples=num_samples,
             time_budget_s=time_budget_s, verbose=0)
    if not trials:
        raise RuntimeError("BlendSearch ran no trial (time_budget_s too small?)")
    best = min(trials, key=lambda t: t["loss"])
    return best["n"], trials
