"""SuperFiltering.D's facility location at the release's size: selectlab.selectors.facility_location against
the release's call (tianyi-lab/Superfiltering ``do_fla.py``), on the same real embeddings.

The release hands submodlib the data (``FacilityLocationFunction(n, mode="dense", data=X,
metric="euclidean")``), so submodlib builds the n x n kernel in C++ from ``X.tolist()``; selectlab
builds the same kernel exp(-||x_i - x_j|| / d) with numpy and passes it as ``sijs``. Both then run
submodlib's LazyGreedy. Each method runs in its own process (its own peak memory); printed: kernel
and greedy seconds, peak RSS, the speed ratio and how many picks agree.

    python bench/bench_facility_location.py                    # 10,400 -> 1,040, as the release script
    python bench/bench_facility_location.py --n 2000 --budget 200

Embeddings: all-MiniLM-L6-v2 (512 tokens, unit length) of "instruction\\ninput\\n" + output of a
seeded sample of real Alpaca 52K records, as the fla selector embeds them; cached in the artifact
store ($SELECTLAB_CACHE), so a rerun times only the selection.
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


def embeddings(n: int, seed: int) -> Path:
    """The (n, 384) MiniLM embeddings of n seeded Alpaca records, saved to a temporary .npy."""
    import numpy as np

    from selectlab.selectors.diverse import sbert_embeddings
    from selectlab.selectors.facility_location import release_text
    from selectlab.infra.paths import cache_dir, data_dir
    from selectlab.pools import load_alpaca
    from selectlab.infra.store import ArtifactStore

    pool = load_alpaca(data_dir() / "pools" / "alpaca_52k")
    sample = random.Random(seed).sample(pool, n)
    t0 = time.perf_counter()
    emb = sbert_embeddings([release_text(r) for r in sample], ArtifactStore(cache_dir()), 64, max_seq_length=512)
    print(f"MiniLM embeddings of {n} Alpaca records: {time.perf_counter() - t0:.1f} s (0 when cached)", flush=True)
    path = Path(tempfile.mkdtemp(prefix="bench_fla_")) / "x.npy"
    np.save(path, np.asarray(emb, dtype=np.float32))
    return path


def run_one(method: str, x_path: str, budget: int) -> dict:
    import numpy as np
    from submodlib.functions.facilityLocation import FacilityLocationFunction

    from selectlab.selectors.facility_location import euclidean_similarity, facility_location

    x = np.load(x_path)
    t0 = time.perf_counter()
    if method == "selectlab":
        kernel = euclidean_similarity(x)
        t1 = time.perf_counter()
        picks, _ = facility_location(kernel, budget)
    else:  # do_fla.py, line for line
        obj = FacilityLocationFunction(n=len(x), mode="dense", data=x, metric="euclidean")
        t1 = time.perf_counter()
        greedy = obj.maximize(budget=budget, optimizer="LazyGreedy", stopIfZeroGain=False,
                              stopIfNegativeGain=False, verbose=False)
        picks = [int(i) for i, _ in greedy]
    t2 = time.perf_counter()
    return {"kernel_s": t1 - t0, "greedy_s": t2 - t1, "total_s": t2 - t0, "picks": picks,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10400, help="ground set (the release: 10,400 IFD-filtered)")
    ap.add_argument("--budget", type=int, default=1040)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one", choices=["selectlab", "release"], help=argparse.SUPPRESS)
    ap.add_argument("--x", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.x, args.budget)))
        return
    x_path = embeddings(args.n, args.seed)
    results = {}
    for method in ("release", "selectlab"):
        out = subprocess.run([sys.executable, __file__, "--one", method, "--x", str(x_path), "--budget",
                              str(args.budget)], check=True, capture_output=True, text=True).stdout
        results[method] = json.loads(out.strip().splitlines()[-1])
        r = results[method]
        print(f"{method:9s}: kernel {r['kernel_s']:7.1f} s  greedy {r['greedy_s']:7.1f} s  total {r['total_s']:7.1f} s"
              f"  peak RSS {r['peak_rss_gb']:.2f} GB", flush=True)
    rel, ours = results["release"], results["selectlab"]
    same_prefix = next((i for i, (a, b) in enumerate(zip(rel["picks"], ours["picks"])) if a != b), len(ours["picks"]))
    print(f"{args.n} -> {args.budget}: selectlab / release speed {rel['total_s'] / ours['total_s']:.2f}x "
          f"(kernel {rel['kernel_s'] / ours['kernel_s']:.2f}x); picks in common {len(set(rel['picks']) & set(ours['picks']))}"
          f" of {args.budget}, identical order for the first {same_prefix}")


if __name__ == "__main__":
    main()
