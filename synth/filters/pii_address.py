"""Postal addresses in free text, for the pii filter (type `address`).

Two sources, their spans merged by the caller:
- pyap (US, Canada and UK addresses with their city and postcode, found in free text);
- patterns for the forms pyap does not take: an English-style street (a house number, the
  street's name and its type: 221B Baker Street, 1600 Pennsylvania Avenue NW) with the flat,
  suite, city, state or region and postcode that follow it in any of the US, UK, Canadian,
  Irish, Australian or Indian forms; continental streets whose name carries the type
  (Hauptstraße 5, Storgata 17, Drottninggatan 53, Keizersgracht 123) or starts with it (Via
  del Corso 12, Calle Mayor 5, Rua Augusta 100, ul. Marszałkowska 10, 12 bis rue de Rivoli)
  with the postcode and city after them; Japanese block numbers (1-9-1 Marunouchi,
  Chiyoda-ku, Tokyo 100-0005); PO boxes.
"""

from __future__ import annotations

import re

_STREET_TYPES = (r"Street|St|Road|Rd|Avenue|Ave|Lane|Ln|Drive|Dr|Boulevard|Blvd|Way|Court|Ct|Place|Pl|Square|Sq|"
                 r"Terrace|Close|Crescent|Parkway|Pkwy|Highway|Hwy|Row|Gardens|Grove|Walk|Mews|Circle|Cir|Hill|"
                 r"Quay|Wharf|Embankment|Parade|Green|Rise|Vale|View|Park|Broadway|Plaza|Trail|Pike|Alley|Esplanade")
_UNIT = r"(?:(?:Flat|Apt\.?|Apartment|Suite|Ste\.?|Unit|Floor|Room|Level)\s+\w+,?\s+)?"
_NUM = r"\d{1,5}[A-Za-z]?(?:[-/]\d{1,5}[A-Za-z]?)?"
_CITY = r"[A-Z][\w'.-]+(?:[ -][A-Z][\w'.-]+){0,2}"
_POSTCODE = (r"(?:\d{5}(?:-\d{4})?"                   # US ZIP
             r"|[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2}"    # UK
             r"|[A-Z]\d[A-Z]\s?\d[A-Z]\d"             # Canada
             r"|[AC-FHKNPRTV-Y]\d{2}\s?[AC-FHKNPRTV-Y\d]{4}"  # Irish Eircode
             r"|\d{3}\s?\d{3}|\d{4})")                # India PIN, Australia and others
_REGION = r"(?:[A-Z]{2,3}|Co\.\s+[A-Z]\w+|County\s+[A-Z]\w+)"
_DIRECTION = r"(?:\s+(?:NW|NE|SW|SE|N|S|E|W|North|South|East|West)\b)?"
_OCCUPANCY = r"(?:,?\s+(?:Suite|Ste\.?|Apt\.?|Unit|Floor|Fl\.?|Room|#)\s*\w+)?"
_TAIL = (rf"(?:,?\s+{_CITY}(?:,\s*{_CITY})?(?:,?\s+{_REGION})?,?\s*-?\s*{_POSTCODE}\b"  # , Springfield, IL 62704
         rf"|,\s*{_CITY}(?:,\s*{_REGION})?(?=\s*[.,;:)\n]|\s*$| (?:by|on|at|and|in|for|before|from|until)\b))?")
ENGLISH = re.compile(rf"\b{_UNIT}{_NUM},?\s+(?:(?:[A-Z][\w'.-]*|of|the|de|la)\s+){{1,4}}(?:{_STREET_TYPES})\b\.?"
                     rf"{_DIRECTION}{_OCCUPANCY}{_TAIL}")
ENGLISH_LOWER = re.compile(rf"\b{_NUM},?\s+(?:[a-z][\w'-]*\s+){{1,3}}(?:street|road|avenue|lane|"
                           rf"square|terrace|crescent|boulevard|grove|gardens|mews)\b(?:,\s*[a-z]+(?:\s+[a-z0-9]+)?)?")

# Street types written into the street's name. The short ones (ring, weg, gate, tie, ...) end
# ordinary words too (Spring 2025), so with them the postcode and city must follow.
_SUFFIX = (r"straße|strasse|str\.|platz|allee|gasse|gata|gatan|gaten|vegen|veien|gade|vägen|torget|plads|"
           r"stræde|straat|plein|gracht|kade|singel|dreef|katu|utca|avenyn|caddesi|bulvarı|sokak|sokağı")
_SHORT_SUFFIX = r"weg|ring|damm|ufer|steig|markt|gate|vei|vej|väg|torv|laan|steeg|tie|tér|vägen"
_PREFIX = (r"Odos|Leoforos|Plateia|Jl\.|Jalan|Via|Viale|Piazza|Piazzale|Corso|Largo|Vicolo|Calle|Avenida|Av\.|Avda\.|Plaza|Paseo|Carrer|Rua|Praça|"
           r"Travessa|Estrada|Alameda|ul\.|ulica|al\.|Aleje|Plac|Rue|Avenue|Boulevard|Chemin|Place|Quai|Allée|Impasse|"
           r"Cours|Route|Rambla|Ronda|Camino|Strada")
_EU_POSTCODE = r"(?:[A-Z]{1,2}-)?(?:\d{4,5}|\d{3}\s\d{2}|\d{2}-\d{3}|\d{4}\s?[A-Z]{2}|\d{5}-\d{3})"
_EU_CITY = r"[A-ZÄÖÜÅÆØÉİÇŞ][\wäöüåæøéèüßıçşğ'-]+(?:[ /-][A-ZÄÖÜÅÆØÉİÇŞ][\wıçşğ'-]+)?"
_EU_TAIL_MUST = rf",?\s*{_EU_POSTCODE}\s+{_EU_CITY}"
_EU_TAIL = rf"(?:,?\s*{_EU_POSTCODE}\s+{_EU_CITY}(?:,\s*(?:Norway|Sweden|Denmark|Germany|Austria|Switzerland|France|Spain|Italy|Portugal|Poland|Netherlands|Belgium|Finland|Brasil|Brazil))?)?"
_NAMEWORD = r"[A-ZÀ-ÝÆØÅ][\wà-ÿæøåß'’.-]*"
_LINK = r"(?:de|del|della|delle|dei|di|da|do|dos|das|du|des|la|le|les|l'|d'|los|las|y|e|von|van)"
_NO = r"(?:No:?\s*|n\.?[º°o]\.?\s*|Nr\.?\s*)?"
CONTINENTAL = [
    re.compile(rf"\b[A-ZÀ-ÝÆØÅİ][\wà-ÿæøåßıçşğ-]*(?:{_SUFFIX})\s+{_NO}{_NUM}\b{_EU_TAIL}"),
    re.compile(rf"\b[A-ZÀ-ÝÆØÅİ][\wà-ÿæøåßıçşğ-]*(?:{_SHORT_SUFFIX})\s+{_NUM}\b{_EU_TAIL_MUST}"),
    # Any street name and number when a postcode and city follow: Bryggen 12, 5003 Bergen;
    # Bağdat Caddesi No: 145, 34728 Kadıköy/İstanbul; Husova 8, 602 00 Brno.
    re.compile(rf"\b{_NAMEWORD}(?:\s+{_NAMEWORD}){{0,2}}\s+{_NO}{_NUM},\s*(?:[^,\n]{{1,12}},\s*)?{_EU_TAIL_MUST}"),
    re.compile(rf"\b(?:{_PREFIX})\s+(?:(?:{_LINK})\s*)*{_NAMEWORD}(?:\s+(?:(?:{_LINK})\s*)*{_NAMEWORD}){{0,4}},?\s*"
               rf"(?:n\.?[º°o]\.?\s*)?{_NUM}\b{_EU_TAIL}"),
    re.compile(rf"\b\d{{1,4}}(?:\s?(?:bis|ter))?,?\s+(?:rue|avenue|boulevard|bd|place|chemin|allée|impasse|quai|cours|route)\s+"
               rf"(?:(?:{_LINK})\s*)*{_NAMEWORD}(?:\s+(?:(?:{_LINK})\s*)*{_NAMEWORD}){{0,4}}{_EU_TAIL}"),
    # Japan: block numbers before or after the district.
    re.compile(r"\b\d{1,2}-\d{1,2}(?:-\d{1,3})?\s+[A-Z][\w-]+(?:,\s*[A-Z][\w-]+){1,3}(?:\s+\d{3}-\d{4})?"),
    re.compile(r"\b[A-Z][\w-]+\s+\d{1,2}-\d{1,2}(?:-\d{1,3})?(?:,\s*[A-Z][\w-]+){1,3}(?:\s+\d{3}-\d{4})?"),
    # South Asia, the Middle East: a flat, house, plot or street and number, the comma-separated
    # parts of the place, and a postcode at the end (Flat No. 402, ..., Bengaluru 560001;
    # House 12, Road 27, Dhanmondi, Dhaka 1209; Herzl Street 10, Haifa 3303110).
    re.compile(r"\b(?:(?:Flat|House|Plot|Door|Shop|Office|Villa|Block|Building)\s+(?:No\.?\s*)?[\w/-]+"
               r"|[A-Z]-?\d{1,4}[A-Z]?|\d{1,4}(?:/\d{1,4})?[A-Z]?\s+[A-Z][\w'-]+(?:\s+[A-Z][\w'-]+)?"
               r"|[A-Z][\w'-]+(?:\s+[A-Z][\w'-]+)?\s+(?:Street|Road)\s+\d{1,4}),"
               r"(?:\s*[A-Z0-9][\w.'/-]*(?:\s+[\w.'/-]+){0,3},){0,5}\s*[A-Z][a-z]+(?:\s+[A-Z][a-z]+)?,?\s*-?\s*\d{4,7}\b"),
    re.compile(r"\b(?:Postfach|Case postale|Boîte postale|Apartado|Casella postale)\s+\d+(?:,\s*(?:[A-Z]-)?\d{4,5}\s+[A-ZÄÖÜ][\wäöüß-]+)?"),
    re.compile(rf"\b(?:RR|R\.R\.|Rural Route|HC)\s*\d+,?\s+Box\s+\d+{_TAIL}"),
    re.compile(r"\bP\.?\s?O\.?\s+Box\s+\d+(?:,\s*[A-Z][\w ]+?,\s*[A-Z]{2}\s+\d{5}(?:-\d{4})?)?", re.IGNORECASE),
]


def _pyap_spans(text: str) -> list[tuple[int, int]]:
    import pyap

    spans = []
    for country in ("US", "CA", "GB"):
        for address in pyap.parse(text, country=country):
            start = text.find(address.full_address)
            if start >= 0:
                spans.append((start, start + len(address.full_address)))
    return spans


def capitalise(text: str) -> str:
    """`text` with each word's first letter upper case and the rest lower, character for
    character (same length: a span in it is the same span in `text`)."""
    out, prev = [], " "
    for ch in text:
        want = ch.lower() if prev.isalpha() else ch.upper()
        out.append(want if len(want) == 1 else ch)
        prev = ch
    return "".join(out)


def address_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every postal address in `text` (they may overlap; the caller merges).
    The continental forms are also looked for in the text capitalised, for addresses written in
    capitals or in lower case (UL. MARSZAŁKOWSKA 104; karl johans gate 5, 0154 oslo)."""
    spans = [m.span() for pattern in (ENGLISH, ENGLISH_LOWER, *CONTINENTAL) for m in pattern.finditer(text)]
    if text != capitalise(text):  # only spans written all in capitals or all in lower case
        found = [m.span() for pattern in CONTINENTAL for m in pattern.finditer(capitalise(text))]
        spans += [(s, e) for s, e in found if text[s:e].isupper() or text[s:e].islower()]
    return spans + _pyap_spans(text)
