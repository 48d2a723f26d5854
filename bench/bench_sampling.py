"""ADG answer sampling: our vLLM sampler vs transformers ``generate``, on the same real prompts.

Three ways to draw K answers for the same Alpaca 52K instructions with the embedded
SmolLM2-135M backbone, measured in this one process:
  vllm_*       selectlab.lm.sampling with sampler=vllm, one run per --vllm-seeding x --vllm-dtype
               (the engine is started and kept before the timed run; its start is printed apart)
  hf_bs1       the authors' style: one prompt per ``generate`` call, num_return_sequences=K
  hf_batched   selectlab.lm.sampling with sampler=hf (left-padded batches)
It prints generated tokens/s, examples/s, the peak memory of this process and its children
(vLLM's engine and workers are child processes), and the speed ratios.

    python bench/bench_sampling.py                            # 32 prompts, K=5, 256 new tokens
    python bench/bench_sampling.py --prompts 8 --max-new-tokens 64 --bs1-prompts 2
The bs1 loop runs on ``--bs1-prompts`` of the prompts only (its rate per token does not
depend on how many prompts it runs, and the full set takes long on CPU).

Engine start-up knobs (``--startup``), each in a fresh process so nothing is warm that a
new run would not have: ``compiled_cold`` (vLLM's default torch.compile/inductor path with
an empty compile cache, as on a fresh machine), ``compiled_warm`` (the same cache again: a
second run on one machine), ``eager`` (``sampler.enforce_eager=true``: no compilation).
Each prints engine start apart from sampling, and whether its answers are byte-identical
to the first variant's:

    python bench/bench_sampling.py --prompts 8 --max-new-tokens 128 --skip vllm hf_bs1 \
        --startup compiled_cold compiled_warm eager
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from omegaconf import OmegaConf

from selectlab.lm import sampling
from selectlab.lm.backbone import resolve_backbone
from selectlab.infra.paths import cache_dir, data_dir
from selectlab.pools import load_pool
from selectlab.infra.store import ArtifactStore

REPO = Path(__file__).resolve().parents[1]


class PeakRSS:
    """Samples the RSS of this process plus all its children every 50 ms."""

    def __init__(self):
        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()

    def tree_rss(self) -> int:
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def __enter__(self):
        self.base = self.peak = self.tree_rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.tree_rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def sampler_cfg(name: str, args, **overrides):
    cfg = OmegaConf.load(REPO / "conf" / "sampler" / f"{name}.yaml")
    cfg.merge_with({"k": args.k, "max_new_tokens": args.max_new_tokens, **overrides})
    return cfg


def measure(label: str, run, rows: list) -> dict:
    gc.collect()
    with PeakRSS() as mem:
        start = time.perf_counter()
        samples = run()
        seconds = time.perf_counter() - start
    tokens = sum(sum(r["answer_tokens"]) for r in samples)
    result = {"label": label, "seconds": seconds, "prompts": len(samples), "tokens": tokens,
              "tokens_per_s": tokens / seconds, "examples_per_s": len(samples) / seconds,
              "peak_rss_gib": mem.peak / 2**30, "peak_increase_gib": (mem.peak - mem.base) / 2**30}
    rows.append(result)
    print(f"{label:>11}: {len(samples)} prompts x {samples[0]['params']['k']} answers, {tokens} tokens "
          f"in {seconds:.1f}s = {result['tokens_per_s']:.1f} tok/s, {result['examples_per_s']:.3f} ex/s; "
          f"peak RSS {result['peak_rss_gib']:.2f} GiB (+{result['peak_increase_gib']:.2f})", flush=True)
    return result


# name -> (sampler overrides, compile cache: "fresh" | "reuse" the previous variant's)
STARTUP_VARIANTS = {"compiled_cold": ({"enforce_eager": False}, "fresh"),
                    "compiled_warm": ({"enforce_eager": False}, "reuse"),
                    "eager": ({"enforce_eager": True}, "fresh")}


def startup_child(args) -> None:
    """One variant in this (fresh) process: engine start with one prompt, then the timed sampling."""
    overrides, _ = STARTUP_VARIANTS[args.startup[0]]
    backbone = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "backbone" / "smollm2_135m.yaml"))
    path = resolve_backbone(backbone, ArtifactStore(cache_dir()))
    records = load_pool({"name": "alpaca", "loader": "alpaca", "path": str(data_dir() / "pools" / "alpaca_52k"),
                         "limit": args.prompts, "sample": "random"}, seed=args.seed).records
    cfg = sampler_cfg("vllm", args, batch_size=len(records), dtype=args.vllm_dtype[0], **overrides)
    fresh = lambda: ArtifactStore(tempfile.mkdtemp(prefix="bench_sampling_"))
    start = time.perf_counter()
    sampling.sample_answers(records[:1], path, cfg, fresh(), args.seed, keep_engine=True)
    startup = time.perf_counter() - start
    start = time.perf_counter()
    samples = sampling.sample_answers(records, path, cfg, fresh(), args.seed, keep_engine=True)
    seconds = time.perf_counter() - start
    sampling.shutdown_engines()
    tokens = sum(sum(r["answer_tokens"]) for r in samples)
    Path(args.variant_out).write_text(json.dumps({
        "startup_s": startup, "seconds": seconds, "tokens": tokens, "prompts": len(samples),
        "answers": [r["answers"] for r in samples]}))


def startup_variants(args) -> list[dict]:
    """Run each --startup variant in its own process; print start-up, rate and answer identity."""
    rows, first = [], None
    cache_root = None
    with tempfile.TemporaryDirectory(prefix="bench_vllm_cache_") as caches:
        for n, name in enumerate(args.startup):
            _, cache = STARTUP_VARIANTS[name]
            if cache == "fresh" or cache_root is None:
                cache_root = str(Path(caches) / f"cache{n}")
            out = Path(caches) / f"{name}.json"
            cmd = [sys.executable, __file__, "--variant-out", str(out), "--startup", name, "--prompts", str(args.prompts),
                   "--k", str(args.k), "--max-new-tokens", str(args.max_new_tokens), "--seed", str(args.seed),
                   "--vllm-dtype", args.vllm_dtype[0]]
            subprocess.run(cmd, check=True, env={**os.environ, "VLLM_CACHE_ROOT": cache_root})
            r = json.loads(out.read_text())
            first = first or r
            same = r["answers"] == first["answers"]
            row = {"label": f"vllm_{name}", "seconds": r["seconds"], "prompts": r["prompts"], "tokens": r["tokens"],
                   "tokens_per_s": r["tokens"] / r["seconds"], "startup_s": r["startup_s"], "same_answers": same}
            print(f"{row['label']:>20}: engine start + 1 prompt {r['startup_s']:.1f}s; {r['tokens']} tokens in "
                  f"{r['seconds']:.1f}s = {row['tokens_per_s']:.1f} tok/s; start + sampling "
                  f"{r['startup_s'] + r['seconds']:.1f}s; answers {'byte-identical to' if same else 'DIFFER from'} "
                  f"{args.startup[0]}", flush=True)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--bs1-prompts", type=int, default=4, help="prompts for the batch-size-1 loop (0 = skip)")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--hf-batch-size", type=int, default=32)
    ap.add_argument("--hf-dtype", default="float32", help="this CPU has no bf16 units, so fp32 is HF's fastest")
    ap.add_argument("--vllm-dtype", nargs="+", default=["float32"],
                    help="one vLLM run per dtype (float32 = the embedded backbone's, the default; bfloat16 "
                         "is slower on CPUs without bf16 units)")
    ap.add_argument("--vllm-reserved-cores", type=int, default=0,
                    help="sampler.cpu_reserved_cores (CPU engine; as conf/sampler/vllm.yaml: 0; -1 = vLLM's own default)")
    ap.add_argument("--vllm-seeding", nargs="+", default=["request"], choices=["request", "engine"],
                    help="one vLLM run per sampler.seeding (request = the default)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["vllm", "hf_bs1", "hf_batched"])
    ap.add_argument("--startup", nargs="*", default=[], choices=list(STARTUP_VARIANTS),
                    help="engine start-up variants, each in a fresh process (see the module doc)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant-out", help=argparse.SUPPRESS)  # child process: one start-up variant
    args = ap.parse_args()
    if args.variant_out:
        startup_child(args)
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    backbone = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "backbone" / "smollm2_135m.yaml"))
    path = resolve_backbone(backbone, ArtifactStore(cache_dir()))
    pool = load_pool({"name": "alpaca", "loader": "alpaca", "path": str(data_dir() / "pools" / "alpaca_52k"),
                      "limit": args.prompts, "sample": "random"}, seed=args.seed)
    records = pool.records
    print(f"backbone {path}\n{len(records)} Alpaca 52K prompts (seeded sample), K={args.k}, "
          f"max_new_tokens={args.max_new_tokens}, prompt cut 80 tokens; cores={os.cpu_count()}, "
          f"load average before: {os.getloadavg()}", flush=True)
    rows: list[dict] = []
    fresh = lambda: ArtifactStore(tempfile.mkdtemp(prefix="bench_sampling_"))  # never reuse stored answers

    if "hf_bs1" not in args.skip and args.bs1_prompts:
        cfg = sampler_cfg("hf", args, batch_size=1, dtype=args.hf_dtype)
        measure("hf_bs1", lambda: sampling.sample_answers(records[: args.bs1_prompts], path, cfg, fresh(), args.seed),
                rows)
    if "hf_batched" not in args.skip:
        cfg = sampler_cfg("hf", args, batch_size=args.hf_batch_size, dtype=args.hf_dtype)
        measure("hf_batched", lambda: sampling.sample_answers(records, path, cfg, fresh(), args.seed), rows)
    if "vllm" not in args.skip:
        for dtype in args.vllm_dtype:
            for seeding in args.vllm_seeding:
                cfg = sampler_cfg("vllm", args, batch_size=len(records), dtype=dtype, seeding=seeding,
                                  cpu_reserved_cores=None if args.vllm_reserved_cores < 0 else args.vllm_reserved_cores)
                label = f"vllm_{seeding}_{dtype}"
                start = time.perf_counter()  # engine start, kept for the timed run (not part of its rate)
                sampling.sample_answers(records[:1], path, cfg, fresh(), args.seed, keep_engine=True)
                print(f"{label}: engine start + 1 prompt {time.perf_counter() - start:.1f}s", flush=True)
                try:
                    measure(label, lambda: sampling.sample_answers(records, path, cfg, fresh(), args.seed,
                                                                   keep_engine=True), rows)
                finally:
                    sampling.shutdown_engines()

    if args.startup:
        rows += startup_variants(args)

    by = {r["label"]: r for r in rows}
    for a in [label for label in by if label.startswith("vllm")] + ["hf_batched"]:
        for b in ("hf_batched", "hf_bs1"):
            if a != b and a in by and b in by:
                print(f"tokens/s ratio {a} / {b}: {by[a]['tokens_per_s'] / by[b]['tokens_per_s']:.2f}x")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":  # vLLM spawns its workers
    main()
