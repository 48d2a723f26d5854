"""Supervised fine-tuning of the backbone on a selected subset, and response-only eval loss.

The model sees ``prompt + response`` and is trained on the response tokens only (prompt
labels are -100), as in Stanford Alpaca and the ADG paper. The prompt and the response are
tokenized separately and concatenated, so the boundary between them is exact by
construction (a joint tokenization could merge a token across it and shift the mask).

A fine-tune is an artifact of stage ``checkpoints``: its key hashes the subset, the base
model, the training settings that decide the weights, the prompt template and this module's
version. Trainer checkpoints go to ``<store>/checkpoints/<key>.partial/``; a run killed
mid-training resumes from the last one. The final model (LoRA adapters merged in, so
evaluation loads a plain model) and tokenizer are published atomically with the loss curve
in ``meta.json``.

Multi-GPU needs no code here: launch the run with ``accelerate launch`` (FSDP, DeepSpeed)
or ``torchrun`` and the Trainer shards the work; only the main process publishes.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..infra import preemption
from ..schema import typed
from ..schema.run import FinetuneConfig, TrainConfig
from ..errors import SelectlabError
from . import packing
from .packing import IGNORE_INDEX
from .prompts import render_prompt, template_hash
from ..infra.store import ArtifactStore, content_hash, disk_errors, holding

log = logging.getLogger(__name__)

VERSION = 1
STAGE = "checkpoints"


# ---------------------------------------------------------------- tokenization and batching


def _chat_response_text(record: dict, tokenizer, prompt: str) -> str:
    """What the chat template writes after the generation prompt for this answer (the answer
    plus the template's end-of-turn marker, so the model learns to stop where chat decoding stops)."""
    inp = (record.get("input") or "").strip()
    user = f"{record['instruction']}\n\n{inp}" if inp else record["instruction"]  # as render_prompt builds it
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}], tokenize=False
    )
    if not full.startswith(prompt):
        raise SelectlabError(
            f"record {record.get('id')!r}: the chat template's full conversation does not start with its "
            f"generation prompt, so the response boundary is undefined; use train.template=alpaca"
        )
    return full[len(prompt):]


def encode_example(record: dict, tokenizer, template: str, max_length: int) -> dict:
    """``input_ids`` and ``labels`` (prompt positions -100) of one record, cut at ``max_length``.

    Alpaca templates: the tokenizer's own special tokens (e.g. LLaMA3's BOS) + prompt, then the
    output + EOS. Chat: the template's text already holds its special tokens.
    """
    prompt = render_prompt(record, template, tokenizer)
    if template == "chat":
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(_chat_response_text(record, tokenizer, prompt), add_special_tokens=False)["input_ids"]
    else:
        prompt_ids = tokenizer(prompt)["input_ids"]
        response_ids = tokenizer(record["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels, "truncated": len(prompt_ids) + len(response_ids) > max_length}


def encode_records(records: Sequence[dict], tokenizer, template: str, max_length: int) -> tuple[list[dict], dict]:
    """Encoded examples and degenerate-case counts. An example whose prompt fills ``max_length``
    has no response token left to learn from; it is left out and counted, never silently."""
    examples, counts = [], {"truncated": 0, "no_response_tokens": 0}
    no_response_ids = []
    for r in records:
        ex = encode_example(r, tokenizer, template, max_length)
        counts["truncated"] += ex.pop("truncated")
        if all(label == IGNORE_INDEX for label in ex["labels"]):
            counts["no_response_tokens"] += 1
            no_response_ids.append(r.get("id"))
            continue
        examples.append(ex)
    if no_response_ids:
        log.warning("%d example(s) have no response token within max_length=%d (left out): %s",
                    len(no_response_ids), max_length, no_response_ids[:10])
    return examples, counts


@dataclass
class ResponseOnlyCollator:
    """Right-pads a batch; padding gets attention 0 and label -100. Labels come from
    :func:`encode_example`, never from comparing ids with the pad id (which is often EOS,
    and EOS at the end of a response must be learned)."""

    pad_token_id: int

    def __call__(self, examples: Sequence[dict]) -> dict:
        import torch

        width = max(len(ex["input_ids"]) for ex in examples)
        ids, labels, mask = [], [], []
        for ex in examples:
            pad = width - len(ex["input_ids"])
            ids.append(list(ex["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(ex["labels"]) + [IGNORE_INDEX] * pad)
            mask.append([1] * len(ex["input_ids"]) + [0] * pad)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


# ---------------------------------------------------------------- evaluation loss


def response_loss_sums(model_path: str, records: Sequence[dict], template: str = "alpaca", max_length: int = 512,
                       batch_size: int = 8, dtype: str = "float32", device: str | None = None) -> list[tuple[float, int]]:
    """(summed cross-entropy, number of response tokens) of each record, in order; a record with
    no response token within ``max_length`` gives (0.0, 0) and is counted in a warning. Each
    ``batch_size`` records run as one packed row (:mod:`.packing`: no padding, logits at response
    positions only)."""
    import torch

    from .models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model_path, padding_side="right")
    model = load_causal_lm(model_path, dtype, device, attn_implementation=packing.attention())
    encoded = [encode_example(r, tokenizer, template, max_length) for r in records]
    scored = [i for i, ex in enumerate(encoded) if any(label != IGNORE_INDEX for label in ex["labels"])]
    if len(scored) < len(records):
        log.warning("%d of %d records have no response token within max_length=%d and are not scored",
                    len(records) - len(scored), len(records), max_length)
    sums = [(0.0, 0)] * len(records)
    with torch.no_grad():
        for start in range(0, len(scored), batch_size):
            rows = scored[start:start + batch_size]
            batch = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v
                     for k, v in packing.pack([encoded[i] for i in rows]).items()}
            targets, segment = batch.pop("shift_labels")[0], batch.pop("segment")
            del batch["labels"]
            logits = model(**batch).logits[0]
            token_losses = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
            totals = torch.zeros(len(rows), device=token_losses.device).index_add_(0, segment, token_losses)
            counts = torch.bincount(segment, minlength=len(rows))
            for row, i in enumerate(rows):
                sums[i] = (float(totals[row]), int(counts[row]))
    return sums


def response_losses(model_path: str, records: Sequence[dict], **kwargs) -> list[float | None]:
    """Mean response-token cross-entropy of each record (None: no response token within max_length).
    The per-example numbers the held-out eval keeps, so differences can be paired by example."""
    return [total / n if n else None for total, n in response_loss_sums(model_path, records, **kwargs)]


def eval_loss(model_path: str, records: Sequence[dict], template: str = "alpaca", max_length: int = 512,
              batch_size: int = 8, dtype: str = "float32", device: str | None = None) -> float:
    """Mean cross-entropy over all response tokens of ``records`` (each token weighs the same,
    so the value does not depend on ``batch_size``). Used as the quality signal of a fine-tune
    by InstructMining's rule fitting and the subset-size search."""
    sums = response_loss_sums(model_path, records, template, max_length, batch_size, dtype, device)
    n_tokens = sum(n for _, n in sums)
    if not n_tokens:
        raise SelectlabError(f"eval_loss: none of the {len(records)} records has a response token within max_length={max_length}")
    return sum(total for total, _ in sums) / n_tokens


# ---------------------------------------------------------------- fine-tuning


def checkpoint_key(records: Sequence[dict], base_model_path: str, tc: FinetuneConfig, tokenizer,
                   store: ArtifactStore, out_key_inputs: dict) -> str:
    """Hashes the records' text (so any edit of the subset retrains), the base model's folder
    (relative to the store when it is a store artifact, whose name is its content key, so a
    moved cache keeps its keys), the weight-deciding settings, the prompt template and the
    caller's ``out_key_inputs``."""
    records_hash = content_hash([[r["id"], r["instruction"], r.get("input", ""), r["output"]] for r in records])
    return ArtifactStore.key(
        STAGE, VERSION, records=records_hash, base_model=store.identity(base_model_path),
        train=tc.key_fields(), template_hash=template_hash(tc.template, tokenizer), caller=out_key_inputs,
    )


def _report_to() -> list[str] | str:
    """W&B gets the loss curve when the run has an active W&B run (the logger config starts it)."""
    try:
        import wandb
    except ImportError:
        return "none"
    return ["wandb"] if wandb.run is not None else "none"


def finetune(records: Sequence[dict], base_model_path: str, cfg: TrainConfig, store: ArtifactStore,
             out_key_inputs: dict | None = None, callbacks: Sequence | None = None) -> str:
    """Folder of ``base_model_path`` fine-tuned on ``records`` with the ``train`` config ``cfg``
    (its schema dataclass, or the composed section: ``schema.typed`` makes one of the other).

    ``train.method=none`` returns ``base_model_path`` itself (the untouched backbone is
    evaluated). ``out_key_inputs`` adds the caller's provenance (e.g. the subset artifact key)
    to the artifact key. ``callbacks`` are extra ``TrainerCallback`` objects.
    """
    from .models import load_tokenizer

    tc = typed(cfg)
    if tc.method == "none":
        log.info("train.method=none: evaluating the untouched base model %s", base_model_path)
        return str(base_model_path)
    if not records:
        raise ValueError("finetune: no records to train on")
    if tc.drop_input:
        records = [{**r, "input": ""} for r in records]
    tokenizer = load_tokenizer(base_model_path, padding_side="right")
    key = checkpoint_key(records, base_model_path, tc, tokenizer, store, out_key_inputs or {})
    if reuse_checkpoint(store, key):
        return str(store.path(STAGE, key))
    # One job trains it; another that needs the same fine-tune waits for this lock and reuses the result
    # (as store.build does). The ranks of one torchrun job train together: no lock between them.
    alone = int(os.environ.get("WORLD_SIZE", "1")) == 1
    with holding(store.lock(STAGE, key), f"{STAGE}/{key}") if alone else nullcontext():
        if alone and reuse_checkpoint(store, key):
            return str(store.path(STAGE, key))
        return train_and_publish(records, base_model_path, tc, tokenizer, store, key, out_key_inputs, callbacks)


def reuse_checkpoint(store: ArtifactStore, key: str) -> bool:
    """Whether the fine-tune is stored intact (recording the reuse); a damaged one is moved aside."""
    if not store.reusable(STAGE, key):
        return False
    store.build(STAGE, key, lambda tmp: None)  # records the reuse event
    shutil.rmtree(store.root / STAGE / f"{key}.partial", ignore_errors=True)  # a kill between publish and clean-up
    return True


def train_and_publish(records: Sequence[dict], base_model_path: str, tc: FinetuneConfig, tokenizer, store: ArtifactStore,
                      key: str, out_key_inputs: dict | None, callbacks: Sequence | None) -> str:
    """Train (resuming from the last Trainer checkpoint in the partial folder) and publish the checkpoint."""
    from transformers import Trainer, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    final, partial = store.path(STAGE, key), store.root / STAGE / f"{key}.partial"
    started = time.perf_counter()
    examples, counts = encode_records(records, tokenizer, tc.template, tc.max_length)
    if not examples:
        raise SelectlabError(f"finetune: none of the {len(records)} records has a response token within "
                             f"train.max_length={tc.max_length}")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if tc.packing:
        packing.check_launch(world_size)
    args = training_arguments(tc, partial / "trainer", tc.grad_accum_for(world_size))
    set_seed(tc.seed)  # LoRA's adapters are drawn when the model is built, before the Trainer seeds
    trainer = Trainer(model=build_model(base_model_path, tc), args=args, train_dataset=examples,
                      data_collator=packing.PackingCollator() if tc.packing else ResponseOnlyCollator(tokenizer.pad_token_id),
                      callbacks=[*(callbacks or []), preemption.stop_on_signal_callback()])
    on_stage_bar(trainer)
    last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    if last:
        log.info("resuming fine-tune %s from step %s (%s)", key, Path(last).name.split("-")[-1], last)
    with disk_errors(store.root, f"{STAGE}/{key} (Trainer checkpoints and the exported model)"):
        result = trainer.train(resume_from_checkpoint=last)
        preemption.check(f"the end of fine-tune {key} (Trainer checkpoint saved at step {trainer.state.global_step})")
        export_model(trainer, tc, partial / "final")
    if trainer.is_world_process_zero():
        meta = {
            "base_model": str(base_model_path), "method": tc.method, "train": dataclasses.asdict(tc),
            "template": tc.template, "template_hash": template_hash(tc.template, tokenizer),
            "n_records": len(records), "n_examples": len(examples), "counts": counts,
            "world_size": world_size, "grad_accum": args.gradient_accumulation_steps,
            "effective_batch_size": tc.per_device_batch_size * args.gradient_accumulation_steps * world_size,
            "resumed_from_step": int(Path(last).name.split("-")[-1]) if last else None,
            "key_inputs": out_key_inputs or {}, **training_facts(trainer, result),
        }
        publish(store, key, partial, tokenizer, meta, started)
    trainer.accelerator.wait_for_everyone()
    return str(final)


def on_stage_bar(trainer) -> None:
    """The fine-tune reports like every other stage: the project's bar (optimizer steps, rate, ETA,
    the last logged loss) instead of the Trainer's bar and the log dicts it prints at each step."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerCallback

    from ..infra.progress import stage_bar

    class StageBar(TrainerCallback):
        bar = opened = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.opened = stage_bar("finetune", total=state.max_steps, done=state.global_step, unit="step")
                self.bar = self.opened.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is not None and logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)

        def on_train_end(self, args, state, control, **kwargs):
            if self.opened is not None:
                self.opened.__exit__(None, None, None)
                self.bar = self.opened = None

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(StageBar())


def build_model(base_model_path: str, tc: FinetuneConfig):
    """The model to train: full weights in fp32 (mixed precision is the Trainer's), or LoRA adapters;
    with ``train.packing``, its attention runs each packed example alone."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=torch.float32,
                                                 attn_implementation=packing.attention() if tc.packing else None)
    if tc.gradient_checkpointing:
        model.config.use_cache = False
    if tc.method != "lora":
        return model
    from peft import LoraConfig, get_peft_model

    if tc.gradient_checkpointing:  # frozen embeddings would otherwise cut the gradient at checkpoints
        model.enable_input_require_grads()
    return get_peft_model(model, LoraConfig(
        r=tc.lora_r, lora_alpha=tc.lora_alpha, lora_dropout=tc.lora_dropout,
        target_modules=list(tc.lora_target_modules), task_type="CAUSAL_LM",
    ))


def training_arguments(tc: FinetuneConfig, output_dir: Path, grad_accum: int):
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=tc.epochs,
        max_steps=tc.max_steps,
        learning_rate=tc.lr,
        lr_scheduler_type=tc.scheduler,
        warmup_steps=tc.warmup_ratio,  # transformers 5 reads a float in [0, 1) as a ratio of total steps
        weight_decay=tc.weight_decay,
        per_device_train_batch_size=tc.per_device_batch_size,
        gradient_accumulation_steps=grad_accum,
        bf16=tc.bf16,
        use_cpu=tc.bf16 and not torch.cuda.is_available(),  # the Trainer refuses bf16 without a GPU unless told it is on the CPU
        gradient_checkpointing=tc.gradient_checkpointing,
        seed=tc.seed,
        save_strategy="steps",
        save_steps=tc.save_steps,
        save_total_limit=tc.save_total_limit,
        logging_steps=tc.logging_steps,
        logging_first_step=True,
        report_to=_report_to(),
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def export_model(trainer, tc: FinetuneConfig, export: Path) -> None:
    """The trained model as one loadable folder: LoRA merged in; FSDP's shards gathered."""
    if tc.method == "lora":
        if trainer.is_world_process_zero():
            trainer.model.merge_and_unload().save_pretrained(export, safe_serialization=True)
        return
    if trainer.is_fsdp_enabled:  # a loadable model needs the full state dict, whatever the checkpoints use
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(export))  # gathers sharded weights; writes on the main process only


def training_facts(trainer, result) -> dict:
    history = [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h]
    return {"global_step": trainer.state.global_step, "train_runtime_s": result.metrics.get("train_runtime"),
            "train_loss": result.metrics.get("train_loss"), "loss_history": history}


def publish(store: ArtifactStore, key: str, partial: Path, tokenizer, meta: dict, started: float) -> None:
    """The exported model and tokenizer become the checkpoint artifact; the partial folder goes."""
    def move(tmp: Path) -> dict:
        for f in (partial / "final").iterdir():
            os.replace(f, tmp / f.name)
        tokenizer.save_pretrained(tmp)
        return meta

    store.build(STAGE, key, move, started=started)
    shutil.rmtree(partial, ignore_errors=True)
