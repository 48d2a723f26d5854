"""The CPU fine-tune and held-out loss: the path before packing against packed rows and bf16, in one process.

A seeded Alpaca subset (the replication's budget, 38 examples) fine-tunes the embedded SmolLM2 with
``train=cpu_small`` at the replication's settings (lr 1e-4, max_length 512) for ``--steps`` optimiser
steps of 8 examples, three ways: the path before packing (eight one-example micro-batches accumulated,
float32: ``per_device_batch_size=1 grad_accum=8 packing=false``), today's default (one packed row of 8,
float32) and packed with ``train.bf16=true`` (the Trainer's CPU autocast: this CPU has AVX-512 BF16).
Then the held-out response loss of ``--heldout`` Alpaca examples under the first model: padded batches
of 8 with logits at every position (the path before packing, written out below as the baseline),
packed rows of 8 in float32 (today) and in bfloat16. Prints seconds, the ratios against the first
way and how far the losses move (per-step training losses, held-out mean and per-example), so a
speed-up is weighed against what it does to the numbers.

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


def padded_response_losses(model_path: str, records: list[dict], batch_size: int = 8) -> list[float]:
    """The held-out loss before packing: right-padded batches, logits at every position, float32."""
    import torch

    from selectlab.lm.models import load_causal_lm, load_tokenizer
    from selectlab.lm.train import IGNORE_INDEX, ResponseOnlyCollator, encode_example

    tokenizer = load_tokenizer(model_path, padding_side="right")
    model = load_causal_lm(model_path)
    encoded = [encode_example(r, tokenizer, "alpaca", 512) for r in records]
    collate, losses = ResponseOnlyCollator(tokenizer.pad_token_id), []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = {k: v.to(model.device) for k, v in collate(encoded[start:start + batch_size]).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            targets = batch["labels"][:, 1:]
            token_losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                ignore_index=IGNORE_INDEX, reduction="none").reshape(targets.shape)
            counts = (targets != IGNORE_INDEX).sum(1)
            losses += [float(s / n) if n else float("nan") for s, n in zip(token_losses.sum(1), counts)]
    return losses


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

    ways = {"unpacked_float32": dict(per_device_batch_size=1, grad_accum=8, packing=False, bf16=False),
            "packed_float32": dict(per_device_batch_size=8, grad_accum=1, packing=True, bf16=False),
            "packed_bf16": dict(per_device_batch_size=8, grad_accum=1, packing=True, bf16=True)}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for name, settings in ways.items():
            train = dataclasses.replace(typed(cfg.train), **settings)
            store = ArtifactStore(Path(tmp) / name)
            start = time.perf_counter()
            models[name] = finetune(subset, backbone, train, store, {"bench": name})
            seconds = time.perf_counter() - start
            history = store.meta("checkpoints", Path(models[name]).name)["loss_history"]
            out[f"finetune_{name}"] = {"seconds": round(seconds, 1), "losses": [round(h["loss"], 4) for h in history]}
        before = out["finetune_unpacked_float32"]
        for name in list(ways)[1:]:
            row = out[f"finetune_{name}"]
            row["ratio"] = round(before["seconds"] / row["seconds"], 2)
            row["max_step_loss_diff"] = round(max(abs(a - b) for a, b in zip(before["losses"], row["losses"])), 4)
        losses, seconds = {}, {}
        for name, score in (("padded_float32", lambda: padded_response_losses(models["unpacked_float32"], heldout)),
                            *((f"packed_{dtype}", lambda dtype=dtype: response_losses(
                                models["unpacked_float32"], heldout, max_length=512, batch_size=8, dtype=dtype))
                              for dtype in ("float32", "bfloat16"))):
            start = time.perf_counter()
            losses[name] = np.array(score(), dtype=float)
            seconds[name] = time.perf_counter() - start
        for name, values in losses.items():
            diff = values - losses["padded_float32"]
            out[f"heldout_{name}"] = {"seconds": round(seconds[name], 1),
                                      "ratio": round(seconds["padded_float32"] / seconds[name], 2),
                                      "mean": round(float(np.nanmean(values)), 5),
                                      "per_example_abs_diff": {"mean": float(f"{np.nanmean(np.abs(diff)):.2e}"),
                                                               "max": float(f"{np.nanmax(np.abs(diff)):.2e}")}}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
