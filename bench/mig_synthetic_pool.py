"""Alpaca 52K with synthetic MIG-style annotations, to time MIG's release path (InsTag tags +
DEITA scores read from the pool) where no annotated pool is shipped. Not a quality claim:
tags = up to 4 distinct instruction words among the 2,000 most frequent non-stop words;
quality / complexity = small deterministic numbers from the text lengths.

    python bench/mig_synthetic_pool.py /tmp/alpaca_annotated.jsonl
    python src/run.py scorer=mig selector=mig_minilm selector.valid_tags=all pool=json pool.path=/tmp/alpaca_annotated.jsonl pool.limit=10000 selection.budget=1000
"""
from __future__ import annotations

import collections
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from selectlab.infra.paths import data_dir  # noqa: E402
from selectlab.pools import load_alpaca  # noqa: E402

STOP = set("a an the of to in for and or is are be on with by as this that it from at your you what how which "
           "following given write make give create describe explain find list".split())


def main(out: str) -> None:
    records = load_alpaca(data_dir() / "pools" / "alpaca_52k")
    words = [[w for w in re.findall(r"[a-z]+", r["instruction"].lower()) if w not in STOP and len(w) > 2]
             for r in records]
    common = {w for w, _ in collections.Counter(w for ws in words for w in set(ws)).most_common(2000)}
    with open(out, "w") as f:
        for r, ws in zip(records, words):
            tags = list(dict.fromkeys(w for w in ws if w in common))[:4]
            deita = {"quality_scores": [2.0 + len(r["output"]) % 4], "complexity_scores": [1.0 + len(r["instruction"]) % 3]}
            f.write(json.dumps({**{k: r[k] for k in ("id", "instruction", "input", "output")},
                                "annotation": {"instag": {"content": tags}, "deita": deita}}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
