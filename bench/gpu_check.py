"""The GPU check: one command, one process, one JSON, in minutes on one H100/H200.

    python bench/gpu_check.py                  # on a GPU machine: writes bench/results/gpu_check_<device>.json
    python bench/gpu_check.py --tiny --out /tmp/gpu_check.json   # tiny shapes on CPU (tests/test_gpu_check.py)

Needs only torch, transformers, accelerate and peft (no vLLM, Hydra, W&B or lm-eval) and no
weights: every model is randomly initialised from a shipped config.json
(conf/backbone/configs/), texts are synthetic words of fixed lengths from a word-level
tokenizer built here, and generation runs to a fixed length. Timings of random weights are
those of real ones (same shapes, same kernels); only output lengths would differ, and they
are fixed here. It measures:
  (a) embedding: tokens/s of selectlab.lm.embedding.embed_answer_sets (length-bucketed batches, prefix
      reuse) vs selectlab.lm.reference (one forward per text, the authors' way), Llama-3-8B shape, bf16;
  (b) sampling: transformers generate tokens/s at K=5 (num_return_sequences), same model;
  (c) training: tokens/s of a full and a LoRA training step (bf16 autocast over fp32 weights,
      AdamW, gradient checkpointing, as train=paper), Llama-3.2-1B shape;
  (d) agreement: D, I and the ADG score of a tiny random model on CPU vs on the GPU (must be <= 1e-3).
Its ``rates`` section is what ``task=plan`` reads (bench/results/*.json override the assumed
rates of bench/rates.json for that device).
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from selectlab.lm.divergence import adg_score, divergence  # noqa: E402
from selectlab.lm.embedding import embed_answer_sets, token_weight_table  # noqa: E402
from selectlab.schema.run import EmbeddingConfig  # noqa: E402


def release_embedding(token_budget: int, dtype: str) -> EmbeddingConfig:
    """conf/embedding/release.yaml's values (the device has no Hydra to compose it), on the GPU."""
    return EmbeddingConfig(name="release", layers=[-4, -3, -2], text="instruction+answer", empty_answer="instruction",
                           pool="all", max_length=1024, dtype=dtype, token_budget=token_budget, prefix_reuse=True,
                           device=None)
from selectlab.lm.flops import CONFIG_ONLY_DIR, arch_from_config  # noqa: E402
from selectlab.lm.reference import reference_scores  # noqa: E402

AGREEMENT_TOL = 1e-3
LETTERS = "abcdefghijklmnopqrstuvwxyz"

# Full shapes (the GPU run) and tiny ones (the CPU test). Lengths are in words = tokens.
FULL = dict(embed_model="llama3_8b", train_model="llama3_2_1b_instruct", n=32, k=5, instruction=40, answer=200,
            token_budget=65536, prompts=16, prompt_len=64, new_tokens=256, train_batch=4, train_len=2048,
            warmup_steps=2, timed_steps=3, dtype="bfloat16")
TINY = dict(embed_model=None, train_model=None, n=4, k=5, instruction=12, answer=24, token_budget=256,
            prompts=2, prompt_len=8, new_tokens=8, train_batch=2, train_len=32, warmup_steps=1, timed_steps=1,
            dtype="float32")


def word_tokenizer(n_words: int = 4000):
    """A word-level tokenizer over letter-only words plus a few punctuation and number tokens,
    so the ADG token weights (0 punctuation, 1.3 numbers, 1 words) all occur."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", ".", ",", "?", "7", "42", "1999"])}
    for i in range(n_words):
        word = LETTERS[i % 26] + LETTERS[(i // 26) % 26] + LETTERS[(i // 676) % 26]
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


def synthetic_words(rng: random.Random, tokenizer, n: int) -> str:
    words = [w for w in tokenizer.get_vocab() if w not in ("<pad>", "<s>", "</s>", "<unk>")]
    return " ".join(rng.choice(words) for _ in range(n))


def answer_sets(tokenizer, n: int, k: int, instruction: int, answer: int, seed: int = 0, vary: bool = False):
    """``n`` instructions of ``instruction`` words, each with ``k`` answers of ``answer`` words
    (``vary``: lengths spread over [answer/2, answer], to exercise padding and bucketing)."""
    rng = random.Random(seed)
    instructions = [synthetic_words(rng, tokenizer, instruction) for _ in range(n)]
    answers = [[synthetic_words(rng, tokenizer, rng.randint(answer // 2, answer) if vary else answer)
                for _ in range(k)] for _ in range(n)]
    return instructions, answers


def llama_config(name: str | None, vocab: int):
    """The shipped config of ``name`` (vocabulary kept: it sets the LM head's cost), or a tiny llama."""
    from transformers import AutoConfig, LlamaConfig

    if name is None:
        return LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                           tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config = AutoConfig.from_pretrained(CONFIG_ONLY_DIR / name)
    config.pad_token_id = 0
    return config


def random_model(config, device: str, dtype, seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def arch_of(config, tmp: Path, name: str):
    """FLOPs accounting of the model actually built (selectlab.lm.flops reads a config.json)."""
    folder = tmp / name
    folder.mkdir(parents=True, exist_ok=True)
    config.to_json_file(folder / "config.json")
    return arch_from_config(str(folder), name)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


# ---------------------------------------------------------------- (a) embedding, (b) sampling


def check_embedding(model, tok, shape: dict, device: str, arch) -> tuple[dict, dict]:
    import numpy as np

    layers = (-4, -3, -2)
    instructions, answers = answer_sets(tok, shape["n"], shape["k"], shape["instruction"], shape["answer"])
    cfg = release_embedding(token_budget=shape["token_budget"], dtype=shape["dtype"])
    weights = token_weight_table(tok)
    n_tokens = sum(len(tok(f"{i} {a}", add_special_tokens=False)["input_ids"]) for i, ans in zip(instructions, answers)
                   for a in ans)
    embed_answer_sets(model, tok, instructions[:1], answers[:1], cfg, weights)  # warm-up (kernels, allocator)
    reference_scores(model, tok, instructions[:1], answers[:1], layers=layers)
    emb, ours_s = timed(device, lambda: embed_answer_sets(model, tok, instructions, answers, cfg, weights))
    D, I = divergence(emb.answers)
    ref, ref_s = timed(device, lambda: reference_scores(model, tok, instructions, answers, layers=layers))
    ours_score = adg_score(D, I, 0.4)
    depth = max(i % (arch.n_layers + 1) for i in layers)
    context = (shape["instruction"] + shape["answer"]) / 2
    result = {
        "texts": shape["n"] * shape["k"], "tokens": n_tokens, "token_budget": shape["token_budget"],
        "ours_seconds": ours_s, "reference_seconds": ref_s,
        "ours_tokens_per_s": n_tokens / ours_s, "reference_tokens_per_s": n_tokens / ref_s, "ratio": ref_s / ours_s,
        "max_abs_diff_vs_reference": {"D": float(np.max(np.abs(D - ref["D"]))), "I": float(np.max(np.abs(I - ref["I"]))),
                                      "score": float(np.max(np.abs(ours_score - ref["score"])))},
    }
    rate = {"kind": "measured", "tokens_per_s": n_tokens / ours_s, "context": context, "depth": depth,
            "flops_per_token": arch.forward_flops_per_token(context, depth, head=False),
            "source": f"bench/gpu_check.py (a): embed_answer_sets, {shape['dtype']}, token_budget {shape['token_budget']}"}
    return result, rate


def check_sampling(model, tok, shape: dict, device: str, arch) -> tuple[dict, dict]:
    """transformers generate as selectlab.lm.sampling's hf backend calls it, run to a fixed length."""
    import torch

    k, new = shape["k"], shape["new_tokens"]
    rng = random.Random(1)
    prompts = [tok(synthetic_words(rng, tok, shape["prompt_len"]), add_special_tokens=False)["input_ids"]
               for _ in range(shape["prompts"])]
    batch = tok.pad({"input_ids": prompts}, padding=True, return_tensors="pt").to(device)

    def generate(n_new: int):
        torch.manual_seed(0)
        with torch.inference_mode():
            return model.generate(**batch, do_sample=True, num_return_sequences=k, temperature=1.4, top_p=0.9,
                                  top_k=0, max_new_tokens=n_new, min_new_tokens=n_new, pad_token_id=tok.pad_token_id)

    generate(2)  # warm-up
    out, seconds = timed(device, lambda: generate(new))
    generated = (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]
    context = shape["prompt_len"] + new / 2
    result = {"prompts": shape["prompts"], "k": k, "new_tokens": new, "generated_tokens": generated,
              "seconds": seconds, "tokens_per_s": generated / seconds}
    rate = {"kind": "measured", "tokens_per_s": generated / seconds, "context": context,
            "flops_per_token": arch.forward_flops_per_token(context),
            "source": f"bench/gpu_check.py (b): transformers generate, K={k}, {shape['prompts']} prompts, {shape['dtype']}"}
    return result, rate


# ---------------------------------------------------------------- (c) training


def check_training(config, shape: dict, device: str, method: str, arch) -> tuple[dict, dict]:
    """Steps of bf16-autocast training over fp32 weights with AdamW and gradient checkpointing
    (train=paper's settings; LoRA with train=lora's adapters)."""
    import torch

    model = random_model(config, device, torch.float32)
    model.train()
    model.config.use_cache = False
    model.gradient_checkpointing_enable()
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                 "up_proj", "down_proj"]))
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=1e-5, fused=device.startswith("cuda"))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, config.vocab_size, (shape["train_batch"], shape["train_len"]), generator=g).to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)

    def step():
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(shape["warmup_steps"]):
        step()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    losses, seconds = timed(device, lambda: [step() for _ in range(shape["timed_steps"])])
    tokens = shape["train_batch"] * shape["train_len"] * shape["timed_steps"]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    trainable = sum(p.numel() for p in params)
    del model, optim
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    context = shape["train_len"] / 2
    result = {"method": method, "batch": shape["train_batch"], "length": shape["train_len"], "steps": shape["timed_steps"],
              "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "trainable_params": trainable,
              "peak_gib": peak, "losses": losses}
    rate = {"kind": "measured", "tokens_per_s": tokens / seconds, "context": context, "checkpointing": True,
            "flops_per_token": arch.train_flops_per_token(context, method, checkpointing=True),
            "source": f"bench/gpu_check.py (c): {method} step, batch {shape['train_batch']} x {shape['train_len']}, "
                      f"bf16 autocast, AdamW, gradient checkpointing"}
    return result, rate


# ---------------------------------------------------------------- (d) agreement


def check_agreement(tok, device: str) -> dict:
    """The same tiny random model (fp32) on CPU and on ``device``: D, I and score must agree to 1e-3."""
    import numpy as np
    import torch

    config = llama_config(None, len(tok))
    cpu_model = random_model(config, "cpu", torch.float32, seed=1)
    other = random_model(config, device, torch.float32, seed=1)
    other.load_state_dict(cpu_model.state_dict())
    instructions, answers = answer_sets(tok, 6, 5, 10, 30, seed=2, vary=True)
    cfg = release_embedding(token_budget=128, dtype="float32")
    weights = token_weight_table(tok)
    out = {}
    for name, model in (("cpu", cpu_model), ("device", other)):
        emb = embed_answer_sets(model, tok, instructions, answers, cfg, weights)
        D, I = divergence(emb.answers)
        out[name] = {"D": D, "I": I, "score": adg_score(D, I, 0.4)}
    diffs = {c: float(np.max(np.abs(out["cpu"][c] - out["device"][c]))) for c in ("D", "I", "score")}
    return {"compared": f"cpu vs {device}", "max_abs_diff": diffs, "tolerance": AGREEMENT_TOL,
            "ok": all(v <= AGREEMENT_TOL for v in diffs.values()),
            "score_range": [float(out["cpu"]["score"].min()), float(out["cpu"]["score"].max())]}


# ---------------------------------------------------------------- main


def device_kind(device: str) -> str:
    import torch

    if not device.startswith("cuda"):
        return "cpu"
    name = torch.cuda.get_device_name(0).lower()
    for kind in ("h200", "h100", "a100", "l40s", "a10"):
        if kind in name:
            return kind
    return "".join(c if c.isalnum() else "_" for c in name)


def main(argv: list[str] | None = None) -> dict:
    import tempfile

    import torch
    import transformers

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on any device (the CPU test)")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/gpu_check_<device>.json; "
                                                "with --tiny a temporary file)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["embedding", "sampling", "training", "agreement"])
    args = ap.parse_args(argv)

    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.tiny:
        ap.error("no CUDA device: the full shapes (an 8B model) are for a GPU; use --tiny on CPU")
    shape = TINY if args.tiny else FULL
    dtype = getattr(torch, shape["dtype"])
    kind = device_kind(device)
    default = Path(tempfile.gettempdir()) / "gpu_check_tiny.json" if args.tiny else \
        REPO / "bench" / "results" / f"gpu_check_{kind}.json"  # task=plan reads bench/results/; tiny rates stay out
    out_path = Path(args.out) if args.out else default
    tok = word_tokenizer()
    report = {"device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
              "device_kind": kind, "tiny": args.tiny, "torch": torch.__version__, "transformers": transformers.__version__,
              "python": platform.python_version(), "shape": shape}
    rates: dict[str, dict] = {}

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        if "embedding" not in args.skip or "sampling" not in args.skip:
            config = llama_config(shape["embed_model"], len(tok))
            arch = arch_of(config, Path(tmp), shape["embed_model"] or "tiny")
            model = random_model(config, device, dtype)
            log(f"embedding/sampling model: {arch.params / 1e9:.2f}B params, {shape['dtype']}")
            if "embedding" not in args.skip:
                report["embedding"], rates["embed"] = check_embedding(model, tok, shape, device, arch)
                e = report["embedding"]
                log(f"(a) embedding: ours {e['ours_tokens_per_s']:.0f} tok/s, reference {e['reference_tokens_per_s']:.0f} "
                    f"tok/s, ratio {e['ratio']:.2f}x; max |score diff| {e['max_abs_diff_vs_reference']['score']:.2e}")
            if "sampling" not in args.skip:
                tok.padding_side = "left"
                report["sampling"], rates["generate_hf"] = check_sampling(model, tok, shape, device, arch)
                tok.padding_side = "right"
                log(f"(b) sampling K={shape['k']}: {report['sampling']['tokens_per_s']:.0f} tok/s")
            del model
            if device == "cuda":
                torch.cuda.empty_cache()
        if "training" not in args.skip:
            config = llama_config(shape["train_model"], len(tok))
            arch = arch_of(config, Path(tmp), shape["train_model"] or "tiny_train")
            report["training"] = {}
            for method in ("full", "lora"):
                report["training"][method], rates[f"train_{method}"] = check_training(config, shape, device, method, arch)
                log(f"(c) training {method}: {report['training'][method]['tokens_per_s']:.0f} tok/s")
        if "agreement" not in args.skip:
            report["agreement"] = check_agreement(tok, device)
            log(f"(d) agreement {report['agreement']['compared']}: {report['agreement']['max_abs_diff']} "
                f"{'ok' if report['agreement']['ok'] else 'FAILED'}")
    report["rates"] = {kind: rates}
    report["seconds_total"] = time.perf_counter() - started
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2))
    log(f"wrote {out_path}")
    return report


if __name__ == "__main__":
    main()
