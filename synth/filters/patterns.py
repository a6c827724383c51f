"""Regex and keyword allow/block lists."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from synth.configtools import help_field
from synth.filters.base import FieldOptions, Filter, field_text


@dataclass
class RegexOptions(FieldOptions):
    block: list[str] = help_field([], help="regexes: an answer matching any is rejected")
    allow: list[str] = help_field([], help="regexes: when given, an answer must match at least one")
    block_keywords: list[str] = help_field([], help="plain words or phrases that reject (case-insensitive)")
    allow_keywords: list[str] = help_field([], help="plain words or phrases of which one must appear (case-insensitive)")
    ignore_case: bool = help_field(True, help="case-insensitive regexes")

    def __post_init__(self) -> None:
        super().__post_init__()
        flags = re.IGNORECASE if self.ignore_case else 0
        for key in ("block", "allow"):
            _compile(getattr(self, key), flags, key)


def _compile(patterns: list[str], flags: int, key: str) -> list[re.Pattern]:
    out = []
    for i, pattern in enumerate(patterns):
        try:
            out.append(re.compile(pattern, flags))
        except re.error as exc:
            raise ValueError(f"{key}[{i}]: invalid regex {pattern!r}: {exc}") from None
    return out


class Regex(Filter):
    """Reject by regex or keyword block lists; require allow-list matches when given."""

    name = "regex"
    Options = RegexOptions

    def setup(self) -> None:
        o = self.options
        flags = re.IGNORECASE if o.ignore_case else 0
        self.block = _compile(o.block, flags, "block")
        self.allow = _compile(o.allow, flags, "allow")
        self.block += [re.compile(r"\b" + re.escape(k) + r"\b", re.IGNORECASE) for k in o.block_keywords]
        allow_kw = [re.compile(r"\b" + re.escape(k) + r"\b", re.IGNORECASE) for k in o.allow_keywords]
        self.allow_groups = [g for g in (self.allow, allow_kw) if g]

    def check(self, rec: dict[str, Any]) -> str | None:
        text = field_text(rec, self.options.field)
        for pattern in self.block:
            match = pattern.search(text)
            if match:
                return f"blocked pattern {pattern.pattern!r} matched {match.group(0)[:60]!r}"
        for group in self.allow_groups:
            if not any(p.search(text) for p in group):
                return f"no allowed pattern matched ({', '.join(p.pattern for p in group)[:120]})"
        return None
