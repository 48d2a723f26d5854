"""Write the per-subtask YAMLs of bbh/ and mmlu/ (run once; the output is committed).

    python -m selectlab.lm_eval_tasks._generate_configs

BBH: description and 3 CoT exemplars parsed from the authors' cot-prompts/<task>.txt, as
lm-eval's bbh/cot_fewshot configs hold them (tests/test_evaluate.py checks they are equal).
MMLU: lm-eval's per-subject description, one file per subject found in the data.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from selectlab.infra.paths import data_dir

HERE = Path(__file__).parent
SHOT_SPLIT = re.compile(r"\nA: Let's think step by step\.\s")  # one prompt file puts the rationale on the same line


def parse_cot_prompt(text: str) -> tuple[str, list[dict]]:
    """(description, [{input, target}, ...]) from a BBH cot-prompts file (canary, '-----', body)."""
    body = text.split("\n-----\n", 1)[1]
    description, shots = body.split("\n\nQ: ", 1)
    samples = []
    for shot in shots.split("\n\nQ: "):
        question, rationale = SHOT_SPLIT.split(shot, maxsplit=1)
        samples.append({"input": question, "target": rationale})
    return description, samples


def _write(path: Path, config: dict) -> None:
    path.write_text(yaml.dump(config, width=float("inf"), allow_unicode=True, sort_keys=False), encoding="utf-8")


def generate_bbh() -> list[str]:
    names = []
    for prompt_file in sorted((data_dir() / "benchmarks" / "bbh" / "cot-prompts").glob("*.txt")):
        subtask = prompt_file.stem
        description, samples = parse_cot_prompt(prompt_file.read_text(encoding="utf-8"))
        name = f"selectlab_bbh_cot_fewshot_{subtask}"
        _write(HERE / "bbh" / f"{subtask}.yaml", {
            "include": "_bbh_cot_fewshot_template_yaml", "task": name, "task_alias": subtask,
            "tag": "selectlab_bbh_cot_fewshot_tasks", "dataset_kwargs": {"subtask": subtask}, "description": description + "\n\n",
            "doc_to_text": "Q: {{input}}\nA: Let's think step by step.\n",
            "fewshot_config": {"sampler": "first_n", "samples": samples},
        })
        names.append(name)
    return names


def generate_mmlu() -> list[str]:
    names = []
    for test_file in sorted((data_dir() / "benchmarks" / "mmlu" / "test").glob("*_test.csv")):
        subject = test_file.name.removesuffix("_test.csv")
        name = f"selectlab_mmlu_{subject}"
        _write(HERE / "mmlu" / f"{subject}.yaml", {
            "include": "_mmlu_template_yaml", "task": name, "task_alias": subject,
            "tag": "selectlab_mmlu_tasks", "dataset_kwargs": {"subject": subject},
            "description": f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n",
        })
        names.append(name)
    return names


if __name__ == "__main__":
    print(f"bbh: {len(generate_bbh())} tasks, mmlu: {len(generate_mmlu())} subjects")
