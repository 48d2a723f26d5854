"""The CPU fine-tune and held-out loss: today's float32 path against bf16, in one process.

A seeded Alpaca subset (the replication's budget, 38 examples) fine-tunes the embedded SmolLM2 with
``train=cpu_small`` at the replication's settings (lr 1e-4, max_length 512) for ``--steps`` optimiser
steps, once in float32 (today) and once with ``train.bf16=true`` (the Trainer's CPU autocast: this
CPU has AVX-512 BF16); then the held-out response loss of ``--heldout`` Alpaca examples under the
float32 model, with ``dtype`` float32 and bfloat16. Prints seconds, the ratios and how far the losses
move (per-step training losses, held-out mean and per-example), so a speed-up is weighed against
what it does to the numbers.

    python bench/bench_finetune.py                 # 4 steps x 8 examples, 100 held-out examples
    python bench/bench_finetune.py --steps 10 --heldout 200
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--budget", type=int, default=38)
    parser.add_argument("--heldout", type=int, default=100)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    import numpy as np
    from hydra import compose, initialize_config_dir

    import selectlab.config  # noqa: F401  (resolvers)
    from selectlab.lm.backbone import resolve_backbone
    from selectlab.config import plain
    from selectlab.infra.paths import cache_dir
    from selectlab.pools import load_pool
    from selectlab.infra.store import ArtifactStore
    from selectlab.lm.train import finetune, response_losses
    from selectlab.schema import typed

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["run_dir=/tmp/bench", "train=cpu_small", "train.lr=1e-4",
                                           f"train.max_steps={args.steps}", "train.save_steps=1000"])
    backbone = resolve_backbone(plain(cfg.backbone), ArtifactStore(cache_dir()))
    pool = load_pool({**plain(cfg.pool), "limit": None}, seed=0).records
    rng = random.Random(0)
    picked = rng.sample(range(len(pool)), args.budget + args.heldout)
    subset = [pool[i] for i in picked[:args.budget]]
    heldout = [pool[i] for i in picked[args.budget:]]

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for name, bf16 in (("float32", False), ("bf16_autocast", True)):
            train = dataclasses.replace(typed(cfg.train), bf16=bf16)
            store = ArtifactStore(Path(tmp) / name)
            start = time.perf_counter()
            models[name] = finetune(subset, backbone, train, store, {"bench": name})
            seconds = time.perf_counter() - start
            history = store.meta("checkpoints", Path(models[name]).name)["loss_history"]
            out[f"finetune_{name}"] = {"seconds": round(seconds, 1), "losses": [round(h["loss"], 4) for h in history]}
        f32, b16 = out["finetune_float32"], out["finetune_bf16_autocast"]
        out["finetune_ratio"] = round(f32["seconds"] / b16["seconds"], 2)
        out["finetune_max_step_loss_diff"] = round(max(abs(a - b) for a, b in zip(f32["losses"], b16["losses"])), 4)
        losses = {}
        for dtype in ("float32", "bfloat16"):
            start = time.perf_counter()
            losses[dtype] = np.array(response_losses(models["float32"], heldout, max_length=512, batch_size=8,
                                                     dtype=dtype), dtype=float)
            out[f"heldout_{dtype}_seconds"] = round(time.perf_counter() - start, 1)
        out["heldout_ratio"] = round(out["heldout_float32_seconds"] / out["heldout_bfloat16_seconds"], 2)
        diff = losses["bfloat16"] - losses["float32"]
        out["heldout_mean"] = {d: round(float(np.nanmean(v)), 4) for d, v in losses.items()}
        out["heldout_per_example_abs_diff"] = {"mean": round(float(np.nanmean(np.abs(diff))), 4),
                                               "max": round(float(np.nanmax(np.abs(diff))), 4)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
