"""How an example becomes text: the fields a selector embeds (``selector.text``) and the forms ZIP
compresses (``scorer.text``), with ZIP's compression ratios. Scorers and selectors both read them,
so they sit below both.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from .errors import SelectlabError
from .schema.scoring import TEXT_FIELDS, TEXT_FORMS

# FastChat's vicuna_v1.1 system prompt: DEITA's embedder writes each example in this template.
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")


def example_text(record: dict, fields: str) -> str:
    if fields not in TEXT_FIELDS:
        raise SelectlabError(f"selector.text={fields!r}; choose one of {TEXT_FIELDS}")
    inp = (record.get("input") or "").strip()
    question = f"{record['instruction']}\n{inp}" if inp else record["instruction"]
    if fields == "conversation":
        # vicuna_v1.1 (ADD_COLON_TWO) for one exchange; its closing "</s>" is the embedder's EOS token.
        return f"{VICUNA_SYSTEM} USER: {question} ASSISTANT: {record['output']}"
    return question if fields == "instruction_input" else record["instruction"]


# ---- ZIP: examples as compressed text ------------------------------------------------------


@dataclass(frozen=True)
class TextForm:
    """How a list of examples becomes one string: ``open + sep.join(items) + close``."""

    open: bytes
    sep: bytes
    close: bytes


FORMS = {"repr": TextForm(b"[", b", ", b"]"), "plain": TextForm(b"", b"\n\n", b"")}


def zip_text(record: dict, text: str) -> bytes:
    """One example as the release compresses it (``repr``) or as plain text (``plain``)."""
    if text == "repr":
        return repr({"instruction": record["instruction"], "input": record["input"],
                     "output": record["output"]}).encode("utf-8")
    if text == "plain":
        parts = [record["instruction"], record["input"], record["output"]]
        return "\n".join(p for p in parts if p).encode("utf-8")
    raise SelectlabError(f"scorer.text={text!r}; choose one of {TEXT_FORMS}")


def joint_ratio(items: list[bytes], form: TextForm) -> float:
    """The release's ratio of a list, computed the slow way (one-shot zlib); for checks."""
    data = form.open + form.sep.join(items) + form.close
    return len(data) / len(zlib.compress(data, 9))


class PrefixCompressor:
    """A zlib-9 compressor that has consumed ``open + sep.join(prefix)``; the ratio of
    prefix + one more item is a copy of its state plus that item, not a recompression."""

    def __init__(self, form: TextForm):
        self.form = form
        self.prefix: list[int] = []
        self._z = zlib.compressobj(9)
        self._out = len(self._z.compress(form.open))
        self._raw = len(form.open)

    def extend(self, indices: list[int], texts: list[bytes]) -> None:
        for i in indices:
            piece = (self.form.sep if self.prefix else b"") + texts[i]
            self._out += len(self._z.compress(piece))
            self._raw += len(piece)
            self.prefix.append(i)

    def ratios(self, candidates, texts: list[bytes]) -> np.ndarray:
        sep = self.form.sep if self.prefix else b""
        out = np.empty(len(candidates), dtype=np.float64)
        for n, i in enumerate(candidates):
            tail = sep + texts[i] + self.form.close
            z = self._z.copy()
            out[n] = (self._raw + len(tail)) / (self._out + len(z.compress(tail)) + len(z.flush()))
        return out


def single_ratios(texts: list[bytes], form: TextForm) -> np.ndarray:
    """Each example's ratio alone (the release's initial state): ``str([record])``."""
    return PrefixCompressor(form).ratios(range(len(texts)), texts)
