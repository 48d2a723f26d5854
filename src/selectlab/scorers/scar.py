"""SCAR (Li et al. 2025, zhuang-li/SCAR; PyPI ``scar-tool``): style-consistency-aware response ranking.

The score of an (instruction, answer) pair is the released StyleRanker's output: an encoder
embeds the instruction and the answer separately (pooler output, else the first token); a
relation network maps [instruction; answer] to a "creativity style" vector; the answer's
token states max-pooled over its mask give a "presentation style" vector; an MLP maps the two
to one number. Highest first, as ``style_ranker.rank.rank_pairs``. The model class is the
release's own (``style_ranker.ranker.model.StyleRanker``, installed ``--no-deps``), and the
weights live on the hub (``scorer.model``: ``lizhuang144/scar-gte-base`` by default); offline
they, and the encoder the ranker's config names, must already be in the local Hugging Face
cache or at ``scorer.model.path``.

Before ranking, the release's filter pipeline (examples/filter_pipeline.py) drops exact
duplicate (instruction, answer) pairs and pairs whose instruction or answer is under 70%
ASCII letters ("not English"); both are config keys, and the dropped pairs are counted and
not selectable (NaN score; their ranker output stays in the ``ranker`` column). The optional
LSH near-deduplication is not run (the release's script skips it: ``--skip_deduplication``).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ..lm.backbone import resolve_model
from ..errors import SelectlabError
from ..texts import example_text
from ..lm.models import default_device
from ..config import plain
from ..context import RunContext
from ..schema.models import NamedHubModel
from ..schema.scoring import ScarScorer
from . import Scores, register

log = logging.getLogger(__name__)

VERSION = 1
ASCII_LETTER = re.compile(r"[a-zA-Z]")


class ScarError(SelectlabError):
    pass


def english_percent(text: str) -> float:
    """The release's language heuristic: share of ASCII letters among all characters, in percent."""
    return 100.0 * len(ASCII_LETTER.findall(text)) / len(text) if text else 0.0


def release_filters(questions: Sequence[str], answers: Sequence[str], dedupe: bool,
                    english_min_percent: float | None) -> tuple[np.ndarray, dict]:
    """Which pairs survive the release's pre-ranking filters, and how many each filter dropped.

    Exact duplicates of (stripped instruction, stripped answer) keep their first occurrence; a pair is
    "English" when both texts have more than ``english_min_percent`` letters (None: no check)."""
    keep = np.ones(len(questions), dtype=bool)
    seen: set[tuple[str, str]] = set()
    duplicates = non_english = 0
    for i, (q, a) in enumerate(zip(questions, answers)):
        pair = (q.strip(), a.strip())
        if dedupe and pair in seen:
            keep[i] = False
            duplicates += 1
            continue
        seen.add(pair)
        if english_min_percent is not None and not (english_percent(q) > english_min_percent
                                                    and english_percent(a) > english_min_percent):
            keep[i] = False
            non_english += 1
    return keep, {"duplicate_pair": duplicates, "non_english": non_english}


def _style_ranker_classes():
    try:
        from style_ranker.ranker.config import StyleRankerConfig
        from style_ranker.ranker.model import StyleRanker
    except ImportError:
        raise ScarError("scorer=scar needs the release's model code: pip install --no-deps scar-tool==0.35") from None
    return StyleRanker, StyleRankerConfig


def check_encoder(model_dir: str, model_cfg: NamedHubModel) -> None:
    """StyleRanker builds its encoder from ``encoder_name`` in its config before loading the weights:
    a hub id there must be in the local cache too (or downloadable), else fail now, naming the key."""
    encoder = json.loads((Path(model_dir) / "config.json").read_text()).get("encoder_name")
    if not encoder:
        raise ScarError(f"scorer.model: {model_dir}/config.json names no encoder_name; not a StyleRanker")
    if Path(encoder).is_dir():
        return
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot_download(encoder, local_files_only=True)
    except LocalEntryNotFoundError:
        if not model_cfg.allow_download:
            raise ScarError(f"scorer.model: the ranker builds on the encoder {encoder}, which is not in the local "
                            f"Hugging Face cache; set scorer.model.allow_download=true on a machine that is online "
                            f"(with HF_HUB_OFFLINE=0)") from None


def load_ranker(model_dir: str, device: str):
    """The release's StyleRanker with its saved weights (every parameter must be present)."""
    import torch
    from transformers import AutoTokenizer

    StyleRanker, StyleRankerConfig = _style_ranker_classes()
    model = StyleRanker(StyleRankerConfig.from_pretrained(model_dir))
    state = torch.load(Path(model_dir) / "pytorch_model.bin", map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise ScarError(f"scorer.model: {model_dir}/pytorch_model.bin lacks {len(missing)} weights, e.g. {missing[:3]}")
    if unexpected:
        log.info("SCAR: %d unused entries in the checkpoint (e.g. %s)", len(unexpected), unexpected[:3])
    return model.to(device).eval(), AutoTokenizer.from_pretrained(model_dir)


def ranker_scores(model, tokenizer, questions: Sequence[str], answers: Sequence[str], max_length: int,
                  batch_size: int) -> np.ndarray:
    """StyleRanker outputs, batch by batch as the release's ``score_pairs`` (instruction and answer
    tokenized separately, padded, cut to ``max_length``)."""
    import torch

    device = next(model.parameters()).device
    out = []
    for start in range(0, len(questions), batch_size):
        q = tokenizer(list(questions[start : start + batch_size]), return_tensors="pt", padding=True,
                      truncation=True, max_length=max_length).to(device)
        a = tokenizer(list(answers[start : start + batch_size]), return_tensors="pt", padding=True,
                      truncation=True, max_length=max_length).to(device)
        with torch.no_grad():
            out.append(model(q.input_ids, q.attention_mask, a.input_ids, a.attention_mask).reshape(-1).float().cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


@register("scar", reads=("backbone",))
def score_scar(ctx: RunContext) -> Scores:
    scfg: ScarScorer = ctx.cfg.scorer
    model_cfg = scfg.model
    model_dir = resolve_model(model_cfg, "scorer.model", ctx.store, error=ScarError)
    _style_ranker_classes()
    check_encoder(model_dir, model_cfg)
    records = ctx.pool.records
    questions = [example_text(r, scfg.text) for r in records]
    answers = [r["output"] for r in records]
    keep, counts = release_filters(questions, answers, scfg.dedupe, scfg.english_min_percent)
    max_length, batch_size = scfg.max_length, scfg.batch_size
    device = scfg.device or default_device()
    key = ctx.store.key("scar_scores", VERSION, pool=ctx.pool_key, model=plain(model_cfg), text=scfg.text,
                        max_length=max_length)
    ranker: list = []  # loaded on the first batch that is not stored yet

    def compute(idx: Sequence[int]) -> np.ndarray:
        if not ranker:
            ranker.append(load_ranker(model_dir, device))
        return ranker_scores(*ranker[0], [questions[i] for i in idx], [answers[i] for i in idx], max_length,
                             batch_size)

    folder = ctx.store.batched("scar_scores", key, list(range(len(records))), scfg.chunk_size, compute,
                               meta={"model_dir": model_dir})
    raw = np.load(folder / "array.npy")
    counts["ranker_nan"] = int(np.isnan(raw).sum())
    log.info("SCAR: %d of %d pairs rankable (%d duplicates, %d not English by the release's heuristic)",
             int(keep.sum()), len(records), counts["duplicate_pair"], counts["non_english"])
    return Scores(ids=[r["id"] for r in records], score=np.where(keep, raw, np.nan), columns={"ranker": raw},
                  counts=counts, meta={"model_dir": model_dir, "filters": {"dedupe": scfg.dedupe,
                                                                         "english_min_percent": scfg.english_min_percent}})
