"""Time the components that size ``experiment=sweep_cpu_replication`` on this machine: one fine-tune
of the embedded SmolLM2 on a budget-sized random Alpaca subset, one held-out response-loss
eval, and full zero-shot lm-eval tasks on the fine-tuned model. Prints seconds per component
and a JSON line; run it alone (under the heavy lock on a shared machine):

    flock /tmp/selectlab-heavy.lock python bench/time_replication_components.py
    python bench/time_replication_components.py --tasks arc_easy arc_challenge --pool 200 --budget 38
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

TASKS = {  # zero-shot, full, as lm-eval's own tasks report them
    "arc_easy": {"lm_eval": "selectlab_arc_easy", "num_fewshot": 0, "metric": "acc_norm", "filter": "none"},
    "arc_challenge": {"lm_eval": "selectlab_arc_challenge", "num_fewshot": 0, "metric": "acc_norm", "filter": "none"},
    "truthfulqa_mc2": {"lm_eval": "selectlab_truthfulqa_mc2", "num_fewshot": 0, "metric": "acc", "filter": "none"},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pool", type=int, default=200)
    parser.add_argument("--budget", type=int, default=38)
    parser.add_argument("--heldout", type=int, default=200)
    parser.add_argument("--tasks", nargs="*", default=["arc_easy"], choices=sorted(TASKS))
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import selectlab.config  # noqa: F401  (resolvers)
    from selectlab.lm.backbone import resolve_backbone
    from selectlab.lm.evaluate import evaluate
    from selectlab.lm.heldout import heldout_records
    from selectlab.pools import load_pool
    from selectlab.infra.store import ArtifactStore
    from selectlab.lm.train import finetune, response_losses
    from selectlab.schema import typed

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=sweep_cpu_replication", "run_dir=/tmp/unused",
                                           f"pool.limit={args.pool}", f"heldout.limit={args.heldout}"])
    plain = OmegaConf.to_container(cfg, resolve=True)
    store = ArtifactStore(Path(plain["cache_dir"]))
    times = {}

    started = time.perf_counter()
    backbone = resolve_backbone(plain["backbone"], store)
    times["backbone_s"] = time.perf_counter() - started
    print(f"backbone ready: {times['backbone_s']:.1f} s", flush=True)
    pool = load_pool(plain["pool"], seed=int(cfg.seed))
    subset = random.Random(0).sample(pool.records, args.budget)
    train_cfg = dataclasses.replace(typed(cfg.train), seed=12345)  # a key no run uses: always trains
    started = time.perf_counter()
    model = finetune(subset, backbone, train_cfg, store, {"bench": time.time()})
    times["finetune_s"] = time.perf_counter() - started
    print(f"fine-tune on {len(subset)} examples: {times['finetune_s']:.1f} s", flush=True)

    heldout = heldout_records(plain["heldout"], pool.records, int(cfg.seed))
    started = time.perf_counter()
    losses = response_losses(model, heldout, template=train_cfg.template, max_length=train_cfg.max_length)
    times["heldout_loss_s"] = time.perf_counter() - started
    print(f"held-out loss on {len(heldout)} examples: {times['heldout_loss_s']:.1f} s", flush=True)

    ev = {**plain["eval"], "groups": {}, "batch_size": args.batch_size}
    scores = {}
    for key in args.tasks:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            result = evaluate(model, {"eval": {**ev, "tasks": {key: TASKS[key]}}}, tmp)
        times[f"{key}_s"] = time.perf_counter() - started
        print(f"{key} (full, zero-shot): {times[key + '_s']:.1f} s, {result['tasks'][key]['n_samples']} docs", flush=True)
        scores[key] = result["metrics"][key]
    out = {"pool": args.pool, "budget": args.budget, "n_heldout": len(losses),
           "heldout_loss": sum(l for l in losses if l is not None) / len(losses), "scores": scores,
           **{k: round(v, 1) for k, v in times.items()}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
