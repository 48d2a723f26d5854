"""What selecting from 52K examples costs, scorer by scorer, next to the ADG paper's table.

Every scorer runs end to end (pool -> score -> select, through ``src/run.py`` as a user
would, each in its own process, all on the same seeded Alpaca 52K slice with the embedded
SmolLM2-135M backbone) in one artifact cache whose backbone conversion is done beforehand.
The time of a scorer is its run's ``scores`` + ``subsets`` stage seconds (manifest.json; the
scores stage includes ADG's sampling and embedding); it is extrapolated linearly to 52,002
examples. Fixed costs (vLLM's engine start, model loads) are in the per-example rate, so the
52K figure is an upper bound for this machine.

    python bench/bench_selection_cost.py --n 16                      # every scorer
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

REPO = Path(__file__).resolve().parents[1]
POOL_ROWS = 52002
SCORERS = ["random", "length", "perplexity", "ifd", "superfiltering", "instructmining", "adg"]
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
            "stages": {e["stage"]: round(e["seconds"], 2) for e in manifest["stages"]},
            "hours_52k": selection / n * POOL_ROWS / 3600}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16, help="examples in the slice (pool.limit)")
    ap.add_argument("--scorers", nargs="+", default=SCORERS)
    ap.add_argument("--out", default=None, help="JSON of the results")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (e.g. sampler.max_new_tokens=128)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_selection_cost_") as tmp:
        cache = Path(tmp) / "cache"
        # the backbone conversion (once per cache, ~30 s) is not part of any scorer's cost
        subprocess.run([sys.executable, "-c", "from omegaconf import OmegaConf; from selectlab.backbone import "
                        "resolve_backbone; from selectlab.store import ArtifactStore; import sys; resolve_backbone("
                        f"OmegaConf.to_container(OmegaConf.load('{REPO}/conf/backbone/smollm2_135m.yaml')), "
                        f"ArtifactStore('{cache}'))"], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        rows = []
        for scorer in args.scorers:
            row = run_scorer(scorer, args.n, cache, Path(tmp) / f"run_{scorer}", args.overrides)
            rows.append(row)
            print(f"{scorer:>15}: {row['selection_s']:8.1f} s for {args.n} examples "
                  f"({row['selection_s'] / args.n:.2f} s/example) -> {row['hours_52k']:8.2f} h for 52K on this "
                  f"machine; stages {row['stages']}", flush=True)
    print(f"\n| scorer | {args.n} examples here (s) | 52K here, linear (h) | paper, 52K on 4 GPUs (h) |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        paper = PAPER_HOURS_4GPU.get(row["scorer"])
        print(f"| {row['scorer']} | {row['selection_s']:.1f} | {row['hours_52k']:.2f} | {paper if paper else '-'} |")
    print(f"| mig | not implemented | - | {PAPER_HOURS_4GPU['mig']} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"n": args.n, "overrides": args.overrides, "rows": rows,
                                              "cpu_count": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
