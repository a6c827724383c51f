"""PII: detect e-mail addresses, phone numbers, IBANs, card numbers, national IDs and IP
addresses; redact them in every turn (and in the seed's fields) or drop the record. The
record keeps only the types and counts found (`pii`), never the values.

The detectors run as recognizers in Microsoft Presidio (synth.filters.pii_engine). Person
names and postal addresses: rules over a name lexicon and address forms (types `person`,
`address`: synth.filters.pii_person, synth.filters.pii_address), and/or a model asked for them
(`detector`, cached like the judge).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.configtools import help_field
from synth.filters.base import Filter
from synth.filters.pii_engine import OPT_IN, TYPES, find_spans, iban_ok, luhn_ok
from synth.filters.verdict import VerdictJudge, call

__all__ = ["Pii", "PiiOptions", "find_pii", "iban_ok", "luhn_ok", "map_strings"]


@dataclass
class PiiOptions:
    action: str = help_field("redact", help="redact (replace with [TYPE]) or drop (reject the record)")
    types: list[str] = help_field(list(TYPES), help="PII types to look for; person and address (rules over a name lexicon and address forms, lower precision: bench/RESULTS.md) only when listed")
    detector: VerdictJudge | None = help_field(None, help="also ask a model (a teacher block; template default: the packaged pii/detect.j2) for each record's person names and postal addresses, redacted as [PERSON]/[ADDRESS] wherever they occur; calls cached in pii_detect.jsonl; an unreadable answer rejects the record")

    def __post_init__(self) -> None:
        if self.action not in ("redact", "drop"):
            raise ValueError(f"action: unknown '{self.action}'; choose redact or drop")
        unknown = [t for t in self.types if t not in TYPES + OPT_IN]
        if unknown:
            raise ValueError(f"types: unknown '{unknown[0]}'; valid types: {', '.join(TYPES + OPT_IN)}")


def find_pii(text: str, types: list[str]) -> tuple[str, dict[str, int]]:
    """(text with PII replaced by [TYPE], counts per type)."""
    counts: dict[str, int] = {}
    for kind, start, end in reversed(find_spans(text, types)):
        text = f"{text[:start]}[{kind.upper()}]{text[end:]}"
        counts[kind] = counts.get(kind, 0) + 1
    return text, counts


DETECT_TEMPLATE = "pii/detect.j2"


def map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """`value` with `fn` applied to every string in it (nested lists and dicts copied)."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [map_strings(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: map_strings(v, fn) for k, v in value.items()}
    return value


def _listed(answer: str) -> dict[str, list[str]] | None:
    """The detector's {"person": [...], "address": [...]}, or None when its answer has none."""
    start, end = answer.find("{"), answer.rfind("}")
    try:
        found = json.loads(answer[start : end + 1]) if start >= 0 else None
    except ValueError:
        return None
    if not isinstance(found, dict):
        return None
    out = {}
    for kind in ("person", "address"):
        items = found.get(kind, [])
        if not isinstance(items, list):
            return None
        out[kind] = [str(x).strip() for x in items if str(x).strip() and len(str(x).strip()) >= 3]
    return out


class Pii(Filter):
    """Redact PII in every turn (default) or drop records that contain any."""

    name = "pii"
    Options = PiiOptions

    @classmethod
    def inputs(cls, o: PiiOptions) -> dict[str, Any]:
        return {"detector": o.detector.identity(DETECT_TEMPLATE)} if o.detector is not None else {}

    def setup(self) -> None:
        self.listed: dict[str, dict[str, list[str]] | str] = {}
        if self.options.detector is not None:
            self.batch = True  # the detector's calls go out as one batch
            self.stats = {"sent": 0, "cached": 0, "unreadable": 0, "failed": 0}

    def prepare(self, records: Iterable[dict[str, Any]], out_dir: Path) -> None:
        """With a detector: ask it about every record (cached in pii_detect.jsonl)."""
        items = {rec["id"]: {"text": "\n\n".join(f"{m['role']}: {m['content']}" for m in rec["messages"]
                                                  if isinstance(m.get("content"), str))} for rec in records}
        got = call(self.options.detector, DETECT_TEMPLATE, items, out_dir / "pii_detect.jsonl")
        self.stats.update({"sent": got.sent, "cached": got.cached})
        for rec_id in items:
            if rec_id in got.failed:
                self.stats["failed"] += 1
                self.listed[rec_id] = f"the PII detector's call failed ({got.failed[rec_id]})"
                continue
            found = _listed(got.answers[rec_id])
            if found is None:
                self.stats["unreadable"] += 1
                self.listed[rec_id] = ("the PII detector's answer is not the JSON asked for: "
                                       f"{json.dumps(got.answers[rec_id][:80])}")
            else:
                self.listed[rec_id] = found

    def _clean(self, text: str, listed: dict[str, list[str]]) -> tuple[str, dict[str, int]]:
        text, counts = find_pii(text, self.options.types)
        for kind in ("address", "person"):  # an address may hold a name: addresses first
            for item in sorted(set(listed.get(kind, [])), key=len, reverse=True):
                n = text.count(item)
                if n:
                    text = text.replace(item, f"[{kind.upper()}]")
                    counts[kind] = counts.get(kind, 0) + n
        return text, counts

    def check(self, rec: dict[str, Any]) -> str | None:
        listed = self.listed.get(rec["id"], {})
        if isinstance(listed, str):
            return f"{listed}; not kept, as its PII is not known"
        total: dict[str, int] = {}
        redacted = []
        for message in rec["messages"]:
            text, counts = self._clean(message["content"], listed)
            redacted.append(text)
            for k, v in counts.items():
                total[k] = total.get(k, 0) + v
        if not total:
            return None
        summary = ", ".join(f"{k} x{v}" for k, v in sorted(total.items()))
        if self.options.action == "drop":
            return f"contains PII: {summary}"
        for message, text in zip(rec["messages"], redacted, strict=True):
            message["content"] = text
        rec["pii"] = dict(sorted(total.items()))
        seed = rec.get("seed")
        if isinstance(seed, dict) and seed.get("fields"):  # the seed's copy of the text (a document chunk) too
            seed["fields"] = map_strings(seed["fields"], lambda text: self._clean(text, listed)[0])
        return None

