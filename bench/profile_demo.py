"""Where `make demo`'s seconds go: each part of its work timed in this one process.

`make demo` is ``src/run.py scorer=adg pool=alpaca``: 32 Alpaca prompts, K = 5 answers of at most 256
tokens sampled by vLLM from the embedded SmolLM2-135M, each answer embedded from the backbone's hidden
states, the release's bin embedding, binwise selection. This script does the same work with the same
library functions and config (composed as the run composes it) on a fresh artifact store, and times:

  startup     Python imports (torch, transformers, vLLM), config, pool, backbone link
  sampling    tokenizing the prompts; vLLM's engine start; prefill (every prompt with one new token:
              a ``max_tokens=1`` pass on a second engine-warm call); decode (the full sampling minus
              that prefill); detokenizing and storing the answers (what the stage does besides generate)
  embedding   loading the model; the token weight table (49,152 ids decoded one by one, as the
              release does); tokenizing the texts; the forward passes (each ``_mean_layers`` call);
              pooling and the rest of the stage's Python
  bins        the release's instruction embedding (its own forwards)
  selection   divergence scores and binwise selection

    python bench/profile_demo.py                     # the demo's 32 prompts
    python bench/profile_demo.py --n 64              # bench_selection_cost.py --n 64's slice size
    python bench/profile_demo.py --set sampler.dtype=bfloat16 embedding.dtype=bfloat16   # a variant

The prefill probe runs each prompt with one extra leading token, so that vLLM's prefix cache (when on)
shares no block with the full sampling's own prefill; the probe stands in for that prefill in the table.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
T0 = time.perf_counter()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SECONDS: dict[str, float] = defaultdict(float)


@contextmanager
def timed(part: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        SECONDS[part] += time.perf_counter() - start


def accumulate(module, name: str, part: str) -> None:
    """Wrap ``module.name`` so that every call's time adds to ``part``."""
    inner = getattr(module, name)

    def wrapper(*args, **kwargs):
        with timed(part):
            return inner(*args, **kwargs)

    setattr(module, name, wrapper)


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    import selectlab.config  # noqa: F401  (registers the config's resolvers)
    from selectlab.schema import register, typed

    register()
    run_dir = tempfile.mkdtemp(prefix="profile_demo_run_")  # composed outside Hydra's app: no run folder of its own
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return typed(hydra_compose("config", overrides=["scorer=adg", "pool=alpaca", "logger=none", f"run_dir={run_dir}",
                                                        *overrides]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="pool slice (default: the demo's pool.limit)")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides, as on src/run.py's command line")
    args = ap.parse_args()

    with timed("startup: imports"):
        import numpy as np
        import torch  # noqa: F401
        import transformers  # noqa: F401
        import vllm  # noqa: F401

        from selectlab.lm import embedding, sampling
        from selectlab.lm.backbone import resolve_backbone
        from selectlab.lm.divergence import cloud_metrics, combined_score
        from selectlab.lm.models import load_causal_lm, load_tokenizer
        from selectlab.pools import load_pool
        from selectlab.infra.store import ArtifactStore
        from selectlab.config import plain
        from selectlab.scorers import Scores
        from selectlab.scorers.adg import score_weights
        from selectlab.selectors import resolve_budget, select
    with timed("startup: config + pool"):
        cfg = compose(args.set + ([f"pool.limit={args.n}"] if args.n else []))
        records = load_pool(cfg.pool, seed=int(cfg.seed)).records
    store = ArtifactStore(Path(tempfile.mkdtemp(prefix="profile_demo_")))
    with timed("startup: backbone (install-time conversion, linked)"):
        path = resolve_backbone(cfg.backbone, store)
    sampler = sampling.sampler_config(cfg.sampler)
    seed = int(cfg.seed)

    # -- sampling
    with timed("sampling: tokenizer + prompt tokenization"):
        tok = load_tokenizer(path, padding_side="left")
        prompts, _ = sampling.prompt_token_ids(records, tok, sampler.template, sampler.prompt_max_tokens)
    with timed("sampling: vLLM engine start"):
        backend = sampling._VLLMBackend(path, sampler, seed)
    seeds = [sampling.derived_seed(seed, r["id"]) for r in records]
    with timed("probe: prefill (max_tokens=1)"):
        probe = dataclasses.replace(sampler, max_new_tokens=1)
        backend.params = sampling.vllm_request_params(probe, backend.params["repetition_penalty"])
        backend.generate([[tok.eos_token_id, *p] for p in prompts], 0, seeds)  # no cache block shared
    backend.params = sampling.vllm_request_params(sampler, backend.params["repetition_penalty"])
    accumulate(sampling._VLLMBackend, "generate", "sampling: generate (prefill + decode)")
    with timed("sampling: stage total (after the engine start)"):
        samples = sampling.sample_answers(records, path, sampler, store, seed=seed, keep_engine=True)
    generated = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for s in samples for a in s["answers"])
    sampling.shutdown_engines()

    # -- embedding (the ADG scorer's answer pass), with its parts timed inside
    emb_cfg = cfg.embedding
    accumulate(embedding, "_mean_layers", "embedding: forward passes")
    accumulate(embedding, "_token_lists", "embedding: tokenization")
    accumulate(embedding, "token_weight_table", "embedding: token weight table")
    with timed("embedding: model load"):
        model = load_causal_lm(path, emb_cfg.dtype, "cpu")
        etok = load_tokenizer(path)
    with timed("embedding: stage total"):
        weights = embedding.token_weight_table(etok)
        sets = embedding.embed_answer_sets(model, etok, [r["instruction"] for r in records],
                                           [s["answers"] for s in samples], emb_cfg, weights)
    bins = cfg.scorer.bins
    answer_forwards = SECONDS["embedding: forward passes"]  # the bins' forwards below are their own part
    with timed("bins: release instruction embedding"):
        bin_cfg = dataclasses.replace(emb_cfg, layers=list(bins.layers), max_length=bins.max_length, dtype=bins.dtype)
        features = embedding.embed_texts(model, load_tokenizer(path), [r["instruction"].strip() for r in records],
                                         bin_cfg, weights, add_special_tokens=bins.add_special_tokens,
                                         unweighted=bins.unweighted)
    SECONDS["embedding: forward passes"] = answer_forwards
    with timed("selection: scores + selector"):
        columns = cloud_metrics(sets.answers)
        scores = Scores(ids=[r["id"] for r in records], score=combined_score(columns, *score_weights(cfg.scorer)),
                        columns=columns, features=np.asarray(features))
        select(scores, resolve_budget(cfg.selection.budget, len(records)), plain(cfg.selector))
    report(len(records), sampler, generated)


def report(n: int, sampler, generated: int) -> None:
    s = SECONDS
    gen = s.pop("sampling: generate (prefill + decode)")
    stage = s.pop("sampling: stage total (after the engine start)")
    prefill = s.pop("probe: prefill (max_tokens=1)")
    s["sampling: prefill (probe)"] = prefill
    s["sampling: decode (generate - prefill)"] = gen - prefill
    s["sampling: detokenize + store (stage - generate)"] = stage - gen
    emb_total = s.pop("embedding: stage total")
    inside = sum(s[k] for k in ("embedding: forward passes", "embedding: tokenization", "embedding: token weight table"))
    s["embedding: pooling + other Python"] = emb_total - inside
    total = sum(s.values())  # the probe stands in for the prefill inside generate (decode = generate - probe)
    print(f"{n} prompts x K={sampler.k}, <= {sampler.max_new_tokens} new tokens, {generated:,} tokens generated; "
          f"sampler dtype {sampler.dtype}; {os.cpu_count()} CPUs")
    print(f"{'part':<58}{'seconds':>9}{'share':>8}")
    for part, sec in s.items():
        print(f"{part:<58}{sec:>9.1f}{sec / total:>8.1%}")
    print(f"{'total (timed parts)':<58}{total:>9.1f}")
    print(f"decode rate {generated / max(gen - prefill, 1e-9):.1f} tok/s; wall of this process "
          f"{time.perf_counter() - T0:.1f} s (includes the prefill probe)")


if __name__ == "__main__":
    sys.exit(main())
