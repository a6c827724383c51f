"""Reasoning traces (docs/distillation.md): missing, unfinished, too short or too long,
or not followed by an answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from synth.configtools import help_field
from synth.filters.base import Filter, answer_text


@dataclass
class ReasoningOptions:
    require: bool = help_field(False, help="reject answers that come without reasoning (for a dataset of reasoning traces)")
    reject_unfinished: bool = help_field(True, help="reject reasoning that was opened and never closed (cut off at max_tokens)")
    require_answer: bool = help_field(True, help="reject reasoning with no final answer after it")
    min_chars: int | None = help_field(None, help="shortest reasoning kept, in characters")
    max_chars: int | None = help_field(None, help="longest reasoning kept, in characters")

    def __post_init__(self) -> None:
        if self.min_chars is not None and self.max_chars is not None and self.min_chars > self.max_chars:
            raise ValueError(f"min_chars: {self.min_chars} is more than max_chars {self.max_chars}")


class Reasoning(Filter):
    """Reject records by their reasoning trace (the assistant message's reasoning_content)."""

    name = "reasoning"
    Options = ReasoningOptions

    def check(self, rec: dict[str, Any]) -> str | None:
        o = self.options
        message = rec["messages"][-1]
        thought = message.get("reasoning_content") if message["role"] == "assistant" else None
        if thought is None:
            return "no reasoning (require: true)" if o.require else None
        if o.reject_unfinished and not (rec.get("reasoning") or {}).get("finished", True):
            return "reasoning never finished (no closing tag: cut off at max_tokens?)"
        if o.require_answer and not answer_text(rec).strip():
            return "reasoning with no answer after it"
        if o.min_chars is not None and len(thought) < o.min_chars:
            return f"reasoning has {len(thought)} characters, fewer than min_chars {o.min_chars}"
        if o.max_chars is not None and len(thought) > o.max_chars:
            return f"reasoning has {len(thought)} characters, more than max_chars {o.max_chars}"
        return None
