"""What selecting from 52K examples costs, scorer by scorer, next to the ADG paper's table.

Every scorer runs end to end (pool -> score -> select, through ``src/run.py`` as a user
would, each in its own process, all on the same seeded Alpaca 52K slice with the embedded
SmolLM2-135M backbone) in one artifact cache whose backbone conversion is done beforehand.
The time of a scorer is its run's ``scores`` + ``subsets`` stage seconds (manifest.json; the
scores stage includes ADG's sampling and embedding). With one slice size it is extrapolated
linearly to 52,002 examples, fixed costs (vLLM's engine start, model loads) included in the
per-example rate, so that figure is an upper bound. With two sizes (``--n 16 64``) each scorer's
time is fitted as fixed + per-example cost and the 52K figure is fixed + 52,002 x per-example.
Selection is at the configured budget ratio; greedy selectors (ZIP, MIG, DEITA, facility
location) are not linear in the pool, so their 52K figures are indications only.

    python bench/bench_selection_cost.py --n 16                      # every scorer
    python bench/bench_selection_cost.py --n 16 64 --out bench/results/selection_cost.json
    python bench/bench_selection_cost.py --n 16 --scorers ifd length

The paper (ADG, 52K Alpaca-GPT4, LLaMA3-8B, 4 GPUs): ADG 1.78 h, SuperFiltering 1.05 h, MIG 3.92 h.
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
POOL_ROWS = 52002
SCORERS = ["random", "length", "perplexity", "ifd", "superfiltering", "superfiltering_d", "instructmining",
           "zip", "mig_offline", "deita_judge", "adg"]
PAPER_HOURS_4GPU = {"adg": 1.78, "superfiltering": 1.05, "mig": 3.92}


def run_scorer(scorer: str, n: int, cache: Path, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, str(REPO / "src" / "run.py"), f"scorer={scorer}", f"pool.limit={n}", "logger=none",
           f"hydra.run.dir={out}", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "SELECTLAB_CACHE": str(cache)},
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    manifest = json.loads((out / "manifest.json").read_text())
    stages = {e["stage"]: e for e in manifest["stages"]}
    selection = sum(stages[s]["seconds"] for s in ("scores", "subsets") if s in stages)
    return {"scorer": scorer, "n": n, "selection_s": selection, "process_wall_s": wall,
            "stages": {e["stage"]: round(e["seconds"], 2) for e in manifest["stages"]}}


def extrapolate(runs: list[dict]) -> dict:
    """52K hours from one size (linear through 0) or two (fixed + per-example, least squares)."""
    if len(runs) == 1:
        per_example, fixed = runs[0]["selection_s"] / runs[0]["n"], 0.0
    else:
        per_example, fixed = np.polyfit([r["n"] for r in runs], [r["selection_s"] for r in runs], 1)
        per_example, fixed = max(per_example, 0.0), max(fixed, 0.0)
    return {"fixed_s": fixed, "per_example_s": per_example, "hours_52k": (fixed + per_example * POOL_ROWS) / 3600}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[16], help="slice size(s) (pool.limit); two fit fixed + per-example")
    ap.add_argument("--scorers", nargs="+", default=SCORERS)
    ap.add_argument("--out", default=None, help="JSON of the results")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (e.g. sampler.max_new_tokens=128)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_selection_cost_") as tmp:
        cache = Path(tmp) / "cache"
        # the backbone conversion (once per cache, ~30 s) is not part of any scorer's cost
        subprocess.run([sys.executable, "-c", "from omegaconf import OmegaConf; from selectlab.lm.backbone import "
                        "resolve_backbone; from selectlab.infra.store import ArtifactStore; import sys; resolve_backbone("
                        f"OmegaConf.to_container(OmegaConf.load('{REPO}/conf/backbone/smollm2_135m.yaml')), "
                        f"ArtifactStore('{cache}'))"], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        rows = []
        for scorer in args.scorers:
            runs = [run_scorer(scorer, n, cache, Path(tmp) / f"run_{scorer}_{n}", args.overrides) for n in args.n]
            row = {"scorer": scorer, "runs": runs, **extrapolate(runs)}
            rows.append(row)
            sizes = ", ".join(f"{r['n']}: {r['selection_s']:.1f} s" for r in runs)
            print(f"{scorer:>16}: {sizes} -> fixed {row['fixed_s']:.1f} s + {row['per_example_s']:.3f} s/example "
                  f"-> {row['hours_52k']:.2f} h for 52K on this machine; stages {runs[-1]['stages']}", flush=True)
    sizes = " / ".join(str(n) for n in args.n)
    print(f"\n| scorer | {sizes} examples here (s) | fixed (s) | per example (s) | 52K here (h) | paper, 52K on 4 GPUs (h) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        paper = PAPER_HOURS_4GPU.get(row["scorer"].removesuffix("_offline"), "-")
        secs = " / ".join(f"{r['selection_s']:.1f}" for r in row["runs"])
        print(f"| {row['scorer']} | {secs} | {row['fixed_s']:.1f} | {row['per_example_s']:.3f} | {row['hours_52k']:.2f} | {paper} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"n": args.n, "overrides": args.overrides, "rows": rows,
                                              "cpu_count": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
