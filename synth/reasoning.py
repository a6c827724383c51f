"""A teacher's reasoning, told apart from its answer.

Reasoning models write their thinking before the answer: an API gives it in its own field
(`reasoning_content` or `reasoning` of an OpenAI-compatible message, Anthropic's `thinking`
blocks); an in-process engine, or a server without a reasoning parser, leaves it in the
text between tags (`<think>...</think>`; many chat templates put the opening tag in the
prompt, so the text starts inside the reasoning and only the closing tag appears).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Split:
    answer: str
    reasoning: str | None  # None: the text has no reasoning
    finished: bool = True  # False: the reasoning was opened and never closed (cut off)


def separate(text: str, given: str | None, finish_reason: str | None, cfg: Any = None) -> Split:
    """A teacher's answer and reasoning: the reasoning the API gave apart (`given`; unfinished
    when the answer is empty and the teacher stopped for length), else, with `cfg` (the
    teacher's ReasoningConfig) set to parse, the text split at its tags."""
    if given is not None:
        return Split(text, given, finished=bool(text.strip()) or finish_reason != "length")
    if cfg is not None and cfg.parse:
        return split_reasoning(text, cfg.open_tag, cfg.close_tag)
    return Split(text, None)


def split_reasoning(text: str, open_tag: str = "<think>", close_tag: str = "</think>") -> Split:
    """The answer and the reasoning of a teacher's text.

    - `...</think>answer`: everything before the closing tag (after an opening tag, if any)
      is the reasoning, everything after it the answer;
    - `<think>...` with no closing tag: unfinished reasoning (stopped at max_tokens), no answer;
    - neither tag: all of it is the answer.
    """
    if close_tag in text:
        before, _, after = text.partition(close_tag)
        if open_tag in before:
            before = before.partition(open_tag)[2]
        return Split(after.lstrip(), before.strip())
    if open_tag in text:
        before, _, reasoning = text.partition(open_tag)
        return Split(before.strip(), reasoning.strip(), finished=False)
    return Split(text, None)
