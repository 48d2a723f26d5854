"""The judge's expected 1-6 rating (DEITA's complexity and quality prompts; InstructMining's judge
reward): selectlab's ``prompt_ratings`` against the release's way, in one process, same prompts.

The release (hkust-nlp/deita ``Scorer.infer_score``) rates one prompt at a time with
``model.generate(max_new_tokens=2, output_scores=True)`` and reads the first step's scores.
selectlab batches prompts of similar length, computes vocabulary logits only at each prompt's
last token, and runs the token prefix all prompts share (template + chat system turn) once,
reusing its key/value cache. Printed: examples/s for the release's loop, for selectlab without
and with the shared prefix, the speed ratios, and the largest rating difference.

    python bench/bench_judge.py                      # embedded SmolLM2-135M, 48 Alpaca records, both axes
    python bench/bench_judge.py --n 128 --batch-size 8 --model /path/to/hf_model

Prompts: DEITA's released templates through the backbone's chat template, as ``scorer=deita_judge``.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_embedding import model_path  # noqa: E402  (the embedded backbone, converted once per cache)


def release_ratings(model, tok, prompts, digits) -> list[float]:
    """Scorer.infer_score, line for line (its tokenizer.encode adds special tokens; here the chat
    text already has them, as in selectlab)."""
    import numpy as np
    import torch

    out = []
    for prompt in prompts:
        input_ids = tok.encode(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(input_ids, max_new_tokens=2, num_return_sequences=1, return_dict_in_generate=True,
                                 output_scores=True, do_sample=False, pad_token_id=tok.pad_token_id)
        logits = gen.scores[0][0][digits].double().numpy()
        p = np.exp(logits - logits.max())
        out.append(float((p / p.sum() * np.arange(1, 7)).sum()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--model", help="Hugging Face model folder (default: the embedded SmolLM2-135M)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import numpy as np
    import torch
    import yaml

    from selectlab.instructmining import indicators as ind
    from selectlab.lm.models import load_causal_lm, load_tokenizer
    from selectlab.infra.paths import REPO_ROOT, data_dir
    from selectlab.pools import load_alpaca

    path = model_path(args.model)
    model, tok = load_causal_lm(path, "float32", "cpu"), load_tokenizer(path, "right")
    model.generation_config.repetition_penalty = None  # the first step's scores = raw logits, as selectlab reads
    templates = yaml.safe_load((REPO_ROOT / "conf" / "scorer" / "deita.yaml").read_text())
    records = random.Random(args.seed).sample(load_alpaca(data_dir() / "pools" / "alpaca_52k"), args.n)
    digits = ind.digit_token_ids(tok)
    print(f"{args.n} Alpaca records, {path}, torch threads {torch.get_num_threads()}, batch {args.batch_size}")
    totals = {"release": 0.0, "batched": 0.0, "shared prefix": 0.0}
    for axis in ("complexity", "quality"):
        prompts = [ind.judge_prompt(r, templates[f"{axis}_template"], tok, True) for r in records]
        ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
        runs = {}
        for name, rate in (
                ("release", lambda: release_ratings(model, tok, prompts, digits)),
                ("batched", lambda: ind.prompt_ratings(model, tok, prompts, digits, args.batch_size, False, False)),
                ("shared prefix", lambda: ind.prompt_ratings(model, tok, prompts, digits, args.batch_size, False))):
            t0 = time.perf_counter()
            runs[name] = np.asarray(rate())
            totals[name] += time.perf_counter() - t0
        diff = max(np.abs(runs[n] - runs["release"]).max() for n in runs)
        print(f"{axis:10s}: {np.mean([len(x) for x in ids]):.0f} tokens per prompt, "
              f"{ind.shared_prefix_length(ids)} shared; largest rating difference vs the release {diff:.2e}")
    for name, seconds in totals.items():
        print(f"{name:14s}: {2 * args.n / seconds:6.2f} prompts/s ({seconds:.1f} s)"
              f"  {totals['release'] / seconds:.2f}x the release's loop")
    print(f"shared prefix vs batched without it: {totals['batched'] / totals['shared prefix']:.2f}x")


if __name__ == "__main__":
    main()
