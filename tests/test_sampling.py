"""ADG sampling on the tiny llama: seeding, K answers, prompt cut counts, batch resume, vLLM."""
from __future__ import annotations

import time

import pytest
from omegaconf import OmegaConf

from selectlab.lm import sampling
from selectlab.lm.sampling import SamplerConfigError, sample_answers, sampling_counts
from selectlab.infra.store import ArtifactStore

RECORDS = [
    {"id": f"r{i}", "instruction": text, "input": "", "output": "", "source": "test"}
    for i, text in enumerate([
        "Give three tips for staying healthy.",
        "What is the capital of France?",
        "Rewrite the sentence in passive voice: The cat chased the mouse. " * 8,  # > 80 prompt tokens
        "Name a prime number larger than 10.",
        "Write a haiku about autumn.",
    ])
]


def sampler_cfg(config: str, **overrides):
    """conf/sampler/<config>.yaml on its own (its ${backbone.dtype} given: the tiny models are fp32)."""
    cfg = OmegaConf.load(sampling.Path(__file__).parents[1] / "conf" / "sampler" / f"{config}.yaml")
    cfg.merge_with({"dtype": "float32", **overrides})
    return cfg


def hf_cfg(**overrides):
    return sampler_cfg("hf", **{"max_new_tokens": 12, "batch_size": 2, **overrides})


def test_hf_same_seed_same_answers_other_seed_differs(tiny_model_dir, tmp_path):
    a = sample_answers(RECORDS, str(tiny_model_dir), hf_cfg(), ArtifactStore(tmp_path / "a"), seed=1)
    b = sample_answers(RECORDS, str(tiny_model_dir), hf_cfg(), ArtifactStore(tmp_path / "b"), seed=1)
    c = sample_answers(RECORDS, str(tiny_model_dir), hf_cfg(), ArtifactStore(tmp_path / "c"), seed=2)
    assert [r["answers"] for r in a] == [r["answers"] for r in b]
    assert [r["answers"] for r in a] != [r["answers"] for r in c]
    assert [r["id"] for r in a] == [r["id"] for r in RECORDS]
    for r in a:
        assert len(r["answers"]) == 5 and len(r["answer_tokens"]) == 5
        assert all(isinstance(t, str) and t == t.strip() for t in r["answers"])
        assert all(1 <= n <= 12 for n in r["answer_tokens"])
        # random weights at temperature 1.4: the K answers of one prompt are not all the same
        assert len(set(r["answers"])) > 1
        assert r["params"]["k"] == 5 and r["params"]["temperature"] == 1.4 and r["params"]["seed"] == 1


def test_prompt_cut_is_exact_and_counted(tiny_model_dir, tmp_path):
    cut = sample_answers(RECORDS, str(tiny_model_dir), hf_cfg(k=2), ArtifactStore(tmp_path / "cut"), seed=0)
    assert [r["prompt_cut"] for r in cut] == [False, False, True, False, False]
    assert cut[2]["prompt_tokens"] > 80
    assert sampling_counts(cut)["prompts_cut"] == 1
    uncut = sample_answers(RECORDS, str(tiny_model_dir), hf_cfg(k=2, prompt_max_tokens=None),
                           ArtifactStore(tmp_path / "uncut"), seed=0)
    assert sampling_counts(uncut)["prompts_cut"] == 0
    assert uncut[2]["prompt_hash"] != cut[2]["prompt_hash"]
    assert [r["prompt_hash"] for r in uncut[:2]] == [r["prompt_hash"] for r in cut[:2]]


def test_prompt_ids_are_the_release_template_cut_to_80(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    ids, lengths = sampling.prompt_token_ids(RECORDS[2:4], tok, "alpaca_no_input", 80)
    assert len(ids[0]) == 80 and lengths[0] > 80 and ids[0] == tok(
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\n" + RECORDS[2]["instruction"].strip() + "\n\n### Response:")["input_ids"][:80]
    assert tok.decode(ids[1]).endswith("### Response:")
    chat_ids, _ = sampling.prompt_token_ids(RECORDS[3:4], tok, "chat", None)
    assert tok.decode(chat_ids[0]).startswith("<|im_start|>")


@pytest.mark.slow
def test_resume_after_kill_reuses_finished_batches(tiny_model_dir, tmp_path, monkeypatch):
    cfg = hf_cfg()
    whole = sample_answers(RECORDS, str(tiny_model_dir), cfg, ArtifactStore(tmp_path / "whole"), seed=3)

    calls: list[int] = []
    real_generate = sampling._HFBackend.generate

    def killed_after_first_batch(self, prompts, *seeds):
        calls.append(len(prompts))
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")
        return real_generate(self, prompts, *seeds)

    store = ArtifactStore(tmp_path / "resumed")
    monkeypatch.setattr(sampling._HFBackend, "generate", killed_after_first_batch)
    with pytest.raises(KeyboardInterrupt):
        sample_answers(RECORDS, str(tiny_model_dir), cfg, store, seed=3)
    assert len(list((store.root / "samples").glob("*.partial/bs2/batch*.jsonl"))) == 1

    calls.clear()
    monkeypatch.setattr(sampling._HFBackend, "generate", lambda self, p, *s: calls.append(len(p)) or real_generate(self, p, *s))
    resumed = sample_answers(RECORDS, str(tiny_model_dir), cfg, store, seed=3)
    assert calls == [2, 1]  # batches 2 and 3 of 3 (batch 1 was stored before the kill)
    assert resumed == whole
    assert store.events[-1].batches_reused == 1 and store.events[-1].batches_computed == 2

    # finished artifact: nothing is loaded or generated again
    monkeypatch.setattr(sampling, "_HFBackend", None)
    assert sample_answers(RECORDS, str(tiny_model_dir), cfg, store, seed=3) == whole


def test_bad_config_names_the_key(tiny_model_dir, tmp_path):
    with pytest.raises(SamplerConfigError, match="sampler.top_p"):
        sample_answers(RECORDS, str(tiny_model_dir), hf_cfg(top_p=1.5), ArtifactStore(tmp_path), seed=0)
    with pytest.raises(SamplerConfigError, match="sampler.name"):
        sample_answers(RECORDS, str(tiny_model_dir), hf_cfg(name="tgi"), ArtifactStore(tmp_path), seed=0)
    with pytest.raises(SamplerConfigError, match="data_parallel_size"):
        cfg = sampler_cfg("vllm", data_parallel_size=2)
        sample_answers(RECORDS, str(tiny_model_dir), cfg, ArtifactStore(tmp_path), seed=0)


@pytest.fixture(scope="module")
def vllm_tiny_model_dir(smol_tokenizer_dir, tmp_path_factory):
    """The tiny llama with head_dim 32: vLLM's CPU attention supports head sizes from 32 up,
    not the shared fixture's 16."""
    from conftest import build_tiny_llama

    return build_tiny_llama(smol_tokenizer_dir, tmp_path_factory.mktemp("tiny_llama_hd32"), 2, 1)


@pytest.mark.slow
def test_vllm_engine_k_distinct_answers_and_record_shape(vllm_tiny_model_dir, tmp_path):
    tiny_model_dir = vllm_tiny_model_dir
    import torch

    cfg = sampler_cfg("vllm", max_new_tokens=16, batch_size=3, max_model_len=256, cpu_kvcache_space_gib=1)
    store = ArtifactStore(tmp_path)
    threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
    start = time.perf_counter()
    out = sample_answers(RECORDS, str(tiny_model_dir), cfg, store, seed=0, keep_engine=True)
    print(f"vLLM tiny-model sampling took {time.perf_counter() - start:.1f}s")
    assert [r["id"] for r in out] == [r["id"] for r in RECORDS]
    assert set(out[0]) == {"id", "answers", "answer_tokens", "prompt_tokens", "prompt_cut", "prompt_hash", "params"}
    for r in out:
        assert len(r["answers"]) == 5 and len(set(r["answers"])) == 5
        assert all(1 <= n <= 16 for n in r["answer_tokens"])
        assert r["params"]["backend"] == "vllm"
    assert sampling_counts(out)["prompts_cut"] == 1
    # per-request seeds: a record's answers do not depend on its batch or on what the engine ran before
    again = sample_answers(RECORDS[1:4], str(tiny_model_dir), cfg, ArtifactStore(tmp_path / "again"), seed=0,
                           keep_engine=True)
    assert [r["answers"] for r in again] == [r["answers"] for r in out[1:4]]
    other_seed = sample_answers(RECORDS[1:4], str(tiny_model_dir), cfg, ArtifactStore(tmp_path / "seed1"), seed=1)
    assert not sampling._VLLM_ENGINES, "the last call shuts the engine down"
    assert [r["answers"] for r in other_seed] != [r["answers"] for r in out[1:4]]
    # the in-process engine (the CPU default) gave the answers of vLLM's own processes, whose sampler
    # sorts the vocabulary; and it left this process's torch threads as they were
    import torch

    assert cfg.in_process and torch.get_num_threads() == threads and torch.set_num_threads is set_num_threads
    apart = sample_answers(RECORDS, str(tiny_model_dir), sampler_cfg("vllm", max_new_tokens=16, batch_size=3,
                                                                     max_model_len=256, cpu_kvcache_space_gib=1,
                                                                     in_process=False),
                           ArtifactStore(tmp_path / "apart"), seed=0)
    assert [r["answers"] for r in apart] == [r["answers"] for r in out]


@pytest.mark.parametrize("k_value, p_value", [(50, 0.9), (5, 0.5), (1, 0.9), (50, 0.999)])
def test_top_k_top_p_masks_as_vllms_sorting_path(k_value, p_value):
    """The CPU sampler's mask without a vocabulary sort equals vLLM's own (sort-based) one, in
    every row: per-row k and p, rows with ties at the k-th value, rows that keep the whole vocabulary."""
    import torch
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    from selectlab.lm.top_k_top_p import top_k_top_p

    def vllm_path(logits, k, p):
        return apply_top_k_top_p_pytorch(logits, k, p, allow_cpu_sync=True)

    generator = torch.Generator().manual_seed(k_value)
    logits = torch.randn(64, 4096, generator=generator) * 3
    logits[1, :200] = logits[1].max() - 0.5  # a tie across the k-th value: the vLLM path takes the row
    logits[2] = torch.round(logits[2])  # many ties, at the k-th value too
    logits[5, :3] = logits[5].max() + 1  # three equal logits at the top, inside the kept set
    k = torch.full((64,), k_value, dtype=torch.int32)
    k[3] = 2
    p = torch.full((64,), p_value)
    p[4] = 0.2
    ours, theirs = top_k_top_p(logits.clone(), k, p, vllm_path), vllm_path(logits.clone(), k, p)
    assert torch.equal(ours, theirs)
    whole = torch.full((64,), 4096, dtype=torch.int32)  # no top-k: vLLM's path for the batch
    assert torch.equal(top_k_top_p(logits.clone(), whole, p, vllm_path), vllm_path(logits.clone(), whole, p))


def test_the_engine_leaves_this_process_when_vllm_could_not_scan_its_modules():
    """vLLM's CPU start-up reads every module attribute's __dict__ as a mapping; llvmlite's ffi.lib (loaded with
    numba) has none, and an in-process engine would fail on it: the engine then starts in its own processes."""
    llvmlite_ffi = pytest.importorskip("llvmlite.binding.ffi")
    assert not hasattr(vars(llvmlite_ffi.lib), "get")
    assert not sampling.modules_scannable()
