"""Fine-tuning stage on the tiny llama (SmolLM2's real tokenizer): the response-only mask,
eval loss against a hand computation, loss going down, resume after a kill, LoRA merge."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from selectlab.lm.prompts import render_prompt
from selectlab.infra.store import ArtifactStore
from selectlab.schema import typed
from selectlab.lm.train import (IGNORE_INDEX, ResponseOnlyCollator, encode_example, encode_records,
                             eval_loss, finetune, response_losses)

RECORDS = [
    {"id": "0", "instruction": "Give three tips for staying healthy.", "input": "",
     "output": "1. Eat a balanced diet.\n2. Exercise regularly.\n3. Get enough sleep."},
    {"id": "1", "instruction": "What is the capital of France?", "input": "", "output": "The capital of France is Paris."},
    {"id": "2", "instruction": "Translate the sentence into French.", "input": "I like cheese.",
     "output": "J'aime le fromage."},
    {"id": "3", "instruction": "Add the two numbers.", "input": "17 and 25", "output": "17 + 25 = 42"},
]


def train_cfg(compose, name: str, **overrides):
    """The real conf/train/<name>.yaml, composed by Hydra, with test-sized overrides."""
    cfg = compose(f"train={name}", *[f"train.{k}={v}" for k, v in overrides.items()])
    return cfg.train


@pytest.fixture
def tok(smol_tokenizer_dir):
    t = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    t.pad_token = t.pad_token or t.eos_token
    return t


def test_prompt_tokens_are_masked_exactly(tok):
    record = RECORDS[2]
    ex = encode_example(record, tok, "alpaca", max_length=512)
    prompt = render_prompt(record, "alpaca")
    n_prompt = len(tok(prompt)["input_ids"])
    ids, labels = ex["input_ids"], ex["labels"]
    assert len(ids) == len(labels)
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    # token by token across the boundary: the last prompt token is ':' of "### Response:", masked;
    # the first response token is the answer's first token, learned.
    assert tok.convert_ids_to_tokens(ids[n_prompt - 1]) == ":" and labels[n_prompt - 1] == IGNORE_INDEX
    assert tok.decode(ids[n_prompt]) == "J" and labels[n_prompt] == ids[n_prompt]
    assert tok.decode(ids[:n_prompt]) == prompt
    assert tok.decode(ids[n_prompt:]) == record["output"] + tok.eos_token

    # chat template: the learned part is the answer plus the template's end of turn
    chat = encode_example(record, tok, "chat", max_length=512)
    learned = [i for i, lab in zip(chat["input_ids"], chat["labels"]) if lab != IGNORE_INDEX]
    assert tok.decode(learned) == "J'aime le fromage.<|im_end|>\n"
    assert tok.decode(chat["input_ids"][: len(chat["input_ids"]) - len(learned)]).endswith("<|im_start|>assistant\n")


def test_collator_pads_without_masking_eos(tok):
    assert tok.pad_token_id == tok.eos_token_id  # SmolLM2 pads with EOS: the case a naive collator gets wrong
    examples, counts = encode_records(RECORDS[:2], tok, "alpaca", max_length=512)
    assert counts == {"truncated": 0, "no_response_tokens": 0}
    batch = ResponseOnlyCollator(tok.pad_token_id)(examples)
    short = min(range(2), key=lambda i: len(examples[i]["input_ids"]))
    n = len(examples[short]["input_ids"])
    assert batch["input_ids"].shape[1] == max(len(e["input_ids"]) for e in examples)
    assert batch["labels"][short, n - 1].item() == tok.eos_token_id  # the response's EOS is learned
    assert (batch["labels"][short, n:] == IGNORE_INDEX).all()
    assert (batch["attention_mask"][short, n:] == 0).all() and (batch["attention_mask"][short, :n] == 1).all()


def test_truncation_is_counted(tok):
    def n_prompt(record):
        return len(tok(render_prompt(record, "alpaca"))["input_ids"])

    with_input, short = RECORDS[2], RECORDS[1]
    max_length = n_prompt(short) + 3
    assert n_prompt(with_input) > max_length
    examples, counts = encode_records([with_input, short], tok, "alpaca", max_length=max_length)
    # both are cut; the record with an input keeps no response token and is left out, the other keeps 3
    assert counts == {"truncated": 2, "no_response_tokens": 1}
    assert len(examples) == 1 and len(examples[0]["input_ids"]) == max_length
    assert sum(label != IGNORE_INDEX for label in examples[0]["labels"]) == 3


def test_eval_loss_equals_hand_computed_cross_entropy(tiny_model_dir, tok):
    record = RECORDS[1]
    prompt_ids = tok(render_prompt(record, "alpaca"))["input_ids"]
    response_ids = tok(record["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([prompt_ids + response_ids])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0], dim=-1)
    # token t is predicted from position t - 1
    nll = [-logprobs[t - 1, ids[0, t]].item() for t in range(len(prompt_ids), ids.shape[1])]
    expected = sum(nll) / len(nll)

    got = eval_loss(str(tiny_model_dir), [record], "alpaca", max_length=512, batch_size=1, device="cpu")
    assert got == pytest.approx(expected, rel=1e-5)
    assert got == pytest.approx(10.7850, abs=1e-3)  # pinned: seeded tiny llama, near ln(49152) = 10.80
    # a token-weighted mean: padding in a bigger batch changes nothing
    one_by_one = eval_loss(str(tiny_model_dir), RECORDS, "alpaca", 512, batch_size=1, device="cpu")
    together = eval_loss(str(tiny_model_dir), RECORDS, "alpaca", 512, batch_size=4, device="cpu")
    assert together == pytest.approx(one_by_one, rel=1e-5)


def test_finetune_lowers_loss_and_reuses_artifact(tiny_model_dir, compose, tmp_path):
    cfg = train_cfg(compose, "cpu_small", lr=3e-3, max_steps=12, per_device_batch_size=2, grad_accum=1,
                    warmup_ratio=0.0, save_steps=100)
    store = ArtifactStore(tmp_path / "store")
    before = eval_loss(str(tiny_model_dir), RECORDS, device="cpu")
    out = finetune(RECORDS, str(tiny_model_dir), cfg, store, {"subset": "test"})
    meta = store.meta("checkpoints", out.rsplit("/", 1)[-1])
    history = meta["loss_history"]
    assert [h["step"] for h in history] == list(range(1, 13))
    assert history[-1]["loss"] < history[0]["loss"] - 1.0  # 10.82 -> 9.07 when pinned
    after = eval_loss(out, RECORDS, device="cpu")
    assert after < before - 1.0
    assert meta["global_step"] == 12 and meta["resumed_from_step"] is None
    assert meta["effective_batch_size"] == 2 and meta["counts"] == {"truncated": 0, "no_response_tokens": 0}
    assert not (store.root / "checkpoints" / f"{meta['key']}.partial").exists()
    assert store.events[-1].seconds >= meta["train_runtime_s"]  # the stage's time covers the training

    again = finetune(RECORDS, str(tiny_model_dir), cfg, store, {"subset": "test"})
    assert again == out and store.events[-1].reused


def test_a_packed_step_is_the_step_of_one_example_micro_batches(tiny_model_dir, compose, tmp_path):
    """train.packing lays a micro-batch end to end in one row; the loss, the gradients and so the
    weights are those of one-example micro-batches accumulated (the path before packing)."""
    common = dict(lr=3e-3, max_steps=3, warmup_ratio=0.0, save_steps=100)
    packed = train_cfg(compose, "cpu_small", per_device_batch_size=4, grad_accum=1, packing=True, **common)
    one_by_one = train_cfg(compose, "cpu_small", per_device_batch_size=1, grad_accum=4, packing=False, **common)
    assert typed(packed).key_fields()["packing"] and "packing" not in typed(one_by_one).key_fields()
    runs = {}
    for name, cfg in (("packed", packed), ("one_by_one", one_by_one)):
        store = ArtifactStore(tmp_path / name)
        out = finetune(RECORDS, str(tiny_model_dir), cfg, store)
        runs[name] = (out, [h["loss"] for h in store.meta("checkpoints", out.rsplit("/", 1)[-1])["loss_history"]])
    assert runs["packed"][1] == pytest.approx(runs["one_by_one"][1], rel=1e-5)
    weights = [AutoModelForCausalLM.from_pretrained(runs[name][0], dtype=torch.float32).state_dict() for name in runs]
    assert max(float((weights[0][k] - weights[1][k]).abs().max()) for k in weights[0]) < 1e-5
    # the held-out loss packs its batches too: per example, the same as one record at a time
    together = response_losses(str(tiny_model_dir), RECORDS, batch_size=4, device="cpu")
    alone = response_losses(str(tiny_model_dir), RECORDS, batch_size=1, device="cpu")
    assert together == pytest.approx(alone, rel=1e-5)


def test_packing_refuses_several_gpus_in_one_process(monkeypatch):
    from selectlab.errors import SelectlabError
    from selectlab.lm.packing import check_launch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(SelectlabError, match="train.packing=true with 2 GPUs in one process: launch with torchrun"):
        check_launch(world_size=1)
    check_launch(world_size=2)  # torchrun: one process per GPU


class KillAfterSave(TrainerCallback):
    """Stands in for a kill right after a checkpoint is on disk."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"killed after checkpoint {self.step}")


class FirstStep(TrainerCallback):
    def __init__(self):
        self.first = None

    def on_step_end(self, args, state, control, **kwargs):
        self.first = self.first or state.global_step


@pytest.mark.slow
def test_killed_finetune_resumes_from_last_checkpoint(tiny_model_dir, compose, tmp_path):
    cfg = train_cfg(compose, "cpu_small", lr=3e-3, max_steps=8, per_device_batch_size=2, grad_accum=1,
                    save_steps=4)
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(KeyboardInterrupt):
        finetune(RECORDS, str(tiny_model_dir), cfg, store, callbacks=[KillAfterSave(4)])
    partial = next((store.root / "checkpoints").glob("*.partial"))
    assert [p.name for p in (partial / "trainer").glob("checkpoint-*")] == ["checkpoint-4"]
    assert not any(store.exists("checkpoints", p.name) for p in (store.root / "checkpoints").iterdir())

    first = FirstStep()
    out = finetune(RECORDS, str(tiny_model_dir), cfg, store, callbacks=[first])
    meta = store.meta("checkpoints", out.rsplit("/", 1)[-1])
    assert first.first == 5  # continued after checkpoint 4, not from step 0
    assert meta["resumed_from_step"] == 4 and meta["global_step"] == 8
    assert [h["step"] for h in meta["loss_history"]] == list(range(1, 9))
    assert not partial.exists()

    # the resumed fine-tune is the one an uninterrupted run gives
    fresh = ArtifactStore(tmp_path / "fresh")
    uninterrupted = finetune(RECORDS, str(tiny_model_dir), cfg, fresh)
    fresh_meta = fresh.meta("checkpoints", uninterrupted.rsplit("/", 1)[-1])
    assert [h["loss"] for h in meta["loss_history"]] == pytest.approx([h["loss"] for h in fresh_meta["loss_history"]], rel=1e-5)
    assert eval_loss(out, RECORDS, device="cpu") == pytest.approx(eval_loss(uninterrupted, RECORDS, device="cpu"), rel=1e-5)


def test_lora_merges_into_a_plain_model(tiny_model_dir, compose, tmp_path):
    cfg = train_cfg(compose, "lora", lr=1e-2, max_steps=6, per_device_batch_size=2, grad_accum=1, save_steps=100,
                    gradient_checkpointing=True)  # the path that needs input grads under frozen embeddings
    store = ArtifactStore(tmp_path / "store")
    out = finetune(RECORDS, str(tiny_model_dir), cfg, store)
    from pathlib import Path

    assert not (Path(out) / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    merged_sd, base_sd = merged.state_dict(), base.state_dict()
    assert set(merged_sd) == set(base_sd)  # no lora_A / base_model prefixes left
    changed = [k for k in base_sd if not torch.equal(base_sd[k], merged_sd[k])]
    # only the LoRA targets move, every one of them
    assert changed and all(any(m in k for m in cfg.lora_target_modules) for k in changed)
    assert {k.split(".")[-2] for k in changed} == set(cfg.lora_target_modules)
    history = store.meta("checkpoints", Path(out).name)["loss_history"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert math.isfinite(eval_loss(out, RECORDS, device="cpu"))
    # the adapters are drawn from train.seed, not from wherever the process's generator stands
    again = finetune(RECORDS, str(tiny_model_dir), cfg, ArtifactStore(tmp_path / "again"))
    again_sd = AutoModelForCausalLM.from_pretrained(again, dtype=torch.float32).state_dict()
    assert all(torch.equal(again_sd[k], merged_sd[k]) for k in changed)


def test_train_none_and_config_errors(tiny_model_dir, compose, tmp_path):
    store = ArtifactStore(tmp_path / "store")
    assert finetune(RECORDS, str(tiny_model_dir), train_cfg(compose, "none"), store) == str(tiny_model_dir)
    paper = typed(train_cfg(compose, "paper"))
    assert paper.grad_accum_for(1) == 16 and paper.grad_accum_for(8) == 2
    with pytest.raises(ValueError, match="effective_batch_size=64 is not a multiple"):
        paper.grad_accum_for(3)


def test_finetune_reports_on_the_stage_bar_not_the_trainers_dicts(tiny_model_dir, compose, tmp_path, capsys):
    """One voice on the console: the project's 'finetune' bar (steps, last loss), no printed log dicts."""
    cfg = train_cfg(compose, "cpu_small", lr=3e-3, max_steps=3, per_device_batch_size=2, grad_accum=1,
                    warmup_ratio=0.0, save_steps=100)
    finetune(RECORDS, str(tiny_model_dir), cfg, ArtifactStore(tmp_path / "store"), {"subset": "bar"})
    captured = capsys.readouterr()
    console = captured.out + captured.err
    assert "finetune" in captured.err and "3/3" in captured.err and "loss=" in captured.err
    assert "{'loss'" not in console and "'grad_norm'" not in console


@pytest.mark.slow
def test_two_jobs_needing_the_same_fine_tune_train_it_once(tiny_model_dir, compose, tmp_path):
    """Two processes start the same fine-tune on one store: one trains, the other waits for the
    artifact's lock and reuses the checkpoint (counted from their logs)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from selectlab.config import plain

    cfg = plain(train_cfg(compose, "cpu_small", lr=3e-3, max_steps=8, per_device_batch_size=2, grad_accum=1,
                          warmup_ratio=0.0, save_steps=100))
    job = ("import json, logging, sys; logging.basicConfig(level=logging.INFO); sys.path.insert(0, 'src')\n"
           "from selectlab.infra.store import ArtifactStore\nfrom selectlab.lm.train import finetune\n"
           "from selectlab.schema.run import FinetuneConfig\n"
           f"cfg, records = json.loads({json.dumps(json.dumps(cfg))}), json.loads({json.dumps(json.dumps(RECORDS))})\n"
           f"print(finetune(records, {str(tiny_model_dir)!r}, FinetuneConfig(**cfg), ArtifactStore({str(tmp_path / 'store')!r}), {{'subset': 'same'}}))\n")
    repo = Path(__file__).resolve().parents[1]
    procs = [subprocess.Popen([sys.executable, "-c", job], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    logs = "".join(err for _, err in outs)
    assert logs.count("built artifact checkpoints/") == 1 and logs.count("reusing artifact checkpoints/") == 1
    assert outs[0][0].split()[-1] == outs[1][0].split()[-1]  # the same checkpoint folder


def test_bf16_on_a_cpu_machine_gets_its_training_arguments(compose, tmp_path):
    """train.bf16=true on the CPU: the Trainer's CPU autocast (it refuses bf16 without a GPU unless
    told it runs on the CPU; bench/bench_finetune.py measures what it gains and moves)."""
    import torch

    from selectlab.lm.train import training_arguments

    tc = typed(train_cfg(compose, "cpu_small", bf16="true"))
    args = training_arguments(tc, tmp_path, 8)
    assert args.bf16 and (args.use_cpu or torch.cuda.is_available())
