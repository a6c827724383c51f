"""Truncated, empty, too short or too long answers, and refusals or boilerplate."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from synth.configtools import help_field
from synth.filters.base import Filter, answer_text
from synth.fingerprint import model_identity


class Truncated(Filter):
    """Reject answers the teacher stopped for length (finish_reason == "length")."""

    name = "truncated"

    def check(self, rec: dict[str, Any]) -> str | None:
        return "finish_reason is length (cut off at max_tokens)" if rec.get("finish_reason") == "length" else None


class Empty(Filter):
    """Reject empty or whitespace-only answers."""

    name = "empty"

    def check(self, rec: dict[str, Any]) -> str | None:
        return "empty or whitespace-only answer" if not answer_text(rec).strip() else None


@dataclass
class LengthOptions:
    min_chars: int | None = help_field(None, help="shortest answer kept, in characters")
    max_chars: int | None = help_field(None, help="longest answer kept, in characters")
    min_tokens: int | None = help_field(None, help="shortest answer kept, in tokens of `tokenizer`")
    max_tokens: int | None = help_field(None, help="longest answer kept, in tokens of `tokenizer`")
    tokenizer: str | None = help_field(None, help="tokenizer (the student's: HF id or local dir) for token bounds")

    def __post_init__(self) -> None:
        if (self.min_tokens is not None or self.max_tokens is not None) and not self.tokenizer:
            raise ValueError("tokenizer: token bounds need a tokenizer (the student's model dir or HF id)")
        for lo, hi in (("min_chars", "max_chars"), ("min_tokens", "max_tokens")):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise ValueError(f"{lo}: {a} is more than {hi} {b}")


class Length(Filter):
    """Reject answers outside length bounds, in characters or in the student's tokens."""

    name = "length"
    Options = LengthOptions

    def setup(self) -> None:
        where = self.where
        self._tok = None
        if self.options.tokenizer:
            try:
                from transformers import AutoTokenizer
            except ImportError:
                raise ImportError(f"{where}.tokenizer needs transformers: pip install 'stillhouse[sft]'") from None
            try:
                self._tok = AutoTokenizer.from_pretrained(self.options.tokenizer)
            except (OSError, ValueError) as exc:
                raise ValueError(f"{where}.tokenizer: cannot load '{self.options.tokenizer}': {exc}") from None

    @classmethod
    def inputs(cls, o: LengthOptions) -> dict[str, Any]:
        return {"tokenizer": model_identity(o.tokenizer)} if o.tokenizer else {}

    def check(self, rec: dict[str, Any]) -> str | None:
        text = answer_text(rec)
        o = self.options
        if o.min_chars is not None and len(text) < o.min_chars:
            return f"answer has {len(text)} characters, fewer than min_chars {o.min_chars}"
        if o.max_chars is not None and len(text) > o.max_chars:
            return f"answer has {len(text)} characters, more than max_chars {o.max_chars}"
        if self._tok is not None:
            n = len(self._tok(text, add_special_tokens=False)["input_ids"])
            if o.min_tokens is not None and n < o.min_tokens:
                return f"answer has {n} tokens, fewer than min_tokens {o.min_tokens}"
            if o.max_tokens is not None and n > o.max_tokens:
                return f"answer has {n} tokens, more than max_tokens {o.max_tokens}"
        return None


DEFAULT_REFUSALS = [
    "as an ai language model",
    "as an ai model",
    "as a language model",
    "i'm sorry, but i can't",
    "i am sorry, but i cannot",
    "i'm sorry, but i cannot",
    "i cannot fulfill",
    "i can't assist with",
    "i cannot assist with",
    "i'm unable to help",
    "i am unable to provide",
    "i don't have personal opinions",
    "i do not have personal opinions",
    "my knowledge cutoff",
    "i don't have access to real-time",
]


@dataclass
class RefusalOptions:
    phrases: list[str] = help_field(list(DEFAULT_REFUSALS), help="phrases that mark a refusal or boilerplate (case-insensitive)")
    extra_phrases: list[str] = help_field([], help="phrases added to the list above")
    only_start: bool = help_field(False, help="match only in the first 200 characters of the answer")


class Refusal(Filter):
    """Reject refusals and AI boilerplate ("As an AI language model ...")."""

    name = "refusal"
    Options = RefusalOptions

    def setup(self) -> None:
        phrases = [p.lower() for p in [*self.options.phrases, *self.options.extra_phrases] if p.strip()]
        self._re = re.compile("|".join(re.escape(p) for p in phrases)) if phrases else None

    def check(self, rec: dict[str, Any]) -> str | None:
        if self._re is None:
            return None
        text = answer_text(rec).lower().replace("’", "'")
        if self.options.only_start:
            text = text[:200]
        match = self._re.search(text)
        return f"refusal or boilerplate: '{match.group(0)}'" if match else None
