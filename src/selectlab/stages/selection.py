"""Scores -> subsets: the selector's ``main`` subset plus its extra named subsets (ADG's
``middle`` and ``bottom``) as one artifact, with the bins and the selection's meta."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import plain
from ..context import RunContext
from ..scorers import Scores
from ..selectors import READS, SIZE_SEARCH, resolve_budget, select
from ..selectors.subset import Selection
from ..infra.store import ArtifactStore, read_jsonl, write_jsonl
from ..outputs.tables import finite

SUBSET_VERSION = 1


def subsets_key(cfg, scores_key: str, n_scored: int, training_cfg=None) -> tuple[str, int, dict]:
    """(key, budget, selector config) of the subsets artifact (also used by task=plan); the key also
    covers the config sections the selector reads besides its own (``selectors.READS``), taken from
    ``training_cfg`` (the fine-tuned model's config, when another model scores) or ``cfg``."""
    budget = resolve_budget(cfg.selection.budget, n_scored)
    selector = plain(cfg.selector)
    reads = {section: plain(getattr(training_cfg or cfg, section)) for section in READS.get(selector["name"], ())}
    key = ArtifactStore.key("subsets", SUBSET_VERSION, scores=scores_key, selector=selector, budget=budget, reads=reads)
    return key, budget, selector


def choose(ctx: RunContext, scores: Scores, scores_key: str, budget: int, selector: dict) -> Selection:
    """The selector's Selection; a size search (InstructMining) first finds the budget in its own
    stage (``stages.size_search``), then takes the top-n by score."""
    if selector["name"] in SIZE_SEARCH:
        from .size_search import size_search_stage

        search = size_search_stage(ctx.for_training(), scores, scores_key, selector)
        top = select(scores, search["best_n"], {"name": "topk"}, ctx)
        return Selection(top.order, meta={"size_search": search})
    return select(scores, budget, selector, ctx)


def select_stage(ctx: RunContext, scores: Scores, scores_key: str
                 ) -> tuple[dict[str, list[dict]], str, np.ndarray | None, dict]:
    """(subsets, key, bins or None, selection meta): ``subsets['main']`` is the selection, each
    subset a list of pool records with rank and scores; the meta carries e.g. a size search's trials."""
    key, budget, selector = subsets_key(ctx.cfg, scores_key, len(scores.ids), ctx.for_training().cfg)
    by_id = {r["id"]: r for r in ctx.pool.records}

    def rows_of(order: list[int]) -> list[dict]:
        return [{**by_id[scores.ids[i]], "rank": rank, "score": finite(scores.score[i]),
                 **{k: finite(v[i]) for k, v in scores.columns.items()}} for rank, i in enumerate(order)]

    def make(tmp: Path) -> dict:
        selection = choose(ctx, scores, scores_key, budget, selector)
        if selection.bins is not None:
            np.save(tmp / "bins.npy", selection.bins)
        write_jsonl(tmp / "records.jsonl", rows_of(selection.order))
        for name, order in selection.subsets.items():
            write_jsonl(tmp / f"records_{name}.jsonl", rows_of(order))
        return {"budget": budget, "n_selected": len(selection.order), "subsets": sorted(selection.subsets),
                "selection_meta": selection.meta}

    folder = ctx.store.build("subsets", key, make, {"selector": selector})
    files = {"main": folder / "records.jsonl",
             **{path.stem.removeprefix("records_"): path for path in sorted(folder.glob("records_*.jsonl"))}}
    # a stored subset may have been built from another file with the same texts (the key hashes the texts,
    # not e.g. `source`): the record fields are this pool's; only rank and scores come from the artifact
    from_artifact = ("rank", "score", *scores.columns)
    subsets = {name: [{**by_id[r["id"]], **{k: r[k] for k in from_artifact if k in r}} for r in read_jsonl(path)]
               for name, path in files.items()}
    bins = np.load(folder / "bins.npy") if (folder / "bins.npy").exists() else None
    return subsets, key, bins, ctx.store.meta("subsets", key).get("selection_meta", {})


