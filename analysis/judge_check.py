"""The complexity judge, measured before it is plotted.

A labelled check set for the release's ten task categories (``check_set``): questions from the
shipped benchmarks, labelled by their source (GSM8K is Math, Code Alpaca is Coding, BBH's
deduction tasks are Reasoning, MMLU's non-mathematical subjects are Knowledge), and Alpaca 52K
instructions labelled by reading them (analysis/evidence/complexity/pool_labels.jsonl, its
LABELLING.md says how). Every category judge is scored on it (``category_judges``): accuracy
with a bootstrap CI, the majority-class baseline, the paired difference to it, the confusion
matrix. The judges:

- ``lm_release``: the configured judge with the release's prompt (conf/complexity.yaml; on CPU the
  embedded SmolLM2-135M scoring each category name by likelihood);
- ``lm_calibrated``: the same answers with contextual calibration (Zhao et al. 2021): each
  category's log-likelihood minus its log-likelihood for a content-free instruction ("N/A");
- ``minilm_prototypes``: all-MiniLM-L6-v2 embeddings, nearest category prototype (the release's
  category description and four exemplars per category written for this project,
  conf/complexity.yaml ``check.prototypes``); learns nothing from the check set;
- ``minilm_logreg``: logistic regression on the same embeddings, scored by stratified k-fold
  cross-validation on the check set (each item predicted by a model that never saw it); for
  judging subsets it is fitted on the whole check set.

The three ratings are checked on constructed contrasts (``rating_contrasts``): pairs built from
GSM8K test questions where one side must rate higher (a multi-step word problem vs. copying its
first sentence; the full question vs. its first four words; the question with its worked solution
vs. with another question's bare answer). A rating whose contrast CI does not exclude 0 cannot
separate examples and is not plotted as a finding.
"""
from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

import numpy as np

from selectlab.infra.store import ArtifactStore, read_jsonl

from .complexity import bootstrap_interval, task_requests

CONTENT_FREE = {"id": "content-free", "instruction": "N/A", "input": "", "output": ""}
# BBH tasks that are logic or deduction puzzles (arithmetic, counting and sorting tasks are left out).
BBH_REASONING = ("logical_deduction_three_objects", "logical_deduction_five_objects", "web_of_lies", "navigate",
                 "formal_fallacies", "tracking_shuffled_objects_three_objects", "causal_judgement",
                 "temporal_sequences")
MATH_SUBJECTS = ("abstract_algebra", "college_mathematics", "elementary_mathematics", "high_school_mathematics",
                 "high_school_statistics", "college_physics", "high_school_physics", "econometrics",
                 "college_computer_science", "high_school_computer_science", "machine_learning",
                 "computer_security", "formal_logic", "college_chemistry", "high_school_chemistry")


def _sample(rows: list, n: int, seed: int) -> list:
    return random.Random(seed).sample(rows, min(n, len(rows)))


def benchmark_items(data: Path, per_source: int, seed: int) -> list[dict]:
    """``per_source`` items from each shipped benchmark whose category its source decides."""
    items = []
    gsm = [json.loads(line) for line in (data / "benchmarks/gsm8k/test.jsonl").read_text().splitlines() if line]
    items += [{"id": f"gsm8k-test-{i}", "instruction": gsm[i]["question"], "label": "Math",
               "source": f"GSM8K test row {i}"} for i in _sample(range(len(gsm)), per_source, seed)]
    code = json.loads((data / "pools/code_alpaca_2k/code_alpaca_2k.json").read_text())
    items += [{"id": f"code-alpaca-{i}", "instruction": code[i]["instruction"], "input": code[i]["input"],
               "label": "Coding", "source": f"Code Alpaca 2k row {i}"} for i in _sample(range(len(code)), per_source, seed)]
    bbh = [(task, j, ex["input"]) for task in BBH_REASONING
           for j, ex in enumerate(json.loads((data / f"benchmarks/bbh/bbh/{task}.json").read_text())["examples"])]
    items += [{"id": f"bbh-{t}-{j}", "instruction": text, "label": "Reasoning", "source": f"BBH {t} example {j}"}
              for t, j, text in _sample(bbh, per_source, seed)]
    mmlu = []
    for path in sorted((data / "benchmarks/mmlu/test").glob("*_test.csv")):
        subject = path.name[:-len("_test.csv")]
        if subject not in MATH_SUBJECTS:
            with path.open(newline="") as f:
                mmlu += [(subject, j, row["question"]) for j, row in enumerate(csv.DictReader(f))]
    items += [{"id": f"mmlu-{s}-{j}", "instruction": q, "label": "Knowledge", "source": f"MMLU test {s} row {j}"}
              for s, j, q in _sample(mmlu, per_source, seed)]
    return items


def alpaca_rows(data: Path) -> list[dict]:
    """Alpaca 52K in its original order (the 18 parts in file-name order, data/README.md)."""
    rows = []
    for part in sorted((data / "pools/alpaca_52k").glob("*.json")):
        rows += json.loads(part.read_text())
    return rows


def pool_items(labels_path: Path, data: Path) -> list[dict]:
    """The hand-labelled Alpaca 52K instructions (labels from ``labels_path``, text from the pool)."""
    rows = alpaca_rows(data)
    return [{"id": f"alpaca-{row['alpaca_row']}", "instruction": rows[row["alpaca_row"]]["instruction"],
             "input": rows[row["alpaca_row"]]["input"], "label": row["label"], "alt": row.get("alt"),
             "source": f"Alpaca 52K row {row['alpaca_row']}, labelled by reading"} for row in read_jsonl(labels_path)]


def check_set(cfg: dict, data: Path, labels_path: Path) -> list[dict]:
    check = cfg["check"]
    return benchmark_items(data, int(check["per_source"]), int(check["seed"])) + pool_items(labels_path, data)


# ---- accuracy with its uncertainty --------------------------------------------------------

def bootstrap_mean(values: np.ndarray, samples: int, seed: int) -> tuple[float, float, float]:
    """Mean and 95% percentile bootstrap interval over items (``complexity.bootstrap_interval``)."""
    values = np.asarray(values, dtype=np.float64)
    return (float(np.nanmean(values)), *bootstrap_interval(values, samples, 0.95, np.random.default_rng(seed)))


def scored(truth: list[str], predicted: list[str], categories: list[str], samples: int, seed: int,
           subsets: dict[str, np.ndarray], alts: list[str | None] | None = None) -> dict:
    """Accuracy (CI), the majority-class baseline, their paired difference (CI), the confusion
    matrix (rows: truth, columns: predicted), accuracy on each named subset of the items, and the
    lenient accuracy (the label or its runner-up ``alt`` counts)."""
    truth_a, pred_a = np.asarray(truth), np.asarray(predicted)
    correct = (truth_a == pred_a).astype(float)
    alts = alts or [None] * len(truth)
    lenient, llo, lhi = bootstrap_mean([p in (t, a) for t, a, p in zip(truth, alts, predicted)], samples, seed)
    labels, counts = np.unique(truth_a, return_counts=True)
    majority = labels[np.argmax(counts)]
    acc, lo, hi = bootstrap_mean(correct, samples, seed)
    diff, dlo, dhi = bootstrap_mean(correct - (truth_a == majority), samples, seed)
    index = {c: i for i, c in enumerate(categories)}
    confusion = np.zeros((len(categories), len(categories)), dtype=int)
    for t, p in zip(truth, predicted):
        confusion[index[t], index[p]] += 1
    return {"n": len(truth), "accuracy": acc, "ci": [lo, hi], "majority_class": str(majority),
            "majority_accuracy": float((truth_a == majority).mean()), "minus_majority": diff,
            "minus_majority_ci": [dlo, dhi], "beats_majority": bool(dlo > 0),
            "lenient_accuracy": lenient, "lenient_ci": [llo, lhi],
            "by_part": {name: float(correct[mask].mean()) for name, mask in subsets.items() if mask.any()},
            "confusion": confusion.tolist()}


# ---- the judges ---------------------------------------------------------------------------

def lm_logprobs(records: list[dict], cfg: dict, judge, store: ArtifactStore) -> np.ndarray:
    """(N, categories) log-likelihood of each category name under the LM judge (release prompt)."""
    from selectlab.lm.judge import ask

    task = cfg["classification"]
    requests = task_requests(records, task, task["categories"], cfg.get("max_field_chars"))
    return np.array([raw["logprobs"] for raw in ask(judge, requests, store, int(cfg["judge"]["batch_size"]))])


def instruction_text(record: dict) -> str:
    inp = (record.get("input") or "").strip()
    return f"{record['instruction']}\n{inp}" if inp else record["instruction"]


def embed(texts: list[str], store: ArtifactStore) -> np.ndarray:
    from selectlab.selectors.diverse import sbert_embeddings

    return np.asarray(sbert_embeddings(list(texts), store, batch_size=64))


def prototypes(cfg: dict, store: ArtifactStore) -> np.ndarray:
    """(categories, 384) unit prototypes: the mean of each category's description and exemplars."""
    protos = cfg["check"]["prototypes"]
    rows = []
    for name in cfg["classification"]["categories"]:
        vectors = embed([protos[name]["description"], *protos[name]["exemplars"]], store)
        mean = vectors.mean(0)
        rows.append(mean / np.linalg.norm(mean))
    return np.stack(rows)


def logreg(seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=5000, C=4.0, random_state=seed)


def cross_validated(vectors: np.ndarray, truth: list[str], folds: int, seed: int) -> list[str]:
    """Each item's label from a logistic regression fitted on the other folds (stratified)."""
    from sklearn.model_selection import StratifiedKFold

    truth_a = np.asarray(truth)
    out = np.empty(len(truth), dtype=object)
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(vectors, truth_a):
        out[test] = logreg(seed).fit(vectors[train], truth_a[train]).predict(vectors[test])
    return [str(x) for x in out]


class CategoryJudges:
    """The four category judges over one check set; ``predict`` labels new records with any of them."""

    def __init__(self, cfg: dict, judge, store: ArtifactStore, items: list[dict]):
        self.cfg, self.judge, self.store, self.items = cfg, judge, store, items
        self.categories = list(cfg["classification"]["categories"])
        self.local = cfg["judge"]["kind"] == "local"
        self._null = lm_logprobs([CONTENT_FREE], cfg, judge, store)[0] if self.local else None
        self._protos = prototypes(cfg, store)
        self._check_vectors = embed([instruction_text(r) for r in items], store)
        self._fitted = None

    def names(self) -> list[str]:
        return ["lm_release", *(["lm_calibrated"] if self.local else []), "minilm_prototypes", "minilm_logreg"]

    def predict(self, name: str, records: list[dict]) -> list[str]:
        from selectlab.lm.judge import classify

        if name == "lm_release":
            task = self.cfg["classification"]
            requests = task_requests(records, task, self.categories, self.cfg.get("max_field_chars"))
            return classify(self.judge, requests, self.store, int(self.cfg["judge"]["batch_size"]))[0]
        if name == "lm_calibrated":
            lp = lm_logprobs(records, self.cfg, self.judge, self.store) - self._null
            return [self.categories[i] for i in lp.argmax(1)]
        vectors = embed([instruction_text(r) for r in records], self.store)
        if name == "minilm_prototypes":
            return [self.categories[i] for i in (vectors @ self._protos.T).argmax(1)]
        if name == "minilm_logreg":
            if self._fitted is None:
                seed = int(self.cfg["check"]["seed"])
                self._fitted = logreg(seed).fit(self._check_vectors, [r["label"] for r in self.items])
            return [str(x) for x in self._fitted.predict(vectors)]
        raise ValueError(f"unknown category judge {name!r}")

    def on_check_set(self, name: str) -> list[str]:
        if name == "minilm_logreg":
            check = self.cfg["check"]
            return cross_validated(self._check_vectors, [r["label"] for r in self.items], int(check["folds"]),
                                   int(check["seed"]))
        return self.predict(name, self.items)


def category_judges(judges: CategoryJudges, samples: int) -> dict:
    """Every judge's score on the check set, and its predictions (for the evidence folder)."""
    truth = [r["label"] for r in judges.items]
    pool = np.array([r["id"].startswith("alpaca-") for r in judges.items])
    parts = {"benchmarks (label by source)": ~pool, "Alpaca (labelled by reading)": pool}
    seed = int(judges.cfg["check"]["seed"])
    out = {}
    for name in judges.names():
        predicted = judges.on_check_set(name)
        out[name] = {**scored(truth, predicted, judges.categories, samples, seed, parts,
                              [r.get("alt") for r in judges.items]), "predicted": predicted}
    return out


# ---- ratings on constructed contrasts -----------------------------------------------------

def _first_sentence(text: str) -> str:
    return re.split(r"(?<=[.?!])\s", text.strip(), maxsplit=1)[0]


def contrast_pairs(data: Path, n: int, seed: int) -> dict[str, tuple[list[dict], list[dict]]]:
    """Per rating, (records that must rate higher, records that must rate lower), built from GSM8K
    test questions (rows disjoint from the check set's: a separate seed stream)."""
    gsm = [json.loads(line) for line in (data / "benchmarks/gsm8k/test.jsonl").read_text().splitlines() if line]
    rows = _sample(range(len(gsm)), 2 * n, seed + 1)
    picked = [gsm[i] for i in rows[:n]]
    others = [gsm[i] for i in rows[n:]]
    clean = [re.sub(r"<<[^>]*>>", "", g["answer"]).replace("####", "The answer is") for g in picked]
    bare = [f"The answer is {o['answer'].split('####')[-1].strip()}." for o in others]
    q = [g["question"] for g in picked]
    make = lambda texts, outputs=None: [{"id": f"contrast-{i}", "instruction": t, "input": "",  # noqa: E731
                                         "output": "" if outputs is None else outputs[i]} for i, t in enumerate(texts)]
    return {
        "cognitive_complexity": (make(q), make([f"Copy the following sentence exactly: {_first_sentence(t)}"
                                                for t in q])),
        "instruction_precision": (make(q), make([" ".join(t.split()[:4]) + " ..." for t in q])),
        "educational_value": (make(q, clean), make(q, bare)),
    }


def rating_contrasts(cfg: dict, judge, store: ArtifactStore, data: Path, samples: int) -> dict:
    """Per rating: mean on each side, the paired difference (high - low) with its CI, separable."""
    from selectlab.lm.judge import rate

    check = cfg["check"]
    out = {}
    for name, (high, low) in contrast_pairs(data, int(check["contrast_n"]), int(check["seed"])).items():
        task = cfg["ratings"][name]
        scale = [int(s) for s in task["scale"]]
        values = [rate(judge, task_requests(side, task, [str(s) for s in scale], cfg.get("max_field_chars")), scale,
                       store, int(cfg["judge"]["batch_size"]))[0] for side in (high, low)]
        diff, lo, hi = bootstrap_mean(values[0] - values[1], samples, int(check["seed"]))
        out[name] = {"n": len(high), "high_mean": float(np.nanmean(values[0])), "low_mean": float(np.nanmean(values[1])),
                     "diff": diff, "ci": [lo, hi], "separable": bool(lo > 0),
                     "contrast": CONTRASTS[name]}
    return out


CONTRASTS = {
    "cognitive_complexity": "GSM8K word problem vs. 'copy its first sentence'",
    "instruction_precision": "GSM8K question vs. its first four words",
    "educational_value": "question + worked solution vs. question + another question's bare answer",
}
