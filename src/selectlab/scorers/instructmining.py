"""InstructMining scorer: indicators -> linear rule -> rank by ascending predicted eval loss.

Only the indicators the rule uses (plus ``scorer.log_indicators``) are computed. Each is its
own artifact (stage ``im_indicator``; key = pool + that indicator's config + its model), so
changing one indicator recomputes only that one. Per-example indicators are batch-resumable.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from ..lm.backbone import resolve_model
from ..errors import SelectlabError
from ..instructmining import indicators as ind
from ..instructmining.rules import predicted_loss, validate_rule
from ..lm.models import default_device, load_causal_lm, load_tokenizer
from ..lm.prompts import render_prompt
from ..config import plain
from ..context import RunContext
from . import Scores, register

log = logging.getLogger(__name__)

VERSION = 1
STAGE = "im_indicator"
RESUME_EVERY = 256  # examples per resumable store batch; models run in spec.batch_size chunks inside it


class IndicatorConfigError(SelectlabError):
    pass


def resolve_model_dir(model: dict, key: str) -> str:
    """Local folder of an indicator's model (``key`` = its config entry, named in errors)."""
    return resolve_model(model, key, error=IndicatorConfigError)


def _model_key(name: str) -> str:
    return "scorer.reward.model" if name == "reward" else f"scorer.indicators.{name}.model"


def _question(record: dict) -> str:
    return record["instruction"] + (f"\n{record['input']}" if record["input"] else "")


def _text(record: dict, fields: list[str]) -> str:
    return "\n".join(record[f] for f in fields if record[f])


def _per_example(ctx: RunContext, name: str, spec: dict, model_id, flag: str | None,
                 compute: Callable[[list[dict]], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, dict]:
    """Cache one per-example indicator (values + a degenerate-case flag) and count NaN and flags."""
    spec_for_key = {k: v for k, v in spec.items() if k != "batch_size"}  # batching does not change values
    key = ctx.store.key(STAGE, VERSION, pool=ctx.pool_key, indicator=name, spec=spec_for_key, model=model_id)

    def batch(records):
        values, flags = compute(list(records))
        return np.column_stack([np.asarray(values, np.float64), np.asarray(flags, np.float64)])

    folder = ctx.store.batched(STAGE, key, ctx.pool.records, RESUME_EVERY, batch,
                               {"indicator": name, "kind": spec["kind"]})
    table = np.load(Path(folder) / "array.npy")
    values = table[:, 0]
    counts = {f"{name}_nan": int(np.isnan(values).sum())}
    if flag:
        counts[f"{name}_{flag}"] = int(table[:, 1].sum())
    return values, counts


def _chunked(records: list, size: int, score: Callable[[list], np.ndarray]):
    """Run ``score`` over model-sized chunks; these indicators have no degenerate flag (stored as 0)."""
    values = np.concatenate([score(records[i:i + size]) for i in range(0, len(records), size)])
    return values, np.zeros(len(records))


class _Lazy:
    """Load a model only if some batch has to be computed (cached artifacts need none)."""

    def __init__(self, load: Callable):
        self._load, self._value = load, None

    def __call__(self):
        if self._value is None:
            self._value = self._load()
        return self._value


def _backbone_loaders(ctx: RunContext) -> dict[str, _Lazy]:
    """Judge, perplexity and token lengths share one backbone load (lengths need only its tokenizer)."""
    tokenizer = _Lazy(lambda: load_tokenizer(ctx.backbone(), "right"))
    model = _Lazy(lambda: load_causal_lm(ctx.backbone(), str(getattr(ctx.cfg.backbone, "dtype", None) or "float32")))
    return {"tokenizer": tokenizer, "backbone": _Lazy(lambda: (model(), tokenizer()))}


def length_indicator(ctx, name, spec, shared):
    fields, unit = list(spec["fields"]), spec["unit"]
    if unit not in ("tokens", "words"):
        raise IndicatorConfigError(f"scorer.indicators.{name}.unit={unit!r}; choose tokens or words")
    tok = shared["tokenizer"]

    def compute(records):
        texts = [_text(r, fields) for r in records]
        if unit == "words":
            n = [len(t.split()) for t in texts]
        else:
            n = [len(tok()(t, add_special_tokens=False)["input_ids"]) for t in texts]
        return np.array(n, np.float64), np.array([not t for t in texts])

    model_id = plain(ctx.cfg.backbone) if unit == "tokens" else None
    return _per_example(ctx, name, spec, model_id, "empty", compute)


def perplexity_indicator(ctx, name, spec, shared):
    from ..lm.lm_scoring import encode_pair, losses_from_ids, pad_id

    def compute(records):
        model, tok = shared["backbone"]()
        pairs, truncated = [], []
        for r in records:
            answer = spec["answer_separator"] + r["output"] if r["output"] else ""
            pair = encode_pair(tok, render_prompt(r, spec["template"], tok), answer, int(spec["max_length"]),
                               bool(spec["add_bos"]))
            pairs.append(pair)
            truncated.append(len(pair[1]) < len(tok(answer, add_special_tokens=False).input_ids))
        return np.exp(losses_from_ids(model, pairs, int(spec["batch_size"]), pad_id(tok))), np.array(truncated)

    return _per_example(ctx, name, spec, plain(ctx.cfg.backbone), "truncated", compute)


def mtld_indicator(ctx, name, spec, shared):
    threshold = float(spec["threshold"])
    field = spec.get("field", "output")

    def compute(records):
        return (np.array([ind.mtld(r[field], threshold) for r in records]),
                np.array([ind.mtld_undefined(r[field]) for r in records]))

    return _per_example(ctx, name, spec, None, "all_words_distinct", compute)


def knn_indicator(ctx, name, spec, shared):
    model_dir = resolve_model_dir(spec["model"], _model_key(name))
    fields = list(spec["fields"])
    embed_spec = {k: spec[k] for k in ("model", "fields", "max_length")}
    embed_key = ctx.store.key("im_sbert_embeddings", VERSION, pool=ctx.pool_key, spec=embed_spec)

    def load():
        from transformers import AutoModel, AutoTokenizer

        return AutoModel.from_pretrained(model_dir).to(default_device()).eval(), AutoTokenizer.from_pretrained(model_dir)

    sbert = _Lazy(load)
    folder = ctx.store.batched(
        "im_sbert_embeddings", embed_key, ctx.pool.records, int(spec["batch_size"]),
        lambda records: ind.sentence_embeddings(*sbert(), [_text(r, fields) for r in records], int(spec["max_length"])),
        {"model_dir": model_dir},
    )
    embeddings = np.load(Path(folder) / "array.npy", mmap_mode="r")
    k = int(spec["k"])
    key = ctx.store.key(STAGE, VERSION, pool=ctx.pool_key, indicator=name, k=k, metric=spec["metric"],
                        embeddings=embed_key)

    def make(tmp: Path) -> dict:
        np.save(tmp / "array.npy", ind.knn_distances(embeddings, k, int(spec["block_rows"]), spec["metric"]))
        return {"indicator": name, "k": k}

    values = np.load(ctx.store.build(STAGE, key, make) / "array.npy")
    return values, {f"{name}_nan": int(np.isnan(values).sum()), f"{name}_zero_distance": int((values == 0).sum())}


def judge_ratings(ctx, name, spec, load: Callable, model_id) -> tuple[np.ndarray, dict]:
    """Expected 1..``spec.scale`` rating of every pool record by the causal LM ``load()`` returns
    (model, tokenizer), prompted with ``spec.question_template``; cached per (pool, name, spec, model).
    Shared by InstructMining's judge and DEITA's complexity and quality scorers."""
    use_chat = bool(spec["use_chat_template"])

    def compute(records):
        model, tok = load()
        digits = ind.digit_token_ids(tok, int(spec["scale"]))
        prompts = [ind.judge_prompt(r, spec["question_template"], tok, use_chat) for r in records]
        return ind.prompt_ratings(model, tok, prompts, digits, int(spec["batch_size"]), not use_chat), \
            np.zeros(len(records))  # no degenerate flag (stored as 0)

    return _per_example(ctx, name, spec, model_id, None, compute)


def judge_indicator(ctx, name, spec, shared):
    log.warning("indicator %r: the backbone as a JUDGE (expected 1-%d rating, DEITA style) SUBSTITUTES for the "
                "paper's reward model; published rule coefficients were fitted on a reward model's scale",
                name, spec["scale"])
    return judge_ratings(ctx, name, spec, shared["backbone"], plain(ctx.cfg.backbone))


def reward_model_indicator(ctx, name, spec, shared):
    model_dir = resolve_model_dir(spec["model"], _model_key(name))

    def load():
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(model_dir).to(default_device()).eval()
        return model, AutoTokenizer.from_pretrained(model_dir)

    rm = _Lazy(load)

    def compute(records):
        model, tok = rm()
        return _chunked(records, int(spec["batch_size"]), lambda rs: ind.reward_model_scores(
            model, tok, [_question(r) for r in rs], [r["output"] for r in rs], int(spec["max_length"]),
            spec.get("input_template")))

    return _per_example(ctx, name, spec, spec["model"], None, compute)


def unieval_indicator(ctx, name, spec, shared):
    model_dir = resolve_model_dir(spec["model"], _model_key(name))

    def load():
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        return AutoModelForSeq2SeqLM.from_pretrained(model_dir).to(default_device()).eval(), \
            AutoTokenizer.from_pretrained(model_dir)

    t5 = _Lazy(load)

    def compute(records):
        model, tok = t5()
        return _chunked(records, int(spec["batch_size"]), lambda rs: ind.unieval_scores(
            model, tok, spec["dimension"], [_question(r) for r in rs], [r["output"] for r in rs],
            int(spec["max_length"])))

    return _per_example(ctx, name, spec, spec["model"], None, compute)


KINDS = {"length": length_indicator, "perplexity": perplexity_indicator, "mtld": mtld_indicator,
         "knn": knn_indicator, "judge": judge_indicator, "reward_model": reward_model_indicator,
         "unieval": unieval_indicator}


def compute_indicators(ctx: RunContext, names: list[str]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The named indicator columns (``reward`` comes from ``scorer.reward``, the rest from ``scorer.indicators``)."""
    scfg = ctx.cfg.scorer
    specs = {**plain(getattr(scfg, "indicators", None) or {}), "reward": plain(scfg.reward)}
    for name in names:  # check every indicator and find every model before hours of work on the first
        if name not in specs:
            raise IndicatorConfigError(f"indicator {name!r} (used by scorer.rule {getattr(scfg.rule, 'name', None)!r} or "
                                       f"scorer.log_indicators) is not configured in scorer.indicators; "
                                       f"configured: {sorted(specs)}")
        if specs[name].get("kind") not in KINDS:
            raise IndicatorConfigError(f"scorer indicator {name!r}: kind={specs[name].get('kind')!r}; "
                                       f"choose one of {sorted(KINDS)}")
        if "model" in specs[name]:
            resolve_model_dir(specs[name]["model"], _model_key(name))
    shared = _backbone_loaders(ctx)
    columns, counts = {}, {}
    for name in names:
        columns[name], c = KINDS[specs[name]["kind"]](ctx, name, specs[name], shared)
        counts.update(c)
    return columns, counts


@register("instructmining", reads=("backbone",))
def score_instructmining(ctx: RunContext) -> Scores:
    rule = validate_rule(plain(ctx.cfg.scorer.rule))
    extra = [c for c in (getattr(ctx.cfg.scorer, "log_indicators", None) or []) if c not in rule["coefficients"]]
    columns, counts = compute_indicators(ctx, [*rule["coefficients"], *extra])
    predicted = predicted_loss(columns, rule)
    counts["predicted_loss_nan"] = int(np.isnan(predicted).sum())
    reward = ctx.cfg.scorer.reward
    log.info("InstructMining rule %r (target %s): %s; indicator scaling: %s", rule["name"], rule.get("target"),
             rule.get("provenance", "").strip(), rule.get("scaling", "unknown"))
    return Scores(
        ids=[r["id"] for r in ctx.pool.records],
        score=-predicted,  # lower predicted eval loss = better data = selected first
        columns={**columns, "predicted_loss": predicted},
        counts=counts,
        meta={"rule": rule, "reward": reward.name, "reward_is_substitute": reward.kind == "judge"},
    )
