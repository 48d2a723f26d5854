"""Preemption (SIGTERM / SIGUSR1): each stage stops at its next safe point with everything it
finished stored, and the rerun resumes there; evaluations are stored task by task."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from transformers import TrainerCallback

from selectlab.infra import preemption
from selectlab.infra.store import ArtifactStore
from selectlab.lm.train import eval_loss, finetune

from test_train import RECORDS, train_cfg


@pytest.fixture
def handlers():
    """Our handlers for the test, the process's own ones back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in preemption.SIGNALS}
    preemption.install()
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    preemption._received = None


class SignalAt(TrainerCallback):
    """Sends the process a real signal at the end of one optimiser step."""

    def __init__(self, step: int, sig=signal.SIGTERM):
        self.step, self.sig = step, sig

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), self.sig)


@pytest.mark.slow
def test_sigterm_mid_finetune_saves_that_step_and_the_rerun_ends_where_an_uninterrupted_run_does(
        tiny_model_dir, compose, tmp_path, handlers, caplog):
    # save_steps larger than the run: before preemption handling, a SIGTERM here lost every step
    cfg = train_cfg(compose, "cpu_small", lr=3e-3, max_steps=8, per_device_batch_size=2, grad_accum=1,
                    save_steps=1000)
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(preemption.Preempted, match="SIGTERM received; stopped before the end of fine-tune"):
        finetune(RECORDS, str(tiny_model_dir), cfg, store, callbacks=[SignalAt(3)])
    partial = next((store.root / "checkpoints").glob("*.partial"))
    assert [p.name for p in (partial / "trainer").glob("checkpoint-*")] == ["checkpoint-3"]
    assert not (partial / "final").exists()  # nothing exported, nothing published
    assert not any(store.exists("checkpoints", p.name) for p in (store.root / "checkpoints").iterdir())

    preemption._received = None  # the requeued job is a new process
    with caplog.at_level(logging.INFO, logger="selectlab.lm.train"):
        out = finetune(RECORDS, str(tiny_model_dir), cfg, store)
    assert "from step 3" in caplog.text
    meta = store.meta("checkpoints", Path(out).name)
    assert meta["resumed_from_step"] == 3 and meta["global_step"] == 8

    fresh = ArtifactStore(tmp_path / "fresh")
    uninterrupted = finetune(RECORDS, str(tiny_model_dir), cfg, fresh)
    fresh_meta = fresh.meta("checkpoints", Path(uninterrupted).name)
    # the same optimiser steps: per-step losses and the final model's loss agree to float32 round-off
    assert [h["loss"] for h in meta["loss_history"]] == pytest.approx([h["loss"] for h in fresh_meta["loss_history"]], rel=1e-5)
    assert eval_loss(out, RECORDS, device="cpu") == pytest.approx(eval_loss(uninterrupted, RECORDS, device="cpu"), rel=1e-5)


def test_a_batched_stage_stops_before_its_next_batch_with_the_finished_ones_stored(tmp_path, handlers):
    store = ArtifactStore(tmp_path / "store")
    computed = []

    def compute(batch):
        computed.append(list(batch))
        if len(computed) == 2:
            os.kill(os.getpid(), signal.SIGUSR1)  # arrives while batch 2 runs: batch 2 still finishes
        return np.asarray(batch, dtype=np.float32)[:, None]

    with pytest.raises(preemption.Preempted, match=r"SIGUSR1 received; stopped before batch 3/5 of demo/k"):
        store.batched("demo", "k", list(range(10)), 2, compute)
    assert computed == [[0, 1], [2, 3]]
    preemption._received = None
    folder = store.batched("demo", "k", list(range(10)), 2, compute)
    assert computed[2:] == [[4, 5], [6, 7], [8, 9]]  # the rerun computes only what was not stored
    assert np.load(folder / "array.npy")[:, 0].tolist() == list(range(10))


def test_hand_off_gives_the_signal_to_the_handler_found_before_ours(tmp_path):
    """Under submitit its USR1 handler checkpoints and requeues; without one the exit code asks for a requeue."""
    script = (
        "import os, signal, sys\n"
        "from selectlab.infra import preemption\n"
        "signal.signal(signal.SIGUSR1, lambda s, f: (print('previous handler: requeue', flush=True), sys.exit(3)))\n"
        "preemption.install()\n"
        "os.kill(os.getpid(), int(sys.argv[1]))\n"
        "try:\n"
        "    preemption.check('the next batch')\n"
        "except preemption.Preempted as stopped:\n"
        "    preemption.hand_off(stopped)\n")
    usr1 = subprocess.run([sys.executable, "-c", script, str(int(signal.SIGUSR1))], capture_output=True, text=True)
    assert usr1.returncode == 3 and "previous handler: requeue" in usr1.stdout
    assert "preempted: SIGUSR1 received; stopped before the next batch" in usr1.stderr
    term = subprocess.run([sys.executable, "-c", script, str(int(signal.SIGTERM))], capture_output=True, text=True)
    assert term.returncode == preemption.REQUEUE_EXIT_CODE, term.stderr


def _tiny_task(folder: Path, name: str, answers: list[int]) -> None:
    docs = folder / f"{name}.jsonl"
    docs.write_text("".join(json.dumps({"question": f"Pick {a}", "choices": ["zero", "one", "two"], "answer": a}) + "\n"
                            for a in answers))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {docs}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n")


@pytest.mark.slow
def test_a_run_killed_in_its_second_eval_task_redoes_only_that_task(tiny_model_dir, compose, tmp_path, monkeypatch):
    import lm_eval

    from selectlab.config import plain
    from selectlab.context import RunContext
    from selectlab.stages.evaluation import lm_eval_stage, task_keys
    from omegaconf import open_dict

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for i, name in enumerate(("tiny_a", "tiny_b", "tiny_c")):
        _tiny_task(tasks, name, [i % 3, (i + 1) % 3])
    cfg = compose(f"backbone.path={tiny_model_dir}", "eval=smoke", "eval.batch_size=2", "eval.device=cpu",
                  "eval.limit=null", "eval.gen_kwargs=null")
    with open_dict(cfg):
        cfg.eval.task_dirs = [str(tasks)]
        cfg.eval.tasks = {n: {"lm_eval": n, "num_fewshot": 0, "metric": "acc", "filter": "none"}
                          for n in ("tiny_a", "tiny_b", "tiny_c")}
        cfg.eval.groups = {"all": ["tiny_a", "tiny_b", "tiny_c"]}
    ran = []
    real = lm_eval.simple_evaluate

    def counting(*args, **kwargs):
        name = kwargs["tasks"][0].config.task
        ran.append(name)
        if name == "tiny_b" and ran.count("tiny_b") == 1:
            raise KeyboardInterrupt("killed during the second task")
        return real(*args, **kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", counting)
    ctx = RunContext(cfg=cfg, store=ArtifactStore(tmp_path / "store"), pool=None, pool_key="",
                     backbone=lambda: str(tiny_model_dir))
    with pytest.raises(KeyboardInterrupt):
        lm_eval_stage(ctx, str(tiny_model_dir), "untrained")
    keys = task_keys(ctx.store, str(tiny_model_dir), plain(cfg.eval))
    assert [ctx.store.exists("evals", keys[n]) for n in ("tiny_a", "tiny_b", "tiny_c")] == [True, False, False]
    result = lm_eval_stage(ctx, str(tiny_model_dir), "untrained")
    assert ran == ["tiny_a", "tiny_b", "tiny_b", "tiny_c"]  # the rerun: the killed task and what follows
    assert set(result["metrics"]) == {"tiny_a", "tiny_b", "tiny_c"} and result["complete"]
    assert set(result["per_example"]["tiny_b"]) == {"tiny_b/0", "tiny_b/1"}
    again = lm_eval_stage(ctx, str(tiny_model_dir), "untrained")  # all stored: no task loaded, no model
    assert ran == ["tiny_a", "tiny_b", "tiny_b", "tiny_c"] and again["metrics"] == result["metrics"]


@pytest.mark.slow
def test_chaos_run_loses_nothing(tmp_path):
    """bench/chaos.py at its short size: jobs killed by SIGKILL and SIGTERM, rerun, equal to a clean run."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from chaos import chaos, clean_report

    report = chaos(5, 3, tmp_path.resolve(), seed=1)
    assert report["kills"], "nothing was killed"
    assert clean_report(report), json.dumps(report, indent=2)
