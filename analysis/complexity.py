"""The ADG paper's cognitive-complexity analysis: task categories and three ratings per example.

A judge (``selectlab.lm.judge``; conf/judge/) classifies each instruction into the release's ten
categories with the release's prompts (conf/complexity.yaml ``classification``) and rates
cognitive complexity, instruction precision and educational value on 1-6 (``ratings``; our
prompts, the paper publishes none). The compared subsets of a run: its top subset
(``subset.jsonl``), for ADG its bottom subset (``subset_bottom.jsonl``), and a seeded uniform
sample of its pool of the same size; every other listed scorer adds its top subset.

    python -m analysis.complexity [judge=openai judge.base_url=... judge.model=...]   # writes the figure
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from selectlab.lm.judge import JudgeError, Request, classify, make_judge, rate
from selectlab.infra.store import ArtifactStore

from .runs import load_manifest, load_subset, random_comparison, runs_table, scale_line

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF = REPO_ROOT / "conf"
CATEGORY = "category"


def load_config(overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """conf/complexity.yaml (with its judge group) composed with Hydra overrides, as a plain dict."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    import selectlab.config  # noqa: F401  (registers the schemas conf/complexity.yaml and conf/judge/ extend)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("complexity", overrides=list(overrides)), resolve=True)
    GlobalHydra.instance().clear()
    categories = cfg["classification"]["categories"]
    if "Others" not in categories:
        raise JudgeError("classification.categories must contain Others (where off-list answers go)")
    for name, task in cfg["ratings"].items():
        if sorted(task["scale"]) != list(task["scale"]) or len(task["scale"]) < 2:
            raise JudgeError(f"ratings.{name}.scale must list at least two increasing integers")
    return cfg


def judge_name(cfg: dict) -> str:
    """The judge as figures name it: its name and how it answers."""
    judge = cfg["judge"]
    if judge["kind"] == "openai":
        return f"{judge.get('name') or judge['model']} (OpenAI-compatible API)"
    return f"{judge.get('name') or judge['model'].get('name')} (local, likelihood of the allowed answers)"


def _cut(text: str, max_chars: int | None) -> str:
    return text if max_chars is None or len(text) <= max_chars else text[:max_chars] + " ..."


def prompt_fields(record: dict, max_chars: int | None) -> dict:
    inp = (record.get("input") or "").strip()
    return {"instruction": _cut(record["instruction"], max_chars),
            "input": f"\nInput: {_cut(inp, max_chars)}" if inp else "",
            "output": _cut(record.get("output") or "", max_chars)}


def task_requests(records: list[dict], task: dict, options: list[str], max_chars: int | None) -> list[Request]:
    """One request per record: the task's system turn and its user template filled from the record."""
    return [Request(user=task["user"].format_map(prompt_fields(r, max_chars)), options=tuple(options),
                    system=task.get("system"), temperature=float(task["temperature"]),
                    max_tokens=int(task["max_tokens"])) for r in records]


def judge_frame(subsets: dict[str, list[dict]], cfg: dict, store: ArtifactStore | None = None,
                judge=None, categorize=None) -> tuple[pd.DataFrame, dict]:
    """One row per (subset, example): ``subset``, ``id``, ``category``, then one column per rating;
    and the judge's counts (off-list or empty answers, ratings not found) over all requests.
    ``categorize`` (records -> categories) replaces the judge's own classification (a substitute
    category judge of ``analysis.judge_check``)."""
    from selectlab.infra.paths import cache_dir

    store = store or ArtifactStore(cache_dir())
    judge = judge or make_judge(cfg["judge"], store)
    batch = int(cfg["judge"].get("batch_size", 32))
    rows = [{"subset": name, "id": r["id"], "record": r} for name, records in subsets.items() for r in records]
    # Each example is asked once however many subsets hold it (the answers are cached by prompt).
    unique = list({row["id"]: row["record"] for row in rows}.values())
    task = cfg["classification"]
    if categorize is None:
        labels, counts = classify(judge, task_requests(unique, task, task["categories"], cfg.get("max_field_chars")),
                                  store, batch)
        counts = {f"classification/{k}": v for k, v in counts.items()}
    else:
        labels, counts = categorize(unique), {}
    columns = {CATEGORY: dict(zip((r["id"] for r in unique), labels))}
    for name, task in cfg["ratings"].items():
        scale = [int(s) for s in task["scale"]]
        values, c = rate(judge, task_requests(unique, task, [str(s) for s in scale], cfg.get("max_field_chars")),
                         scale, store, batch)
        columns[name] = dict(zip((r["id"] for r in unique), values))
        counts.update({f"{name}/{k}": v for k, v in c.items()})
    frame = pd.DataFrame([{"subset": row["subset"], "id": row["id"], **{c: columns[c][row["id"]] for c in columns}}
                          for row in rows], columns=["subset", "id", *columns])
    return frame, counts


def bootstrap_interval(values: np.ndarray, samples: int, confidence: float,
                       rng: np.random.Generator) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` over ``samples`` resamples with replacement."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    means = values[rng.integers(0, len(values), size=(samples, len(values)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def summary(frame: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """Tidy table: one row per (subset, measure) with ``value`` (mean rating, or share of the
    category), the bootstrap interval ``lo``..``hi`` and ``n``; ``kind`` is rating | share."""
    boot = cfg["bootstrap"]
    rng = np.random.default_rng(int(boot["seed"]))
    rows = []
    for subset, g in frame.groupby("subset", sort=False):
        measures = [("rating", name, g[name].to_numpy(np.float64)) for name in cfg["ratings"]]
        measures += [("share", c, (g[CATEGORY] == c).to_numpy(np.float64))
                     for c in cfg["classification"]["categories"]]
        for kind, name, values in measures:
            lo, hi = bootstrap_interval(values, int(boot["samples"]), float(boot["confidence"]), rng)
            rows.append({"subset": subset, "kind": kind, "measure": name, "value": float(np.nanmean(values)),
                         "lo": lo, "hi": hi, "n": int((~np.isnan(values)).sum())})
    table = pd.DataFrame(rows, columns=["subset", "kind", "measure", "value", "lo", "hi", "n"])
    table.attrs["confidence"] = f"{float(boot['confidence']):.0%} ({int(boot['samples'])} resamples)"
    return table


def lowest_scored(run_dir: Path, n: int) -> list[dict]:
    """The ``n`` pool records with the lowest finite score in the run's scores artifact (for runs
    written before the ADG selector wrote ``subset_bottom.jsonl``)."""
    from selectlab.pools import load_pool
    from selectlab.scorers import Scores

    manifest = load_manifest(run_dir)
    folder = Path(manifest["config"]["cache_dir"]) / "scores" / manifest["artifacts"]["scores"]
    if not folder.is_dir():
        raise FileNotFoundError(f"{run_dir}: no subset_bottom.jsonl and its scores artifact {folder} is gone")
    scores = Scores.load(folder)
    by_id = {r["id"]: r for r in load_pool(manifest["config"]["pool"], seed=int(manifest["config"]["seed"])).records}
    finite = np.flatnonzero(np.isfinite(scores.score))
    order = finite[np.argsort(scores.score[finite], kind="stable")][:n]
    return [by_id[scores.ids[i]] for i in order]


def comparison_subsets(runs: list[str], scorers: list[str], limit: int | None, seed: int) -> dict[str, list[dict]]:
    """Named subsets of the newest run of each scorer: its top subset; for the first run, a uniform
    sample of its pool of the same size; for ADG, its bottom subset. Names say where each came from."""
    table = runs_table(runs)
    if table.empty:
        return {}
    table = table[table["status"] == "selected"].drop_duplicates("run_dir")
    subsets: dict[str, list[dict]] = {}
    uniform: dict[str, list[dict]] = {}
    for scorer in scorers:
        picked = table[table["scorer"] == scorer].tail(1)  # run folders are timestamped: the newest
        if picked.empty:
            continue
        run_dir = Path(picked["run_dir"].iloc[0])
        top = load_subset(run_dir)[:limit]
        n = len(top)
        subsets[f"{scorer}: top {n}"] = top
        if scorer == "adg":
            path = run_dir / "subset_bottom.jsonl"
            if path.exists():
                from selectlab.infra.store import read_jsonl

                subsets[f"adg: bottom {n}"] = read_jsonl(path)[:n]
            else:
                subsets[f"adg: lowest {n} by score"] = lowest_scored(run_dir, n)
                log.warning("%s has no subset_bottom.jsonl: the bottom subset is the %d lowest ADG scores", run_dir, n)
        if not uniform:  # the first run's pool; later runs are compared with it too
            uniform[f"uniform {n} of the pool"] = random_comparison(run_dir, n, seed)
            subsets.update(uniform)
    return subsets


def chosen_judge(cfg: dict, checks: dict) -> str:
    """``check.category_judge``, or with ``auto`` the most accurate judge on the check set."""
    name = cfg["check"]["category_judge"]
    if name == "auto":
        return max(checks, key=lambda k: checks[k]["accuracy"])
    if name not in checks:
        raise JudgeError(f"check.category_judge={name!r}: choose auto or one of {sorted(checks)}")
    return name


def run_analysis(cfg: dict, store: ArtifactStore | None = None, judge=None, data: Path | None = None) -> Path:
    """Measure the judges (``analysis.judge_check``), judge the compared subsets, and write the
    evidence folder the figure is drawn from (``cfg['evidence']``):

    - ``check_set.jsonl``: the labelled items with every judge's prediction;
    - ``judge_check.json``: each category judge's accuracy, CI, majority baseline, confusion matrix,
      the judge chosen for the figure, and the rating contrasts;
    - ``judged.csv``: one row per (subset, example) with the chosen judge's category and the LM
      judge's ratings; ``subsets.json``: where each subset came from.
    """
    from selectlab.infra.paths import cache_dir, data_dir
    from selectlab.infra.store import atomic_write_text

    from .judge_check import CategoryJudges, category_judges, check_set, rating_contrasts

    folder, data = Path(cfg["evidence"]), Path(data or data_dir())
    store = store or ArtifactStore(cache_dir())
    judge = judge or make_judge(cfg["judge"], store)
    samples = int(cfg["bootstrap"]["samples"])
    items = check_set(cfg, data, folder / "pool_labels.jsonl")
    judges = CategoryJudges(cfg, judge, store, items)
    checks = category_judges(judges, samples)
    chosen = chosen_judge(cfg, checks)
    contrasts = rating_contrasts(cfg, judge, store, data, samples)
    subsets = comparison_subsets(cfg["runs"], cfg["scorers"], cfg["limit"], int(cfg["uniform_seed"]))
    frame, counts = judge_frame(subsets, cfg, store, judge, lambda records: judges.predict(chosen, records))
    folder.mkdir(parents=True, exist_ok=True)
    predicted = {name: check.pop("predicted") for name, check in checks.items()}
    atomic_write_text(folder / "check_set.jsonl", "".join(
        json.dumps({**{k: r.get(k) for k in ("id", "label", "alt", "source")}, "instruction": r["instruction"],
                    "predicted": {name: predicted[name][i] for name in predicted}}) + "\n" for i, r in enumerate(items)))
    atomic_write_text(folder / "judge_check.json", json.dumps({
        "categories": cfg["classification"]["categories"], "lm_judge": judge_name(cfg), "chosen": chosen,
        "category_judges": checks, "rating_contrasts": contrasts, "judge_counts": counts}, indent=2) + "\n")
    frame.to_csv(folder / "judged.csv", index=False, float_format="%.6g")
    atomic_write_text(folder / "subsets.json", json.dumps({name: len(records) for name, records in subsets.items()},
                                                          indent=2) + "\n")
    return folder


def main(argv: list[str] | None = None) -> None:
    """python -m analysis.complexity [hydra overrides]: measure the judges, judge the subsets, write
    the evidence folder and the figure."""
    from .figures import complexity_figure

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(sys.argv[1:] if argv is None else argv)
    folder = run_analysis(cfg)
    png = complexity_figure(folder, Path(cfg["figures"]) / "cognitive_complexity.png", cfg, scale_line(cfg["runs"]))
    check = json.loads((folder / "judge_check.json").read_text())
    for name, c in check["category_judges"].items():
        print(f"{name:18} accuracy {c['accuracy']:.3f} [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}]  majority "
              f"{c['majority_accuracy']:.3f}  minus majority {c['minus_majority']:+.3f} "
              f"[{c['minus_majority_ci'][0]:+.3f}, {c['minus_majority_ci'][1]:+.3f}]  {c['by_part']}")
    for name, c in check["rating_contrasts"].items():
        print(f"{name:22} high {c['high_mean']:.2f} low {c['low_mean']:.2f} diff {c['diff']:+.3f} "
              f"[{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] {'separable' if c['separable'] else 'NOT separable'}")
    print(f"chosen: {check['chosen']}\n-> {folder}\n-> {png}")


if __name__ == "__main__":
    try:
        main()
    except JudgeError as e:  # a user error: one line, no traceback
        raise SystemExit(f"error: {e}") from None
