"""bench/gpu_check.py with tiny shapes on CPU, in a process where Hydra, vLLM, W&B and lm-eval
cannot be imported (the GPU machine has none of them)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCK = ("omegaconf", "hydra", "vllm", "wandb", "lm_eval", "datasets")


@pytest.mark.slow
def test_gpu_check_tiny_writes_its_json_without_the_heavy_packages(tmp_path):
    out = tmp_path / "gpu_check.json"
    code = (f"import sys, runpy; sys.modules.update({{m: None for m in {BLOCK!r}}}); "
            f"sys.argv = ['gpu_check.py', '--tiny', '--out', {str(out)!r}]; "
            f"runpy.run_path({str(REPO / 'bench' / 'gpu_check.py')!r}, run_name='__main__')")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=600)
    report = json.loads(out.read_text())
    shape = report["shape"]
    assert report["tiny"] and report["device_kind"] == "cpu"
    # word-level tokenizer: one token per word, so the counts are the shapes multiplied out
    emb = report["embedding"]
    assert emb["tokens"] == shape["n"] * shape["k"] * (shape["instruction"] + shape["answer"]) == 720
    assert max(emb["max_abs_diff_vs_reference"].values()) < 1e-5  # batched pass = per-text loop
    assert report["sampling"]["generated_tokens"] == shape["prompts"] * shape["k"] * shape["new_tokens"] == 80
    for method in ("full", "lora"):
        assert report["training"][method]["tokens"] == shape["train_batch"] * shape["train_len"] * shape["timed_steps"]
    assert report["training"]["lora"]["trainable_params"] < report["training"]["full"]["trainable_params"]
    assert report["agreement"]["ok"] and report["agreement"]["tolerance"] == 1e-3
    rates = report["rates"]["cpu"]
    assert set(rates) == {"embed", "generate_hf", "train_full", "train_lora"}
    assert all(r["kind"] == "measured" and r["tokens_per_s"] > 0 and r["flops_per_token"] > 0 for r in rates.values())


def test_plan_reads_gpu_check_rates(tmp_path):
    """A gpu_check JSON's rate is tokens/s x its FLOPs per token, overriding the assumed one."""
    from selectlab.plan import rate_flops_per_s

    device = {"label": "x", "peak_flops": 1e15, "rates": {
        "embed": {"kind": "measured", "tokens_per_s": 2000.0, "flops_per_token": 3e9},
        "forward": {"kind": "assumed", "mfu": 0.4}}}
    assert rate_flops_per_s(device, "embed")[0] == 6e12
    assert rate_flops_per_s(device, "forward")[0] == 4e14
    assert rate_flops_per_s(device, "train_full") is None
