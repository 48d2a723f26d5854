"""Prompt templates shared by sampling, scoring, training and evaluation.

The hash of the template text is recorded in every artifact that depends on it, because
IFD, ADG answers and fine-tuned models all change with the prompt.
"""
from __future__ import annotations

from ..errors import SelectlabError
from ..infra.store import content_hash

ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:"
)
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)


def render_prompt(record: dict, template: str = "alpaca", tokenizer=None, use_input: bool = True) -> str:
    """The prompt text for one record.

    ``template``: ``alpaca`` (the Stanford Alpaca prompt, with the input block when the
    record has an input and ``use_input`` is true), ``alpaca_no_input`` (ADG's release:
    the input field is ignored) or ``chat`` (the tokenizer's chat template, generation
    prompt appended).
    """
    instruction, inp = record["instruction"], (record.get("input") or "").strip()
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise SelectlabError("template=chat needs a tokenizer that has a chat template")
        user = f"{instruction}\n\n{inp}" if (use_input and inp) else instruction
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
    if template == "alpaca_no_input" or (template == "alpaca" and not (use_input and inp)):
        return ALPACA_NO_INPUT.format(instruction=instruction)
    if template == "alpaca":
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=inp)
    raise SelectlabError(f"unknown prompt template {template!r} (alpaca, alpaca_no_input, chat)")


def template_hash(template: str, tokenizer=None) -> str:
    """Identifies the template's text (for ``chat``, the tokenizer's Jinja template)."""
    if template == "chat":
        return content_hash({"chat": getattr(tokenizer, "chat_template", None)})
    return content_hash({"alpaca": [ALPACA_NO_INPUT, ALPACA_WITH_INPUT], "name": template})
