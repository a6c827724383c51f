"""PII: detect e-mail addresses, phone numbers, IBANs, card numbers, national IDs and IP
addresses; redact them in every turn or drop the record. The record keeps only the types
and counts found (`pii`), never the values."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from synth.configtools import help_field
from synth.filters.base import Filter


def luhn_ok(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    s = text.replace(" ", "").upper()
    if not (15 <= len(s) <= 34):
        return False
    rearranged = s[4:] + s[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


def _ip_ok(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


# (type, pattern, validator). Order matters: cards and IBANs before phone numbers.
DETECTORS: list[tuple[str, re.Pattern, Any]] = [
    ("email", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"), None),
    ("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"), iban_ok),
    ("credit_card", re.compile(r"\b(?:\d[ -]?){12,18}\d\b"), lambda m: luhn_ok(re.sub(r"\D", "", m))),
    ("us_ssn", re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"), None),
    ("uk_nino", re.compile(r"\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"), None),
    ("ip_address", re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b|\b(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}\b"), _ip_ok),
    # Not inside a longer run of digit groups (a card number that failed Luhn is no phone).
    ("phone", re.compile(
        r"(?<![\w+])(?<!\d[ .-])(?:"
        r"\+\d{1,3}[ .-]?\d{1,4}(?:[ .-]?\d{2,4}){2,4}"  # international: +44 20 7946 0958
        r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]\d{3,4}"  # area code in parentheses: (555) 123-4567
        r"|\d{3}[ .-]\d{3,4}[ .-]\d{4}"  # three groups: 555-123-4567, 020 7946 0958
        r")\b(?![ .-]?\d)"
    ), None),
]
TYPES = [name for name, _, _ in DETECTORS]


@dataclass
class PiiOptions:
    action: str = help_field("redact", help="redact (replace with [TYPE]) or drop (reject the record)")
    types: list[str] = help_field(list(TYPES), help="PII types to look for")

    def __post_init__(self) -> None:
        if self.action not in ("redact", "drop"):
            raise ValueError(f"action: unknown '{self.action}'; choose redact or drop")
        unknown = [t for t in self.types if t not in TYPES]
        if unknown:
            raise ValueError(f"types: unknown '{unknown[0]}'; valid types: {', '.join(TYPES)}")


def find_pii(text: str, types: list[str]) -> tuple[str, dict[str, int]]:
    """(text with PII replaced by [TYPE], counts per type)."""
    counts: dict[str, int] = {}
    for name, pattern, valid in DETECTORS:
        if name not in types:
            continue

        def sub(m: re.Match, name=name, valid=valid) -> str:
            if valid is not None and not valid(m.group(0)):
                return m.group(0)
            counts[name] = counts.get(name, 0) + 1
            return f"[{name.upper()}]"

        text = pattern.sub(sub, text)
    return text, counts


class Pii(Filter):
    """Redact PII in every turn (default) or drop records that contain any."""

    name = "pii"
    Options = PiiOptions

    def check(self, rec: dict[str, Any]) -> str | None:
        total: dict[str, int] = {}
        redacted = []
        for message in rec["messages"]:
            text, counts = find_pii(message["content"], self.o.types)
            redacted.append(text)
            for k, v in counts.items():
                total[k] = total.get(k, 0) + v
        if not total:
            return None
        summary = ", ".join(f"{k} x{v}" for k, v in sorted(total.items()))
        if self.o.action == "drop":
            return f"contains PII: {summary}"
        for message, text in zip(rec["messages"], redacted, strict=True):
            message["content"] = text
        rec["pii"] = dict(sorted(total.items()))
        seed = rec.get("seed")
        if isinstance(seed, dict) and seed.get("fields"):  # the seed's copy of the text (a document chunk) too
            seed["fields"] = self._redact(seed["fields"])
        return None

    def _redact(self, value: Any) -> Any:
        if isinstance(value, str):
            return find_pii(value, self.o.types)[0]
        if isinstance(value, list):
            return [self._redact(v) for v in value]
        if isinstance(value, dict):
            return {k: self._redact(v) for k, v in value.items()}
        return value
