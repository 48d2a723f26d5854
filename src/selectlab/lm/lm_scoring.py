"""Mean cross-entropy of an answer's tokens under a causal LM, given a prefix (batched).

IFD, SuperFiltering and response perplexity all reduce to one quantity: the mean token
cross-entropy over the answer tokens of ``prefix + answer``, the prefix tokens masked.

Tokenization (``scorer.tokenize``): ``joined`` (the Cherry LLM and SuperFiltering releases)
tokenizes prefix + answer as one text and takes the answer's tokens to start after as many
tokens as the prefix alone has, so a token that straddles the boundary is scored as the joined
text splits it; the unconditional text is tokenized the same way and cut at ``max_length`` minus
the prompt's tokens plus ``uncond_length_offset`` (the releases' +4 / +1). ``apart`` tokenizes
prefix and answer separately, so loss(A|Q) and loss(A) score exactly the same answer ids.
Truncation keeps the prefix and cuts the answer's tail (as the releases' right truncation does);
when the prefix alone fills ``max_length`` no answer token is left and the loss is NaN (callers
count it).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import SelectlabError
from .prompts import render_prompt, template_hash
from ..infra.store import content_hash
from ..schema.scoring import TOKENIZE, IfdScorer, LmScorer

LOSSES_VERSION = 1

# SuperFiltering's released prompt ("none"): instruction, optional input, each on its own line.
PLAIN_NO_INPUT = "{instruction}\n"
PLAIN_WITH_INPUT = "{instruction}\n{input}\n"


def prompt_text(record: dict, template: str, tokenizer=None) -> str:
    """The conditioning prefix for ``record``: a :func:`render_prompt` template or ``plain``."""
    if template == "plain":
        inp = (record.get("input") or "").strip()
        fmt = PLAIN_WITH_INPUT if inp else PLAIN_NO_INPUT
        return fmt.format(instruction=record["instruction"], input=inp)
    return render_prompt(record, template, tokenizer)


def prompt_hash(template: str, tokenizer=None) -> str:
    if template == "plain":
        return content_hash({"plain": [PLAIN_NO_INPUT, PLAIN_WITH_INPUT]})
    return template_hash(template, tokenizer)


def bos_ids(tokenizer, add_bos: bool) -> list[int]:
    if not add_bos:
        return []
    if tokenizer.bos_token_id is None:
        raise SelectlabError(f"scorer.add_bos=true but the tokenizer {tokenizer.name_or_path!r} has no bos_token; "
                         "set scorer.add_bos=false")
    return [tokenizer.bos_token_id]




def encode_pair(tokenizer, prefix: str, answer: str, max_length: int, add_bos: bool,
                tokenize: str = "apart") -> tuple[list[int], list[int]]:
    """(prefix ids, answer ids) with the answer's tail cut so the whole fits in ``max_length``:
    prefix and answer tokenized ``apart``, or ``joined`` as the releases do (see the module doc)."""
    prefix_ids = bos_ids(tokenizer, add_bos) + tokenizer(prefix, add_special_tokens=False).input_ids
    if tokenize == "joined":
        whole = (bos_ids(tokenizer, add_bos) + tokenizer(prefix + answer, add_special_tokens=False).input_ids)[:max_length]
        start = min(len(prefix_ids), len(whole))
        return whole[:start], whole[start:]
    if tokenize != "apart":
        raise SelectlabError(f"scorer.tokenize={tokenize!r}; choose one of {TOKENIZE}")
    answer_ids = tokenizer(answer, add_special_tokens=False).input_ids
    return prefix_ids, answer_ids[: max(0, max_length - len(prefix_ids))]


def losses_from_ids(model, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int, pad_id: int) -> np.ndarray:
    """Mean cross-entropy over the answer tokens of each (prefix ids, answer ids) pair.

    Pairs are sorted by length and run ``batch_size`` at a time, right-padded with an
    attention mask (so positions need no adjustment). An answer token at position 0 (empty
    prefix) has nothing to be predicted from and is not scored; a pair with no scored
    token gives NaN.
    """
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    out = np.full(len(pairs), np.nan, dtype=np.float64)
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(pairs[i][0]) + len(pairs[i][1]) for i in rows)
        if width < 2:
            continue  # nothing can be predicted in any row: all stay NaN
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for r, i in enumerate(rows):
            prefix, answer = pairs[i]
            n = len(prefix) + len(answer)
            ids[r, :n] = torch.tensor(prefix + answer, dtype=torch.long)
            mask[r, :n] = 1
            labels[r, len(prefix) : n] = torch.tensor(answer, dtype=torch.long)
        targets = labels[:, 1:]
        scored = targets != -100
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            # Cross-entropy only where an answer token is predicted (not over prompt or padding).
            token_loss = F.cross_entropy(logits[:, :-1][scored.to(device)].float(), targets[scored].to(device),
                                         reduction="none").double().cpu()
        row_of = torch.arange(len(rows)).unsqueeze(1).expand_as(targets)[scored]
        sums = torch.zeros(len(rows), dtype=torch.float64).index_add_(0, row_of, token_loss)
        n_scored = scored.sum(dim=1)
        for r, i in enumerate(rows):
            if n_scored[r] > 0:
                out[i] = (sums[r] / n_scored[r]).item()
    return out


def answer_losses(model, tokenizer, prefixes: Sequence[str], answers: Sequence[str], max_length: int,
                  batch_size: int, add_bos: bool = True) -> np.ndarray:
    """Mean token cross-entropy of each answer given its prefix ("" = the answer alone)."""
    if len(prefixes) != len(answers):
        raise ValueError(f"{len(prefixes)} prefixes but {len(answers)} answers")
    pairs = [encode_pair(tokenizer, p, a, max_length, add_bos) for p, a in zip(prefixes, answers)]
    return losses_from_ids(model, pairs, batch_size, pad_id(tokenizer))


def pad_id(tokenizer) -> int:
    # Any id will do: padded positions are masked out of attention and of the loss.
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def pool_answer_losses(ctx, model_path: str, model_ident: dict, scfg: LmScorer, unconditional: bool) -> tuple[np.ndarray, dict]:
    """loss(A|Q), loss(A) and the answer's token count for every pool record, as an (N, 3) array.

    ``scfg`` is the scorer's typed config (an IFD scorer's also gives uncond_prefix, tokenize and
    uncond_length_offset; perplexity scores no unconditional loss and tokenizes apart). The conditional prefix is the rendered prompt; the
    unconditional one is ``uncond_prefix`` (after BOS when ``add_bos``) and it scores the
    same (truncated) answer ids. Records run longest first, ``chunk_size`` per resumable
    store batch, so a killed run redoes at most one chunk. loss(A) is NaN when
    ``unconditional`` is false.
    """
    from .models import default_device, load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model_path)
    template, add_bos, max_length = scfg.template, scfg.add_bos, scfg.max_length
    ifd = isinstance(scfg, IfdScorer)
    tokenize, offset = (scfg.tokenize, scfg.uncond_length_offset) if ifd else ("apart", 0)
    uncond_prefix = (scfg.uncond_prefix or "") if ifd and unconditional else ""
    records = ctx.pool.records
    cond = [encode_pair(tokenizer, prompt_text(r, template, tokenizer), r["output"], max_length, add_bos, tokenize)
            for r in records]
    uncond_prefix_ids = bos_ids(tokenizer, add_bos) + tokenizer(uncond_prefix, add_special_tokens=False).input_ids
    if tokenize == "joined":  # the answer alone, tokenized and cut as the releases do it
        uncond = [encode_pair(tokenizer, uncond_prefix, r["output"], max_length - len(cond[i][0]) + offset, add_bos,
                              "joined") for i, r in enumerate(records)]
    else:
        uncond = [(uncond_prefix_ids, answer) for _, answer in cond]
    order = sorted(range(len(records)), key=lambda i: -(len(cond[i][0]) + len(cond[i][1])))
    settings = {"template": template, "template_hash": prompt_hash(template, tokenizer), "add_bos": add_bos,
                "uncond_prefix": uncond_prefix, "max_length": max_length, "dtype": scfg.dtype,
                "unconditional": unconditional,
                **({"tokenize": tokenize, "uncond_length_offset": offset} if tokenize == "joined" else {})}
    key = ctx.store.key("answer_losses", LOSSES_VERSION, pool=ctx.pool_key, model=model_ident, **settings)
    device = scfg.device or default_device()
    model: list = []  # loaded on the first chunk that is not stored yet

    def compute(chunk: Sequence[int]) -> np.ndarray:
        if not model:
            model.append(load_causal_lm(model_path, scfg.dtype, device))
        batch_size = scfg.batch_size
        loss_cond = losses_from_ids(model[0], [cond[i] for i in chunk], batch_size, pad_id(tokenizer))
        loss_uncond = (losses_from_ids(model[0], [uncond[i] for i in chunk], batch_size, pad_id(tokenizer))
                       if unconditional else np.full(len(chunk), np.nan))
        n_tokens = np.array([len(cond[i][1]) for i in chunk], dtype=np.float64)
        return np.stack([loss_cond, loss_uncond, n_tokens], axis=1)

    folder = ctx.store.batched("answer_losses", key, order, scfg.chunk_size, compute,
                               meta={"model_path": model_path, **settings})
    table = np.empty((len(records), 3), dtype=np.float64)
    table[order] = np.load(folder / "array.npy")
    return table, {**settings, "model_path": model_path, "answer_losses_key": key}


def degenerate_mask(records: list[dict], n_answer_tokens: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, dict]:
    """Which examples have a usable ``values`` entry, and why the others do not (counted).

    empty_answer: the output text is empty; truncated_away: the prompt fills max_length, no
    answer token is left; nonfinite: any other NaN/inf (e.g. loss(A) = 0, or a one-token
    answer with nothing before it to predict it from).
    """
    empty = np.array([not r["output"].strip() for r in records], dtype=bool)
    truncated = ~empty & (n_answer_tokens == 0)
    nonfinite = ~empty & ~truncated & ~np.isfinite(values)
    counts = {"empty_answer": int(empty.sum()), "truncated_away": int(truncated.sum()),
              "nonfinite": int(nonfinite.sum())}
    return ~(empty | truncated | nonfinite), counts
