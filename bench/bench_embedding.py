"""ADG embedding + scoring: selectlab.lm.embedding (batched) against selectlab.lm.reference (the release's way).

Same texts, same model, each method in its own process (so peak memory is its own):
prints examples/s, tokens/s, peak memory, the speed ratio and the largest score difference.

    python bench/bench_embedding.py                       # embedded SmolLM2-135M, 24 Alpaca instructions, K=5
    python bench/bench_embedding.py --n 64 --model /path/to/hf_model --dtype float32
    python bench/bench_embedding.py --n 16 --threads 2 --attn eager    # thread count, attention kernel
    python bench/bench_embedding.py --n 16 --threads 2 --ours-dtype bfloat16 --token-budget 256 1024
                                  # our pass in bf16 (the reference stays fp32) and two batch budgets

Texts: real Alpaca 52K instructions (seeded sample). No sampled answers ship with the repo,
so each instruction's K "answers" are real pool outputs: its own output and the outputs of
the next K-1 records of the sample (real text with the pool's length spread, different per
answer). Pass --samples FILE.jsonl (records of selectlab.lm.sampling: id, answers) to use
sampled answers instead.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def texts(n: int, k: int, seed: int, samples: str | None) -> tuple[list[str], list[list[str]]]:
    from selectlab.infra.paths import data_dir
    from selectlab.pools import load_alpaca
    from selectlab.infra.store import read_jsonl

    pool = load_alpaca(data_dir() / "pools" / "alpaca_52k")
    if samples:
        by_id = {r["id"]: r for r in pool}
        rows = read_jsonl(Path(samples))[:n]
        return [by_id[r["id"]]["instruction"] for r in rows], [r["answers"][:k] for r in rows]
    picked = random.Random(seed).sample(pool, n + k - 1)
    return ([r["instruction"] for r in picked[:n]],
            [[picked[i + j]["output"] for j in range(k)] for i in range(n)])


def model_path(arg: str | None) -> str:
    if arg:
        return arg
    from omegaconf import OmegaConf

    from selectlab.lm.backbone import resolve_backbone
    from selectlab.infra.paths import REPO_ROOT, cache_dir
    from selectlab.infra.store import ArtifactStore

    cfg = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "backbone" / "smollm2_135m.yaml"))
    return resolve_backbone(cfg, ArtifactStore(cache_dir()))


def peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(args) -> dict:
    """One method in this process; writes its result JSON to args.out."""
    import numpy as np
    import torch

    from selectlab.lm.divergence import adg_score, divergence
    from selectlab.config import preset
    from selectlab.lm.embedding import embed_answer_sets, token_weight_table
    from selectlab.lm.models import load_causal_lm, load_tokenizer
    from selectlab.lm.reference import reference_scores

    if args.threads:
        torch.set_num_threads(args.threads)
    instructions, answers = texts(args.n, args.k, args.seed, args.samples)
    tok = load_tokenizer(args.model_path)
    dtype = args.dtype if args.method == "reference" else args.ours_dtype
    model = load_causal_lm(args.model_path, dtype, args.device)
    if args.attn:
        model.set_attn_implementation(args.attn)
    device = str(next(model.parameters()).device)
    layers = tuple(args.layers)
    n_tokens = sum(len(tok(a and f"{i} {a}", add_special_tokens=False)["input_ids"][: args.max_length])
                   for i, ans in zip(instructions, answers) for a in ans)
    base_mb = peak_memory_mb(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if args.method == "reference":
        out = reference_scores(model, tok, instructions, answers, layers=layers, max_length=args.max_length, lam=0.4)
        D, I, s = out["D"], out["I"], out["score"]
    else:
        cfg = preset("embedding", "release", layers=layers, max_length=args.max_length, dtype=dtype,
                     token_budget=args.token_budget[0], prefix_reuse=args.method.startswith("ours_prefix_reuse"))
        emb = embed_answer_sets(model, tok, instructions, answers, cfg, token_weight_table(tok))
        D, I = divergence(emb.answers)
        s = adg_score(D, I, 0.4)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {"method": args.method, "device": device, "dtype": dtype, "seconds": seconds, "examples": len(instructions),
              "texts": len(instructions) * args.k, "tokens": n_tokens, "peak_mb": peak_memory_mb(device),
              "model_loaded_mb": base_mb, "score": np.asarray(s).tolist(), "D": np.asarray(D).tolist(),
              "I": np.asarray(I).tolist(), "threads": torch.get_num_threads(),
              "attn": model.config._attn_implementation}
    Path(args.out).write_text(json.dumps(result))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=24, help="instructions")
    ap.add_argument("--k", type=int, default=5, help="answers per instruction")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="HF model folder (default: the embedded SmolLM2 backbone)")
    ap.add_argument("--samples", default=None, help="sampled answers (records.jsonl of the samples stage)")
    ap.add_argument("--dtype", default="float32", help="the reference's dtype (and ours unless --ours-dtype)")
    ap.add_argument("--ours-dtype", default=None, help="our pass's dtype (e.g. bfloat16; default: --dtype)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--layers", type=int, nargs="+", default=[-4, -3, -2])
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--token-budget", type=int, nargs="+", default=[256],
                    help="padded tokens per forward of our pass; several: one run of each ours method per budget")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--attn", default="", help="attention implementation (sdpa | eager; empty = transformers' default)")
    ap.add_argument("--methods", nargs="+", default=["reference", "ours", "ours_prefix_reuse"])
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--model-path", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.method:
        run_one(args)
        return

    path = model_path(args.model)
    args.ours_dtype = args.ours_dtype or args.dtype
    runs = [(m, b) for m in args.methods for b in ([args.token_budget[0]] if m == "reference" else args.token_budget)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method, budget in runs:
            label = method if len(args.token_budget) == 1 or method == "reference" else f"{method}@{budget}"
            out = Path(tmp) / f"{label}.json"
            cmd = [sys.executable, __file__, "--method", method, "--model-path", path, "--out", str(out),
                   "--token-budget", str(budget)]
            for flag in ("n", "k", "seed", "dtype", "ours_dtype", "max_length", "threads", "attn"):
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            cmd += ["--layers", *map(str, args.layers)]
            if args.device:
                cmd += ["--device", args.device]
            if args.samples:
                cmd += ["--samples", args.samples]
            subprocess.run(cmd, check=True)
            results[label] = json.loads(out.read_text())

    import numpy as np

    first = next(iter(results.values()))
    print(f"model {path}  device {first['device']}  threads {first['threads']}  attention {first['attn']}  "
          f"dtype: reference {args.dtype}, ours {args.ours_dtype}  "
          f"layers {args.layers}  {first['examples']} instructions x K={args.k}  {first['tokens']} text tokens")
    print(f"{'method':<20}{'seconds':>9}{'examples/s':>12}{'texts/s':>9}{'tokens/s':>10}{'peak MB':>9}"
          f"{'after load':>11}")
    for m, r in results.items():
        print(f"{m:<20}{r['seconds']:>9.2f}{r['examples'] / r['seconds']:>12.2f}{r['texts'] / r['seconds']:>9.2f}"
              f"{r['tokens'] / r['seconds']:>10.0f}{r['peak_mb']:>9.0f}{r['model_loaded_mb']:>11.0f}")
    if "reference" in results:
        ref = results["reference"]
        for m, r in results.items():
            if m == "reference":
                continue
            diff = {c: float(np.max(np.abs(np.array(r[c]) - np.array(ref[c])))) for c in ("score", "D", "I")}
            from scipy.stats import spearmanr

            rho = spearmanr(r["score"], ref["score"]).statistic
            print(f"{m}: speed ratio vs reference {ref['seconds'] / r['seconds']:.2f}x; max |diff| "
                  + ", ".join(f"{c} {v:.2e}" for c, v in diff.items()) + f"; score rank correlation {rho:.4f}")


if __name__ == "__main__":
    main()
