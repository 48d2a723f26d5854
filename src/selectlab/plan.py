"""``task=plan``: what a run would do and cost, worked out without running it.

    python src/run.py experiment=adg_paper_llama3 task=plan backbone.path=/x

The run's config is composed and checked as a real run checks it; then, stage by stage,
the plan gives the artifact key (from the same key functions the stages use), whether that
artifact is stored (reused), partly stored or to be computed, which model each stage loads
and from where, the work in units a user can budget (prompts x K x new tokens, tokens to
embed, training tokens x epochs, eval requests), its FLOPs for the model's size (read from
a config.json: the model's own, or for a preset whose weights are not here the shipped
``conf/backbone/configs/<name>/config.json``), and its wall time on every device
``bench/rates.json`` (and any ``bench/results/*.json``) gives a rate for, each rate marked
measured or assumed. Nothing is loaded, computed, converted, downloaded or logged; problems
a real run would stop at (a model that is not here, a hub pool offline) are listed, while
a config error raises as it would in the run.

Keys that hash a stage's inputs (the sampled answers, the selected records) are known only
once those inputs are stored; the plan says so rather than guessing.
"""
from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .errors import SelectlabError
from .lm.backbone import ModelLocation, locate_model, model_entry
from .lm.flops import Arch, arch_from_config, config_only_dir
from .infra.paths import REPO_ROOT, data_dir
from .config import plain
from .schema import typed
from .context import with_sections
from .stages.compare import ROW_STAGES, Row, planned_rows, random_baseline_cfg
from .stages.evaluation import task_keys, train_seed
from .stages.scoring import pool_content_key, scores_key
from .stages.selection import subsets_key
from .pools import PoolError, load_pool
from .lm.prompts import render_prompt
from .infra.store import ArtifactStore, atomic_write_text

log = logging.getLogger(__name__)

RATES_FILE = REPO_ROOT / "bench" / "rates.json"
RESULTS_DIR = REPO_ROOT / "bench" / "results"
# Rows of the hub-backed pools, for planning where the data is not here (dataset cards).
HUB_POOL_ROWS = {"vicgalle/alpaca-gpt4": 52002, "WizardLMTeam/WizardLM_evol_instruct_70k": 70000,
                 "databricks/databricks-dolly-15k": 15011}
CHARS_PER_TOKEN = 4.0  # assumed when no tokenizer is here (English BPE text: 3.5 to 4.5)
TOKEN_SAMPLE = 2000  # records tokenized to measure mean lengths (the rest is scaled)
PAPER_SELECTION_HOURS = {"adg": (1.78, 4), "superfiltering": (1.05, 4), "mig": (3.92, 4)}  # ADG paper, 52K, 4 GPUs


@dataclass
class StagePlan:
    stage: str
    row: str  # which result row it serves: selected | random | untrained
    key: str | None
    status: str
    model: str | None
    work: dict[str, Any]
    work_text: str
    flops: float | None = None
    rate_kind: str | None = None  # which rate of bench/rates.json times it
    selection: bool = False  # part of selecting the subset (vs fine-tune and eval)
    seconds: dict[str, float] = field(default_factory=dict)  # device -> expected wall seconds


@dataclass
class ModelPlan:
    role: str
    location: ModelLocation
    arch: Arch | None
    arch_note: str
    tokenizer: Any = None


class TokenCounter:
    """Mean token lengths of texts: with the model's tokenizer on a seeded sample when it is here,
    else estimated from characters (and said so)."""

    def __init__(self, tokenizer=None, name: str = ""):
        self.tokenizer = tokenizer
        self.how = (f"tokenizer of {name}" if tokenizer is not None
                    else f"estimated at {CHARS_PER_TOKEN:g} characters per token (no tokenizer here)")

    def lengths(self, texts: list[str]) -> np.ndarray:
        if self.tokenizer is None:
            return np.array([math.ceil(len(t) / CHARS_PER_TOKEN) for t in texts], dtype=np.float64)
        return np.array([len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]],
                        dtype=np.float64)

    def mean(self, texts: list[str], cap: int | None = None) -> float:
        """Mean length per text, each cut at ``cap`` tokens first."""
        if not texts:
            return 0.0
        sample = texts if len(texts) <= TOKEN_SAMPLE else random.Random(0).sample(texts, TOKEN_SAMPLE)
        n = self.lengths(sample)
        return float(np.minimum(n, cap).mean() if cap else n.mean())


# ---------------------------------------------------------------- rates


def load_rates() -> dict[str, dict]:
    """device -> {label, peak_flops, rates: kind -> entry}; results files override rates.json per kind."""
    devices = json.loads(RATES_FILE.read_text())["devices"] if RATES_FILE.is_file() else {}
    for path in sorted(RESULTS_DIR.glob("*.json")) if RESULTS_DIR.is_dir() else []:
        for device, kinds in (json.loads(path.read_text()).get("rates") or {}).items():
            entry = devices.setdefault(device, {"label": device, "rates": {}})
            for kind, rate in kinds.items():
                entry["rates"][kind] = {**rate, "source": f"{path.relative_to(REPO_ROOT)}: {rate.get('source', '')}"}
    return devices


@lru_cache(maxsize=8)
def _rate_arch(model: str) -> Arch:
    folder = config_only_dir(model)
    if folder is None:
        raise ValueError(f"bench/rates.json names model {model!r}, which has no conf/backbone/configs/{model}/config.json")
    return arch_from_config(str(folder), model)


def rate_flops_per_s(device: dict, kind: str) -> tuple[float, dict] | None:
    """Achieved FLOP/s of one rate: measured tokens/s x that model's FLOPs per token, or an
    assumed share (MFU) of the device's peak."""
    rate = device["rates"].get(kind)
    if rate is None:
        return None
    if rate["kind"] == "assumed":
        return rate["mfu"] * device["peak_flops"], rate
    if "flops_per_token" in rate:  # written by the bench that measured it (bench/gpu_check.py)
        return rate["tokens_per_s"] * rate["flops_per_token"], rate
    arch = _rate_arch(rate["model"])
    context = float(rate.get("context", 0))
    if kind.startswith("train_"):
        per_token = arch.train_flops_per_token(context, kind.removeprefix("train_"), bool(rate.get("checkpointing")))
    else:
        per_token = arch.forward_flops_per_token(context, rate.get("depth"), head=kind != "embed")
    return rate["tokens_per_s"] * per_token, rate


def time_stages(stages: list[StagePlan], devices: dict[str, dict]) -> None:
    for st in stages:
        if st.flops is None or st.rate_kind is None or st.status.startswith("stored"):
            continue
        for name, device in devices.items():
            found = rate_flops_per_s(device, st.rate_kind)
            if found:
                st.seconds[name] = st.flops / found[0] + float(found[1].get("startup_s", 0))


# ---------------------------------------------------------------- models and artifacts


def plan_model(role: str, cfg, key: str, store: ArtifactStore, problems: list[str]) -> ModelPlan:
    """Where a model loads from, and its architecture: its own config.json when it is here,
    else the shipped config of that preset (config only: no weights needed)."""
    from .lm.models import load_tokenizer

    cfg = model_entry(cfg)
    loc = locate_model(cfg, key, store)
    if loc.fails:
        problems.append(f"{role}: {loc.note}")
    if loc.folder:
        tokenizer = None
        try:
            tokenizer = load_tokenizer(loc.folder)
        except (OSError, ValueError):
            pass
        return ModelPlan(role, loc, arch_from_config(loc.folder, cfg.get("name")), f"{loc.folder}/config.json", tokenizer)
    name = cfg.get("name") or (cfg.get("hub_id") or "").split("/")[-1]
    folder = config_only_dir(name)
    if folder is None:
        problems.append(f"{role}: no architecture to plan with: neither the model nor conf/backbone/configs/{name}/config.json is here")
        return ModelPlan(role, loc, None, "unknown")
    return ModelPlan(role, loc, arch_from_config(str(folder), name),
                     f"{folder.relative_to(REPO_ROOT)}/config.json (config only, no weights)")


def artifact_status(store: ArtifactStore, stage: str, key: str | None, why_unknown: str = "") -> str:
    if key is None:
        return f"to compute (key known at run time: {why_unknown})" if why_unknown else "to compute"
    if store.exists(stage, key):
        return "stored: reused"
    partial = store.root / stage / f"{key}.partial"
    done = len(list(partial.glob("bs*/batch*"))) if partial.is_dir() else 0
    return f"partial: {done} batches stored, the rest to compute" if done else "to compute"


@lru_cache(maxsize=8)
def _loaded_pool(pool_json: str, seed: int) -> tuple[list[dict], str]:
    """The pool's records and content key, loaded once per process (sweeps and tests plan many runs)."""
    records = load_pool(json.loads(pool_json), seed=seed).records
    return records, pool_content_key(records)


def pool_plan(cfg: DictConfig, problems: list[str]) -> tuple[list[dict], str | None, int, str]:
    """(records to plan with, pool key or None, pool size, note). A pool that cannot load here
    (hub-backed, offline) is planned at its known size with Alpaca 52K's texts as a stand-in."""
    pool = cfg.pool
    try:  # the section's JSON is the cache key of the loaded pool
        records, key = _loaded_pool(json.dumps(plain(pool), sort_keys=True), int(cfg.seed))
        return records, key, len(records), f"{len(records):,} records"
    except PoolError as err:
        problems.append(f"pool: {err}")
    rows = HUB_POOL_ROWS.get(pool.hub_id)
    if rows is None:
        raise PoolError(f"pool {pool.name!r} cannot be loaded here and its size is unknown to the plan")
    n = min(rows, pool.limit) if pool.limit is not None else rows
    stand_in, _ = _loaded_pool(json.dumps({"name": "alpaca", "loader": "alpaca", "limit": None,
                                           "path": str(data_dir() / "pools" / "alpaca_52k")}), 0)
    return (stand_in, None, n, f"{n:,} records (size of {pool.hub_id}; not loadable here, so token "
                               f"counts use Alpaca 52K's texts as a stand-in)")


# ---------------------------------------------------------------- stages of each scorer


def _fmt(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.3g}"


def sampling_stages(p: "Planner") -> list[StagePlan]:
    """ADG's samples and embeddings stages."""
    from .lm.sampling import samples_key, STAGE as SAMPLES

    sampler = p.cfg.sampler
    emb = typed(p.cfg.embedding)
    k, new, pmt = int(sampler.k), int(sampler.max_new_tokens), sampler.get("prompt_max_tokens")
    template = str(sampler.template)
    bb = p.backbone
    prompts = [render_prompt(r, template, bb.tokenizer) for r in p.records] if template != "chat" or bb.tokenizer \
        else [r["instruction"] for r in p.records]
    prompt_tokens = p.tokens.mean(prompts, int(pmt) if pmt else None)
    key, why = None, "the backbone's folder is not here"
    if bb.location.folder and p.pool_key:
        from .lm.prompts import template_hash

        key = samples_key(p.records, bb.location.folder, sampler, int(p.cfg.seed), template_hash(template, bb.tokenizer))
    elif not p.pool_key:
        why = "the pool is not loadable here"
    status = artifact_status(p.store, SAMPLES, key, why)
    answer_tokens = float(new)  # an upper bound: answers at T=1.4 mostly run to the limit
    answers_note = "answers taken at max_new_tokens (an upper bound)"
    if key and status.startswith("stored"):
        rows = p.store.records(SAMPLES, key)
        answer_tokens = float(np.mean([n for r in rows for n in r["answer_tokens"]]))
        answers_note = "answer lengths from the stored samples"
    n = p.n_pool
    generated = n * k * new
    gen_flops = bb.arch.forward_flops_per_token(prompt_tokens + new / 2) * n * k * answer_tokens \
        + bb.arch.forward_flops_per_token(prompt_tokens / 2) * n * prompt_tokens if bb.arch else None
    samples = StagePlan(
        SAMPLES, "selected", key, status, f"backbone via {sampler.name}",
        {"prompts": n, "k": k, "max_new_tokens": new, "generated_tokens_max": generated, "prompt_tokens_mean": prompt_tokens},
        f"{n:,} prompts x K={k} x {new} new tokens = {_fmt(generated)} tokens at most (prompts ~{prompt_tokens:.0f} tokens)",
        gen_flops, f"generate_{sampler.name}", selection=True,
    )
    instr = p.tokens.mean([r["instruction"] for r in p.records], emb.max_length)
    texts = n * k
    if emb.prefix_reuse and emb.text == "instruction+answer":
        embed_tokens = n * instr + texts * answer_tokens
        how = "instructions once + answers (prefix reuse)"
    else:
        embed_tokens = n * instr + texts * ((instr if emb.text == "instruction+answer" else 0) + answer_tokens)
        how = "instructions + whole texts"
    depth = None
    if bb.arch:
        depth = max(i % (bb.arch.n_layers + 1) for i in emb.layers)
        depth = min(depth, bb.arch.n_layers)
    flops = bb.arch.forward_flops_per_token((instr + answer_tokens) / 2, depth, head=False) * embed_tokens if bb.arch else None
    embeddings = StagePlan(
        "adg_embeddings", "selected", p.scores_meta.get("embedding_key"),
        "stored: reused" if p.scores_meta.get("embedding_key") else
        artifact_status(p.store, "adg_embeddings", None, "it hashes the sampled answers"),
        f"backbone in {emb.dtype}, {depth if depth is not None else '?'} layers deep, no LM head",
        {"texts": texts, "tokens": embed_tokens, "token_budget": emb.token_budget},
        f"{texts:,} texts, {_fmt(embed_tokens)} tokens ({how}; {answers_note})",
        flops, "embed", selection=True,
    )
    return [samples, embeddings, *bin_stage(p, instr)]


def bin_stage(p: "Planner", instr_tokens: float) -> list[StagePlan]:
    """ADG's bin embeddings (the release's embed.py recipe), an artifact of their own."""
    from .scorers.adg import BINS_STAGE, bins_key

    bins = typed(p.cfg.scorer).bins
    if bins.source != "release":
        return []
    bb = p.backbone
    key, why = None, "the backbone's folder is not here"
    if bb.location.folder and p.pool_key:
        key, _ = bins_key(p.records, bb.location.folder, bins)
    elif not p.pool_key:
        why = "the pool is not loadable here"
    tokens = p.n_pool * min(instr_tokens + 1, bins.max_length)
    depth = min(max(i % (bb.arch.n_layers + 1) for i in bins.layers), bb.arch.n_layers) if bb.arch else None
    flops = bb.arch.forward_flops_per_token(tokens / max(p.n_pool, 1) / 2, depth, head=False) * tokens if bb.arch else None
    return [StagePlan(
        BINS_STAGE, "selected", key, artifact_status(p.store, BINS_STAGE, key, why),
        f"backbone in {bins.dtype}, {depth if depth is not None else '?'} layers deep, no LM head",
        {"texts": p.n_pool, "tokens": tokens}, f"{p.n_pool:,} instructions, {_fmt(tokens)} tokens (release bin recipe)",
        flops, "embed", selection=True,
    )]


def loss_stage(p: "Planner", model: ModelPlan, unconditional: bool, label: str) -> StagePlan:
    """IFD, SuperFiltering, perplexity: one (or two) forward passes over prompt + answer."""
    s = p.cfg.scorer
    max_len = int(s.max_length)
    template = str(s.template)
    prompts = [render_prompt(r, template, model.tokenizer) if template not in ("plain", "chat")
               else r["instruction"] + "\n" + r["input"] for r in p.records]
    cond = p.tokens.mean([a + "\n" + b["output"] for a, b in zip(prompts, p.records)], max_len)
    answer = p.tokens.mean([r["output"] for r in p.records], max_len)
    tokens = p.n_pool * (cond + (answer if unconditional else 0))
    flops = model.arch.forward_flops_per_token(cond / 2) * tokens if model.arch else None
    return StagePlan("answer_losses", "selected", p.scores_meta.get("answer_losses_key"),
                     "stored: reused" if p.scores_meta.get("answer_losses_key")
                     else artifact_status(p.store, "answer_losses", None, "it hashes the tokenized pool"),
                     f"{model.role}", {"sequences": p.n_pool * (2 if unconditional else 1), "tokens": tokens},
                     f"{p.n_pool * (2 if unconditional else 1):,} sequences, {_fmt(tokens)} tokens ({label})",
                     flops, "forward", selection=True)


def instructmining_stages(p: "Planner") -> list[StagePlan]:
    """One stage per model-backed indicator of the rule (plus log_indicators); text-only ones are negligible."""
    s = typed(p.cfg.scorer)
    names = [*s.rule.coefficients, *[c for c in s.log_indicators or [] if c not in s.rule.coefficients]]
    specs = {**(s.indicators or {}), "reward": vars(s.reward)}
    out = []
    for name in names:
        spec = specs.get(name)
        if spec is None:
            raise SelectlabError(f"indicator {name!r} (scorer.rule or scorer.log_indicators) is not in scorer.indicators")
        kind = spec.get("kind")
        if kind in ("length", "mtld"):
            continue
        if "model" in spec:
            model = plan_model(f"indicator {name}", spec["model"], f"scorer.indicators.{name}.model", p.store, p.problems)
            p.models.append(model)
        else:
            model = p.backbone
        texts = [r["instruction"] + "\n" + r["input"] + "\n" + r["output"] for r in p.records]
        per = p.tokens.mean(texts, int(spec.get("max_length", 1024)))
        tokens = p.n_pool * per
        flops = model.arch.forward_flops_per_token(per / 2) * tokens if model.arch else None
        out.append(StagePlan("im_indicators", "selected", None,
                             artifact_status(p.store, "im_indicators", None, "the pool's key and the indicator spec"),
                             f"{name}: {model.role}", {"indicator": name, "kind": kind, "tokens": tokens},
                             f"{name} ({kind}): {p.n_pool:,} texts, {_fmt(tokens)} tokens", flops, "forward",
                             selection=True))
    return out


def scorer_stages(p: "Planner") -> list[StagePlan]:
    name = str(p.cfg.scorer.name)
    if name == "adg":
        return sampling_stages(p)
    if name == "ifd":
        return [loss_stage(p, p.backbone, True, "loss(A|Q) and loss(A)")]
    if name == "perplexity":
        return [loss_stage(p, p.backbone, False, "loss(A|Q)")]
    if name == "superfiltering":
        model = plan_model("scorer.model", p.cfg.scorer.model, "scorer.model", p.store, p.problems)
        p.models.append(model)
        return [loss_stage(p, model, True, "loss(A|Q) and loss(A) under the small scoring model")]
    if name == "instructmining":
        return instructmining_stages(p)
    return []  # random, length: no model work worth planning (hashing, tokenizing)


# ---------------------------------------------------------------- fine-tune and eval rows


def train_stage(p: "Planner", row: str, subset_key: str | None, budget: int, seed: int) -> StagePlan:
    from .lm.train import checkpoint_key

    tc = replace(typed(p.cfg.train), seed=seed)
    bb = p.backbone
    eff = tc.effective_batch_size or tc.per_device_batch_size * (tc.grad_accum or 1)
    per_example = p.tokens.mean([render_prompt(r, tc.template if tc.template != "chat" else "alpaca") + r["output"]
                                 for r in p.records], tc.max_length) + 1  # + EOS
    if tc.max_steps > 0:
        examples, steps = tc.max_steps * eff, tc.max_steps
    else:
        examples, steps = budget * tc.epochs, math.ceil(budget / eff) * tc.epochs
    tokens = examples * per_example
    key = None
    why = "it hashes the selected records"
    if subset_key and p.store.exists("subsets", subset_key) and bb.location.folder:
        records = p.store.records("subsets", subset_key) if (p.store.path("subsets", subset_key) / "records.jsonl").is_file() else None
        if records is not None:
            key = checkpoint_key(records, bb.location.folder, tc, bb.tokenizer, p.store,
                                 {"subset": subset_key, "backbone": plain(p.cfg.backbone)})
    flops = bb.arch.train_flops_per_token(per_example / 2, tc.method, tc.gradient_checkpointing) * tokens if bb.arch else None
    memory = ""
    if bb.arch:
        gib = bb.arch.params * (16 if tc.method == "full" else 4) / 2**30
        memory = (f"; fp32 weights{' + grads + AdamW (16 B/param)' if tc.method == 'full' else ' (LoRA: 4 B/param + adapters)'}"
                  f" = {gib:.0f} GiB before activations")
    return StagePlan("checkpoints", row, key, artifact_status(p.store, "checkpoints", key, why),
                     f"backbone, train.method={tc.method}",
                     {"examples": budget, "epochs": tc.epochs, "steps": steps, "tokens": tokens,
                      "tokens_per_example": per_example, "effective_batch": eff},
                     f"{budget:,} examples x {tc.epochs:g} epochs = {_fmt(tokens)} training tokens, {steps:,} steps "
                     f"of {eff}{memory}", flops, f"train_{tc.method}")


@lru_cache(maxsize=8)
def eval_requests(eval_json: str) -> list[dict]:
    """Per eval entry: documents, requests and generated tokens at most, from lm-eval's own task
    objects. Only selectlab's task folders are indexed (lm-eval's 14K built-in task files take
    minutes to index); an entry naming a built-in task is listed as not counted."""
    from lm_eval.tasks import TaskManager

    from .lm.evaluate import TASKS_DIR

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # one warning per MMLU subject otherwise
    ev = json.loads(eval_json)
    manager = TaskManager(include_path=[str(TASKS_DIR), *(ev.get("task_dirs") or [])], include_defaults=False)
    limit = ev.get("limit")
    gen_override = (ev.get("gen_kwargs") or {}).get("max_gen_toks")
    rows = []
    for key, entry in (ev.get("tasks") or {}).items():
        names = [entry["lm_eval"]] if isinstance(entry["lm_eval"], str) else list(entry["lm_eval"])
        unknown = [n for n in names if n not in manager.all_tasks]
        if unknown:
            rows.append({"task": key, "not_counted": f"{unknown}: not a selectlab task (lm-eval built-in, not indexed)"})
            continue
        leaves = manager.load(names)["tasks"]
        docs = requests = gen_tokens = 0
        for task in leaves.values():
            n_docs = min(len(task.eval_docs), int(limit)) if limit else len(task.eval_docs)
            docs += n_docs
            repeats = int(task.config.repeats or 1)
            if task.OUTPUT_TYPE == "generate_until":
                requests += n_docs * repeats
                max_gen = gen_override or (task.config.generation_kwargs or {}).get("max_gen_toks", 256)
                gen_tokens += n_docs * repeats * int(max_gen)
            elif task.OUTPUT_TYPE == "multiple_choice":
                requests += sum(len(task.doc_to_choice(task.eval_docs[i])) for i in range(n_docs))
            else:
                requests += n_docs
        rows.append({"task": key, "shots": entry["num_fewshot"], "docs": docs, "requests": requests,
                     "generated_tokens_max": gen_tokens})
    return rows


def eval_stage(p: "Planner", row: str, model_key: str | None, model_note: str) -> StagePlan:
    ev = plain(p.cfg.eval)
    tasks = eval_requests(json.dumps(ev, sort_keys=True, default=str))
    ok = [t for t in tasks if "not_counted" not in t]
    skipped = "".join(f"; {t['task']} not counted ({t['not_counted']})" for t in tasks if "not_counted" in t)
    requests = sum(t["requests"] for t in ok)
    gen = sum(t["generated_tokens_max"] for t in ok)
    model_path = p.store.path("checkpoints", model_key) if model_key else p.backbone.location.folder if row == "untrained" else None
    keys = list(task_keys(p.store, str(model_path), ev).values()) if model_path else []
    missing = [k for k in keys if not p.store.exists("evals", k)]
    key = missing[0] if missing else keys[-1] if keys else None
    status = artifact_status(p.store, "evals", key, "it names the fine-tuned model")
    if 0 < len(missing) < len(keys):
        status = f"partial: {len(keys) - len(missing)} of {len(keys)} tasks stored, the rest to compute"
    bb = p.backbone
    flops = bb.arch.forward_flops_per_token(1024) * gen if bb.arch else None
    detail = ", ".join(f"{t['task']} {t['docs']:,}/{t['requests']:,}" for t in ok)
    return StagePlan("evals", row, key, status,
                     model_note, {"requests": requests, "generated_tokens_max": gen, "tasks": tasks},
                     f"{requests:,} requests (docs/requests: {detail}); {_fmt(gen)} generated tokens at most "
                     f"(only these are timed){skipped}", flops, f"generate_{ev.get('backend', 'hf')}")


# ---------------------------------------------------------------- the plan


@dataclass
class Planner:
    cfg: DictConfig
    store: ArtifactStore
    problems: list[str]
    records: list[dict]
    pool_key: str | None
    n_pool: int
    backbone: ModelPlan
    tokens: TokenCounter
    models: list[ModelPlan] = field(default_factory=list)
    scores_meta: dict = field(default_factory=dict)

    def selection_stages(self, cfg: DictConfig, row: str) -> tuple[list[StagePlan], str | None, int]:
        """Scorer stages + scores + subsets for ``cfg`` (the run's, or the random baseline's)."""
        from .scorers import get_scorer

        get_scorer(str(cfg.scorer.name))  # an unknown scorer fails here, as in the run
        key = scores_key(cfg, self.pool_key) if self.pool_key else None
        self.scores_meta = (self.store.meta("scores", key).get("scorer_meta", {})
                            if key and self.store.exists("scores", key) else {})
        stages = scorer_stages(self) if row == "selected" else []
        why = "the pool is not loadable here"
        stages.append(StagePlan("scores", row, key, artifact_status(self.store, "scores", key, why),
                                None, {"examples": self.n_pool}, f"{self.n_pool:,} scores ({cfg.scorer.name})",
                                selection=True))
        skey, budget, selector = subsets_key(cfg, key or "unknown", self.n_pool)
        skey = skey if key else None
        work = f"select {budget:,} of {self.n_pool:,} ({selector['name']})"
        if selector["name"] == "fla":  # SuperFiltering.D: its dense kernel must fit in memory
            from .selectors.facility_location import kernel_gib, prefilter_size

            n = prefilter_size(self.n_pool, budget, selector)
            work += f"; facility location over {n:,} pre-filtered: dense kernel {kernel_gib(n):.2f} GiB"
        stages.append(StagePlan("subsets", row, skey, artifact_status(self.store, "subsets", skey, why), None,
                                {"budget": budget}, work, selection=True))
        return stages, skey, budget

    def scoring(self) -> "Planner":
        """The planner of the scorer's stages: this one, or with ``select.backbone`` one whose
        backbone is the scoring model (the stages' keys and FLOPs follow it)."""
        model = self.cfg.select.backbone
        if model is None:
            return self
        plan = plan_model("select.backbone", model, "select.backbone", self.store, self.problems)
        self.models.append(plan)
        tokens = TokenCounter(plan.tokenizer, plan.location.folder or "")
        return replace(self, cfg=with_sections(self.cfg, backbone=model), backbone=plan, tokens=tokens)

    def stages(self) -> list[StagePlan]:
        """The selection's stages, then each results row's (``stages.compare.planned_rows``) through
        the same ``ROW_STAGES`` the run walks."""
        scoring = self.scoring()
        stages, subset_key, budget = scoring.selection_stages(scoring.cfg, "selected")
        if self.cfg.eval.name == "none":
            return stages
        for row in planned_rows(self.cfg):
            state = {"budget": budget, "subset_key": subset_key}
            for stage in ROW_STAGES:
                if stage.applies(row):
                    planner = ROW_PLANNERS.get(stage.stage, unplanned)
                    planned, state = planner(self, row, state, stage.stage)
                    stages += planned
        return stages


def row_name(row: Row) -> str:
    return row.label if row.seed is None else f"{row.label} seed {row.seed}"


def plan_draw(p: Planner, row: Row, state: dict, _stage: str) -> tuple[list[StagePlan], dict]:
    planned, key, _ = p.selection_stages(random_baseline_cfg(p.cfg, state["budget"], row.seed), row_name(row))
    return planned, {**state, "subset_key": key}


def plan_train(p: Planner, row: Row, state: dict, _stage: str) -> tuple[list[StagePlan], dict]:
    train = train_stage(p, row_name(row), state["subset_key"], state["budget"], train_seed(p.cfg, row.seed))
    return [train], {**state, "model_key": train.key, "trained": True}


def plan_eval(p: Planner, row: Row, state: dict, _stage: str) -> tuple[list[StagePlan], dict]:
    note = f"the {row.label}-subset fine-tune" if state.get("trained") else "the untouched backbone"
    return [eval_stage(p, row_name(row), state.get("model_key"), note)], state


def unplanned(p: Planner, row: Row, state: dict, stage: str) -> tuple[list[StagePlan], dict]:
    """A row stage with no cost model here: listed, not timed."""
    return [StagePlan(stage, row_name(row), None, "not planned: no cost model in selectlab.plan.ROW_PLANNERS",
                      None, {}, f"{stage} (runs; its cost is not modelled)")], state


# How task=plan prices each of stages.compare.ROW_STAGES (the run's description of a row's stages).
ROW_PLANNERS = {"subsets": plan_draw, "checkpoints": plan_train, "evals": plan_eval}


def build_plan(cfg: DictConfig) -> dict:
    """The stages a run of ``cfg`` would take, their keys, status and cost (``validate`` has run)."""
    problems: list[str] = []
    store = ArtifactStore(Path(cfg.cache_dir))
    records, pool_key, n_pool, pool_note = pool_plan(cfg, problems)
    backbone = plan_model("backbone", cfg.backbone, "backbone", store, problems)
    counter = TokenCounter(backbone.tokenizer, backbone.location.folder or "")
    planner = Planner(cfg, store, problems, records, pool_key, n_pool, backbone, counter, [backbone])
    stages = planner.stages()
    devices = load_rates()
    time_stages(stages, devices)
    return {
        "pool": {"name": str(cfg.pool.name), "key": pool_key, "n": n_pool, "note": pool_note},
        "models": [{"role": m.role, "source": m.location.source, "folder": m.location.folder, "note": m.location.note,
                    "architecture": m.arch_note, "arch": m.arch.as_dict() if m.arch else None} for m in planner.models],
        "token_counts": counter.how,
        "stages": [asdict(s) for s in stages],
        "problems": problems,
        "devices": {name: {"label": d.get("label", name), "rates": {
            k: {"kind": r["kind"], "source": r.get("source", ""), "flops_per_s": rate_flops_per_s(d, k)[0]}
            for k, r in d["rates"].items()}} for name, d in devices.items()},
        "totals": totals(stages, devices),
    }


def totals(stages: list[StagePlan], devices: dict) -> dict:
    """Per device: hours of the selection (to the subset) and of everything, on one device."""
    out = {}
    for name in devices:
        sel = [s for s in stages if s.selection]
        out[name] = {
            "selection_hours": sum(s.seconds.get(name, 0) for s in sel) / 3600,
            "all_hours": sum(s.seconds.get(name, 0) for s in stages) / 3600,
            "untimed_stages": sorted({s.stage for s in stages if s.flops and name not in s.seconds
                                      and not s.status.startswith("stored")}),
        }
    return out


def render(plan: dict, cfg: DictConfig) -> str:
    lines = [f"PLAN (task=plan: nothing is loaded, computed or logged) — scorer {cfg.scorer.name}, "
             f"pool {plan['pool']['name']}, backbone {cfg.backbone.name}, train {cfg.train.name}, eval {cfg.eval.name}",
             f"pool: {plan['pool']['note']}; key {plan['pool']['key'] or '(unknown: pool not loadable here)'}",
             "models:"]
    for m in plan["models"]:
        arch = m["arch"]
        size = (f"{arch['params'] / 1e9:.2f}B params, {arch['n_layers']} layers, hidden {arch['hidden']}"
                if arch else "architecture unknown")
        lines.append(f"  {m['role']}: {m['note']}\n      architecture: {m['architecture']}: {size}")
    lines.append(f"token counts: {plan['token_counts']}")
    device_names = list(plan["devices"])
    lines.append("stages:")
    for s in plan["stages"]:
        times = "  ".join(f"{d} {_hours(s['seconds'][d])}" for d in device_names if d in s["seconds"])
        flops = f"{s['flops']:.3g} FLOPs" if s["flops"] else "-"
        lines.append(f"  [{s['row']}] {s['stage']} {s['key'] or '(key at run time)'}: {s['status']}")
        lines.append(f"      work: {s['work_text']}")
        if s["model"]:
            lines.append(f"      model: {s['model']}")
        lines.append(f"      cost: {flops}" + (f"; {times}" if times else ""))
    lines.append("expected wall time on ONE device of each kind (GPU-hours; divide by the device count):")
    for d in device_names:
        t = plan["totals"][d]
        lines.append(f"  {d} ({plan['devices'][d]['label']}): selection (sample/score/select) "
                     f"{t['selection_hours']:.2f} h, everything {t['all_hours']:.2f} h"
                     + (f"; not timed: {', '.join(t['untimed_stages'])}" if t["untimed_stages"] else ""))
    paper = PAPER_SELECTION_HOURS.get(str(cfg.scorer.name))
    if paper:
        lines.append(f"  the ADG paper reports {paper[0]} h on {paper[1]} GPUs ({paper[0] * paper[1]:.1f} GPU-h) for "
                     f"{cfg.scorer.name} on 52K examples")
    lines.append("rates (measured = bench/ ran it; assumed = a share of the device's peak, not measured):")
    for d, dev in plan["devices"].items():
        for kind, r in dev["rates"].items():
            lines.append(f"  {d} {kind}: {r['kind']}, {r['flops_per_s']:.3g} FLOP/s — {r['source']}")
    if plan["problems"]:
        lines.append("problems a real run would stop at:")
        lines += [f"  - {p}" for p in plan["problems"]]
    return "\n".join(lines)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.3g} h" if seconds >= 360 else f"{seconds:.3g} s"


def sweep_note() -> str | None:
    """The experiment's sweep grid, when Hydra composed one (each point is its own run)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        params = OmegaConf.to_plain(HydraConfig.get().sweeper.params or {})
    except (ValueError, AttributeError):
        return None
    if not params:
        return None
    n = math.prod(len(str(v).split(",")) for v in params.values())
    return f"sweep of {n} runs ({params}); this plan is the base config: `python src/run.py -m ... task=plan` plans each"


def plan_run(cfg: DictConfig) -> dict:
    """Entry of task=plan: print the plan, write ``<run_dir>/plan.json``, return it."""
    plan = build_plan(cfg)
    text = render(plan, cfg)
    note = sweep_note()
    if note:
        text += "\n" + note
    print(text, flush=True)
    run_dir = Path(cfg.run_dir)
    atomic_write_text(run_dir / "plan.json", json.dumps(plan, indent=2, default=str))
    return plan
