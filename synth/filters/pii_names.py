"""Person names and postal addresses for the pii filter (types `person` and `address`).

Rules, no model: no NER model whose weights ship in a package registry passed the licence
and provenance check here (spaCy's English models are on PyPI only as third-party
re-uploads), and a model fetched from a hub does not run offline. Measured on a labelled set
with decoys (bench/pii_names.py, bench/RESULTS.md); opt-in (not in the filter's default
types) because their precision is lower than the checksummed detectors'.

- person: a title (Mr, Mrs, Ms, Dr, Prof, Herr, Frau, Mme, ...) followed by capitalised
  names or initials; a given name from synth/data/first_names.txt followed by one to three
  capitalised names (particles such as van, de, bin, al- allowed); a given name alone after
  a greeting ("Dear Priya,") or "my name is" (any case). The title is not part of the span.
- address: a house number, one to four name words and a street type (Street, Road, Ave,
  ...), optionally a flat or unit before it and the city, state and ZIP or UK postcode after
  it; German, Dutch, French and Spanish street forms with their postcodes; PO boxes.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

_NAME = r"(?:[A-Z][a-zà-ÿ]+(?:['-][A-Za-zà-ÿ]+)*|[A-Z]\.)"
_PARTICLE = r"(?:van|von|der|den|de|del|della|di|da|dos|du|la|le|bin|binti|al|el|ibn)"
_TITLE = re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Dame|Herr|Frau|Mme|Mlle|Sr|Sra|Srta)\.?\s+"
                    rf"({_NAME}(?:\s+(?:{_PARTICLE}\s+)?{_NAME}){{0,3}})")
_GREETING = re.compile(r"\b(?:Dear|Hi|Hello|Hey|Thanks|Thank you|Regards|Cheers|Sincerely)[,]?\s+"
                       r"([A-Z][a-zà-ÿ]+)\b(?=\s*[,!.:\n]|\s*$)")
_MY_NAME = re.compile(r"\b(?:my name is|i am|i'm|this is)\s+([a-zà-ÿ]+(?:\s+[a-zà-ÿ'-]+)?)", re.IGNORECASE)

_STREET_TYPES = (r"Street|St|Road|Rd|Avenue|Ave|Lane|Ln|Drive|Boulevard|Blvd|Way|Court|Ct|Place|Pl|Square|Sq|"
                 r"Terrace|Close|Crescent|Parkway|Pkwy|Highway|Hwy|Row|Gardens|Grove|Walk|Mews|Circle|Cir")
_UNIT = r"(?:(?:Flat|Apt\.?|Apartment|Suite|Unit|Floor)\s+\w+,?\s+)?"
_CITY_TAIL = (r"(?:,?\s+(?:[A-Z][\w'.-]+(?:\s+[A-Z][\w'.-]+){0,2}),?\s+(?:[A-Z]{2}\s+\d{5}(?:-\d{4})?"  # Springfield, IL 62704
              r"|[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2})"                                            # London NW1 6XE
              r"|,\s*[A-Z][\w'.-]+(?:\s+[A-Z][\w'.-]+){0,2}(?=[.,;\n]|\s*$))?")                 # , Leeds
_ADDRESSES = [
    re.compile(rf"\b{_UNIT}\d{{1,5}}[A-Za-z]?(?:[-/]\d{{1,5}})?,?\s+(?:[A-Za-z][\w'-]*\s+){{1,4}}"
               rf"(?:{_STREET_TYPES})\b\.?{_CITY_TAIL}"),
    re.compile(rf"\b{_UNIT}\d{{1,5}}[a-z]?,?\s+(?:[a-z][\w'-]*\s+){{1,3}}(?:street|road|avenue|lane|drive|way|close)\b"),
    re.compile(r"\b[A-ZÄÖÜ][\wäöüß-]*(?:straße|strasse|str\.|weg|platz|allee|gasse|ring|damm)\s+\d{1,4}[a-z]?\b"
               r"(?:,\s*(?:D-)?\d{5}\s+[A-ZÄÖÜ][\wäöüß-]+)?"),
    re.compile(r"\b[A-Z][a-z]+(?:straat|weg|laan|plein|gracht|kade|singel)\s+\d{1,4}[a-z]?\b"
               r"(?:,\s*\d{4}\s?[A-Z]{2}\s+[A-Z][a-z]+)?"),
    re.compile(r"\b\d{1,4}(?:\s?(?:bis|ter))?,?\s+(?:rue|avenue|boulevard|bd|place|chemin|allée|impasse|quai)\s+"
               r"(?:(?:de|du|des|la|le|l'|d')\s*)*[A-ZÉ][\w'-]*(?:\s+(?:(?:de|du|des|la|le)\s+)?[A-ZÉ][\w'-]*)*"
               r"(?:,\s*\d{5}\s+[A-ZÉ][\w-]+)?"),
    re.compile(r"\b(?:Calle|Avenida|Av\.|Plaza|Paseo|Carrer|Rua)\s+(?:(?:de|del|la|los|las)\s+)*[A-ZÁÉÍÓÚ][\wáéíóúñ]+"
               r"(?:\s+(?:(?:de|del|la)\s+)?[A-ZÁÉÍÓÚ][\wáéíóúñ]+)*,?\s*(?:n\.?º\s*)?\d{1,4}"
               r"(?:,\s*(?:\d+º?\s*\w?,\s*)?\d{5}\s+[A-ZÁÉÍÓÚ][\wáéíóúñ]+)?"),
    re.compile(r"\bP\.?\s?O\.?\s+Box\s+\d+(?:,\s*[A-Z][\w ]+?,\s*[A-Z]{2}\s+\d{5}(?:-\d{4})?)?", re.IGNORECASE),
]


@lru_cache(maxsize=1)
def given_names() -> frozenset[str]:
    text = resources.files("synth").joinpath("data/first_names.txt").read_text(encoding="utf-8")
    return frozenset(w for line in text.splitlines() if not line.startswith("#") for w in line.split())


def _person_spans(text: str) -> list[tuple[int, int]]:
    spans = [m.span(1) for m in _TITLE.finditer(text)]
    spans += [m.span(1) for m in _GREETING.finditer(text) if m.group(1) in given_names()]
    spans += [m.span(1) for m in _MY_NAME.finditer(text) if m.group(1).split()[0].capitalize() in given_names()]
    names = given_names()
    full = re.compile(rf"\b([A-Z][a-zà-ÿ]+)((?:\s+(?:{_PARTICLE}\s+)?(?:[A-Z][a-zà-ÿ]+(?:['-][A-Za-zà-ÿ]+)*|[A-Z]\.)){{1,3}})")
    for m in full.finditer(text):
        if m.group(1) in names:
            spans.append((m.start(1), m.end(2)))
    return spans


def _address_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for pattern in _ADDRESSES for m in pattern.finditer(text)]


def find_spans(text: str, types: list[str]) -> list[tuple[str, int, int]]:
    """(type, start, end) of the names and addresses in `text`, overlaps merged (an address
    wins over a name inside it), in order."""
    found = []
    if "address" in types:
        found += [("address", s, e) for s, e in _address_spans(text)]
    if "person" in types:
        found += [("person", s, e) for s, e in _person_spans(text)]
    found.sort(key=lambda x: (x[1], -(x[2] - x[1]), x[0] != "address"))
    merged: list[tuple[str, int, int]] = []
    for kind, s, e in found:
        if merged and s < merged[-1][2]:
            last = merged[-1]
            if e > last[2]:
                merged[-1] = (last[0], last[1], e)
            continue
        merged.append((kind, s, e))
    return merged
