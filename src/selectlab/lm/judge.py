"""A judge: a language model asked one fixed question about each example (conf/judge/).

Two backends behind one interface, :func:`ask` (cached, batched, resumable):

- ``openai``: any OpenAI-compatible chat endpoint (OpenAI itself, or ``vllm serve`` on a
  cluster) through the ``openai`` client. It generates freely at the request's temperature
  and max_tokens; the text is mapped to an allowed answer afterwards (:func:`release_category`,
  :func:`answered_digit`).
- ``local``: a transformers causal LM that never generates. It scores every allowed answer
  (a category name, a rating digit) by its log-likelihood right after the prompt, so a small
  model cannot wander off the list: the category is the most likely name, the rating the
  expected value sum_s s * softmax_s(log p(s)) (DEITA's scorer for single-token digits).

Each answer is an artifact (stage ``judge_answers``) keyed by the judge's identity and the
request's content, written as soon as its batch finishes: a killed job resumes where it
stopped (the content-addressed form of the release's checkpoint file), and a prompt asked
twice (a subset overlapping another) is asked once. API errors that can pass (connection,
timeout, HTTP 429, 5xx) are retried with exponential backoff; any other error, or retries
running out, raises :class:`JudgeError`: no answer is invented (the release instead labels a
failed request "Others").
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from ..errors import SelectlabError
from ..infra.store import ArtifactStore

log = logging.getLogger(__name__)

STAGE = "judge_answers"
VERSION = 1


class JudgeError(SelectlabError):
    """A judge that cannot answer (bad config, unreachable server, an error that is not transient)."""


@dataclass(frozen=True)
class Request:
    """One question to the judge: a chat (optional system turn, one user turn) and its allowed answers."""

    user: str
    options: tuple[str, ...]
    system: str | None = None
    temperature: float = 0.0
    max_tokens: int = 20

    def messages(self) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": self.user}]

    def content(self) -> dict:
        return {"messages": self.messages(), "options": list(self.options), "temperature": self.temperature,
                "max_tokens": self.max_tokens}


class Judge(Protocol):
    name: str

    def identity(self) -> dict:
        """What decides the answers (the cache key): backend, model, endpoint; never a secret."""

    def answer(self, requests: Sequence[Request]) -> list[dict]:
        """One JSON-able raw answer per request (the cached form)."""

    def category(self, raw: dict, options: Sequence[str]) -> str:
        """The allowed option a raw answer stands for."""

    def rating(self, raw: dict, scale: Sequence[int]) -> float:
        """The rating a raw answer stands for (NaN when the answer holds none)."""


# ---- the release's mapping of free-text answers -------------------------------------------

def release_category(text: str, categories: Sequence[str], fallback: str = "Others") -> str:
    """ADG's analyse.py: the stripped answer when it is a category; else the first category
    (list order) whose lower-cased name contains the answer or is contained in it; else
    ``fallback``. Kept exactly, quirk included: an empty answer is contained in every name, so
    it maps to the first category (counted by :func:`classify` as ``empty_answer``)."""
    answer = text.strip()
    if answer in categories:
        return answer
    lower = answer.lower()
    for name in categories:
        if name.lower() in lower or lower in name.lower():
            return name
    return fallback


def answered_digit(text: str, scale: Sequence[int]) -> float:
    """The first character of the answer that is a digit of ``scale`` (NaN when there is none)."""
    allowed = {str(s) for s in scale}
    return next((float(ch) for ch in text if ch in allowed), float("nan"))


# ---- openai: any OpenAI-compatible endpoint -----------------------------------------------

class OpenAIJudge:
    """Chat completions through the ``openai`` client, ``concurrency`` requests in flight."""

    def __init__(self, cfg: dict):
        import openai

        for key in ("model", "base_url"):
            if not cfg.get(key):
                raise JudgeError(f"judge.{key} is not set (judge=openai needs judge.model and judge.base_url, "
                                 f"e.g. https://api.openai.com/v1 or http://node:8000/v1 for `vllm serve`)")
        self.name = str(cfg.get("name") or cfg["model"])
        self.model, self.base_url = str(cfg["model"]), str(cfg["base_url"])
        self.concurrency = int(cfg.get("concurrency", 8))
        self.max_retries = int(cfg.get("max_retries", 6))
        self.backoff_s, self.max_backoff_s = float(cfg.get("backoff_s", 1.0)), float(cfg.get("max_backoff_s", 60.0))
        self.seed = cfg.get("seed")
        self._retryable = (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)
        self._api_error = openai.APIError
        # The client's own retries are off: ours count and log them, with the backoff configured here.
        self.client = openai.OpenAI(base_url=self.base_url, api_key=_api_key(cfg.get("api_key_env")),
                                    max_retries=0, timeout=float(cfg.get("timeout_s", 120)))
        self.retries = 0  # retries sent by this judge (all threads)
        self._count = threading.Lock()

    def identity(self) -> dict:
        return {"kind": "openai", "base_url": self.base_url, "model": self.model, "seed": self.seed}

    def _complete(self, request: Request) -> dict:
        extra = {} if self.seed is None else {"seed": int(self.seed)}
        for attempt in range(self.max_retries + 1):
            try:
                response = self.client.chat.completions.create(
                    model=self.model, messages=request.messages(), temperature=request.temperature,
                    max_tokens=request.max_tokens, **extra)
                return {"text": response.choices[0].message.content or "", "attempts": attempt + 1}
            except self._retryable as e:
                if attempt == self.max_retries:
                    raise JudgeError(f"judge {self.model} at {self.base_url}: still failing after "
                                     f"{self.max_retries} retries ({type(e).__name__}: {e}); the answers so far "
                                     "are cached, run again to resume") from e
                wait = min(self.max_backoff_s, self.backoff_s * 2 ** attempt)
                with self._count:
                    self.retries += 1
                log.warning("judge %s: %s, retry %d/%d in %.2fs", self.model, type(e).__name__, attempt + 1,
                            self.max_retries, wait)
                time.sleep(wait)
            except self._api_error as e:  # 400/401/404...: retrying cannot help
                raise JudgeError(f"judge {self.model} at {self.base_url}: {type(e).__name__}: {e} "
                                 "(check judge.model, judge.base_url and the key in judge.api_key_env)") from e
        raise AssertionError("unreachable")

    def answer(self, requests: Sequence[Request]) -> list[dict]:
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return list(pool.map(self._complete, requests))

    def category(self, raw: dict, options: Sequence[str]) -> str:
        return release_category(raw["text"], options)

    def rating(self, raw: dict, scale: Sequence[int]) -> float:
        return answered_digit(raw["text"], scale)


def _api_key(env_name: str | None) -> str:
    """The key from the environment variable named by ``judge.api_key_env`` (the key itself is
    never in a config, a cache key or a log). ``null``: a server without keys (plain ``vllm serve``)."""
    if not env_name:
        return "EMPTY"
    key = os.environ.get(str(env_name))
    if not key:
        raise JudgeError(f"judge.api_key_env={env_name}: the environment variable {env_name} is not set; export "
                         "it, or set judge.api_key_env=null for a server that takes no key")
    return key


# ---- local: likelihood of the allowed answers ---------------------------------------------

class LocalJudge:
    """A transformers causal LM scoring each allowed answer after the prompt (no generation)."""

    def __init__(self, cfg: dict, store: ArtifactStore):
        if not isinstance(cfg.get("model"), dict):
            raise JudgeError("judge.model must be a model entry (path | gguf_package + gguf_file | hub_id) for "
                             "judge=local")
        self.cfg, self.store = cfg, store
        self.name = str(cfg.get("name") or cfg["model"].get("name") or "local")
        self.template = str(cfg.get("template", "chat"))
        if self.template not in ("chat", "plain"):
            raise JudgeError(f"judge.template={self.template!r}: chat | plain")
        self._loaded = None

    def identity(self) -> dict:
        model = {k: self.cfg["model"].get(k) for k in ("name", "path", "gguf_file", "hub_id", "revision")}
        return {"kind": "local", "model": model, "dtype": self.cfg.get("dtype", "float32"), "template": self.template}

    def _load(self):
        if self._loaded is None:
            from .backbone import resolve_model
            from .models import load_causal_lm, load_tokenizer

            path = resolve_model(self.cfg["model"], "judge.model", self.store, error=JudgeError)
            self._loaded = (load_causal_lm(path, str(self.cfg.get("dtype", "float32")), self.cfg.get("device")),
                            load_tokenizer(path))
        return self._loaded

    def prompt_text(self, request: Request, tokenizer) -> str:
        if self.template == "plain":
            return "\n\n".join([*([request.system] if request.system else []), request.user]) + "\n"
        if not getattr(tokenizer, "chat_template", None):
            raise JudgeError("judge.template=chat needs a tokenizer with a chat template; set judge.template=plain")
        return tokenizer.apply_chat_template(request.messages(), tokenize=False, add_generation_prompt=True)

    def answer(self, requests: Sequence[Request]) -> list[dict]:
        model, tokenizer = self._load()
        out = []
        for request in requests:
            prompt = tokenizer(self.prompt_text(request, tokenizer), add_special_tokens=False)["input_ids"]
            options = [tokenizer(o, add_special_tokens=False)["input_ids"] for o in request.options]
            out.append({"logprobs": option_logprobs(model, prompt, options)})
        return out

    def category(self, raw: dict, options: Sequence[str]) -> str:
        return options[int(np.argmax(raw["logprobs"]))]

    def rating(self, raw: dict, scale: Sequence[int]) -> float:
        lp = np.asarray(raw["logprobs"], dtype=np.float64)
        p = np.exp(lp - lp.max())
        return float((p / p.sum()) @ np.asarray(scale, dtype=np.float64))


def option_logprobs(model, prompt_ids: list[int], options: list[list[int]]) -> list[float]:
    """log p(option | prompt), summed over the option's tokens, for each option.

    The prompt runs once; each multi-token option then continues the prompt's key/value cache
    (cropped back to the prompt before the next option), so ten category names cost ten short
    forwards, not ten prompts.
    """
    import torch

    device = next(model.parameters()).device
    n = len(prompt_ids)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompt_ids], device=device), use_cache=True)
        first = torch.log_softmax(out.logits[0, -1].double(), -1)
        cache, values = out.past_key_values, []
        for ids in options:
            if not ids:
                raise JudgeError("an allowed answer is empty after tokenization")
            total = first[ids[0]].item()
            if len(ids) > 1:
                cont = model(input_ids=torch.tensor([ids[:-1]], device=device), past_key_values=cache, use_cache=True)
                steps = torch.log_softmax(cont.logits[0].double(), -1)
                total += steps[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum().item()
                cache.crop(-(len(ids) - 1))  # back to the prompt alone for the next option
                if cache.get_seq_length() != n:
                    raise RuntimeError(f"key/value cache holds {cache.get_seq_length()} positions after crop, not {n}")
            values.append(total)
    return values


# ---- building, caching, asking ------------------------------------------------------------

def make_judge(cfg: dict, store: ArtifactStore) -> Judge:
    kind = cfg.get("kind")
    if kind == "openai":
        return OpenAIJudge(cfg)
    if kind == "local":
        return LocalJudge(cfg, store)
    raise JudgeError(f"judge.kind={kind!r}: openai | local")


def ask(judge: Judge, requests: Sequence[Request], store: ArtifactStore, batch_size: int = 32) -> list[dict]:
    """The raw answer to every request: cached ones read back, the rest asked ``batch_size`` at
    a time, each batch stored before the next is sent (a killed job loses at most one batch)."""
    identity = judge.identity()
    keys = [store.key(STAGE, VERSION, judge=identity, request=r.content()) for r in requests]
    first_asked: dict[str, int] = {}  # a request asked twice is sent once
    for i, k in enumerate(keys):
        if k not in first_asked and not store.exists(STAGE, k):
            first_asked[k] = i
    missing = list(first_asked.values())
    if missing:
        log.info("judge %s: %d of %d answers cached, asking %d", judge.name, len(requests) - len(missing),
                 len(requests), len(missing))
    for start in range(0, len(missing), batch_size):
        batch = missing[start:start + batch_size]
        for i, raw in zip(batch, judge.answer([requests[i] for i in batch])):
            store.build(STAGE, keys[i], lambda tmp, raw=raw: {"answer": raw}, {"judge": identity})
    return [store.meta(STAGE, k)["answer"] for k in keys]


def classify(judge: Judge, requests: Sequence[Request], store: ArtifactStore,
             batch_size: int = 32) -> tuple[list[str], dict]:
    """One allowed option per request, and counts of answers that were not an option verbatim."""
    raws = ask(judge, requests, store, batch_size)
    labels = [judge.category(raw, r.options) for raw, r in zip(raws, requests)]
    texts = [raw["text"].strip() for raw in raws if "text" in raw]
    counts = {"answers": len(raws),
              "off_list_answer": sum(t not in r.options for t, r in zip(texts, requests)),
              "empty_answer": sum(not t for t in texts)}
    return labels, counts


def rate(judge: Judge, requests: Sequence[Request], scale: Sequence[int], store: ArtifactStore,
         batch_size: int = 32) -> tuple[np.ndarray, dict]:
    """One rating per request (NaN when a free-text answer holds no digit of ``scale``; counted)."""
    raws = ask(judge, requests, store, batch_size)
    values = np.array([judge.rating(raw, scale) for raw in raws], dtype=np.float64)
    return values, {"answers": len(raws), "no_rating_in_answer": int(np.isnan(values).sum())}
