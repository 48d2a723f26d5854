"""The cost of sharding ADG's sampling and embedding: one unsharded run vs N shard jobs + a merge.

Every run is a separate ``python src/run.py`` process (as cluster jobs are), each on its own
fresh artifact store, on the embedded backbone (converted once, then given as backbone.path):
  unsharded   scorer=adg on the slice, start to subset
  shards      shard.count=N shard.index=i, i = 0..N-1, in rounds: a shard job stops at the
              first stage that misses other shards' batches (round 1 samples, round 2 embeds)
  merge       the same command without shard.index: reuses every batch, scores and selects
It prints each job's wall time, the machine time of all sharded jobs vs the unsharded run
(the overhead: fixed per-job costs such as interpreter start, model load and engine start),
the critical path if the shards of a round run in parallel, and checks that the merged
scores equal the unsharded ones.

    python bench/bench_sharding.py                       # 32 prompts, K=5, 64 new tokens, 2 shards
    python bench/bench_sharding.py --prompts 64 --shards 4 --sampler hf
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from selectlab.lm.backbone import resolve_backbone
from selectlab.infra.paths import cache_dir
from selectlab.infra.store import ArtifactStore, read_jsonl

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], cache: Path, run_dir: Path) -> tuple[float, dict]:
    env = {**os.environ, "SELECTLAB_CACHE": str(cache)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "src" / "run.py"), *args, f"hydra.run.dir={run_dir}"],
                          env=env, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"run failed ({' '.join(args)}):\n{proc.stderr[-3000:]}")
    return seconds, json.loads((run_dir / "manifest.json").read_text())


def scores_file(cache: Path, manifest: dict) -> Path:
    return cache / "scores" / manifest["artifacts"]["scores"] / "scores.jsonl"


def max_score_diff(a: Path, b: Path) -> float:
    x, y = ({r["id"]: r["score"] for r in read_jsonl(p)} for p in (a, b))
    diffs = [abs(x[i] - y[i]) for i in x if x[i] is not None and y.get(i) is not None]
    return max(diffs, default=0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8, help="sampling and embedding batch (the shard unit)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--sampler", default="vllm", choices=["vllm", "hf"])
    args = ap.parse_args()

    backbone = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "backbone" / "smollm2_135m.yaml"))
    path = resolve_backbone(backbone, ArtifactStore(cache_dir()))
    common = ["scorer=adg", "pool=alpaca", f"pool.limit={args.prompts}", f"sampler={args.sampler}",
              f"sampler.max_new_tokens={args.max_new_tokens}", f"sampler.batch_size={args.batch_size}",
              f"scorer.batch_size={args.batch_size}", f"backbone.path={path}", "logger=none",
              f"selection.budget={max(1, args.prompts // 4)}"]
    print(f"{args.prompts} Alpaca prompts, K=5, {args.max_new_tokens} new tokens, sampler={args.sampler}, "
          f"batches of {args.batch_size}, {args.shards} shards; cores={os.cpu_count()}, "
          f"load average before: {os.getloadavg()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench_sharding_"))

    plain_s, plain = run(common, work / "cache_plain", work / "plain")
    print(f"unsharded: {plain_s:.1f}s", flush=True)

    cache, total, critical, rnd = work / "cache_sharded", 0.0, 0.0, 0
    while True:
        rnd += 1
        walls, incomplete = [], 0
        for i in range(args.shards):
            s, m = run([*common, f"shard.count={args.shards}", f"shard.index={i}"], cache,
                       work / f"round{rnd}_shard{i}")
            walls.append(s)
            incomplete += "shard_incomplete" in m
            stopped = m.get("shard_incomplete", {}).get("stage", "none (all stages done)")
            print(f"round {rnd} shard {i}: {s:.1f}s, stopped at {stopped}", flush=True)
        total, critical = total + sum(walls), critical + max(walls)
        if not incomplete or rnd > 4:
            break
    merge_s, merged = run(common, cache, work / "merge")
    total, critical = total + merge_s, critical + merge_s
    print(f"merge: {merge_s:.1f}s")
    a, b = scores_file(work / "cache_plain", plain), scores_file(cache, merged)
    same = a.read_bytes() == b.read_bytes()
    print(f"merged scores equal the unsharded scores byte for byte: {same} "
          f"(max |score diff| {max_score_diff(a, b):.2e})")
    print(f"machine time, all sharded jobs / unsharded: {total:.1f}s / {plain_s:.1f}s = {total / plain_s:.2f}x "
          f"(overhead {total - plain_s:+.1f}s)")
    print(f"critical path with each round's shards in parallel: {critical:.1f}s = {critical / plain_s:.2f}x unsharded")
    print(f"load average after: {os.getloadavg()}")
    if not same:  # per-request seeds make answers independent of batching; a difference is numerics or a bug
        raise SystemExit(1)


if __name__ == "__main__":
    main()
