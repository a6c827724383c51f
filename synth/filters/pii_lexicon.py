"""What a word is, for the pii filter's person detector: how common it is as a given name and as
a family name (names-dataset: first and last names with their rank in each of 106 countries),
and how common it is as an English word (wordfreq).

names-dataset loads 1.7 million names into about 2 GB of memory in about 9 s. The detector
needs only each name's best rank, so the first use writes those (names ranked within
FIRST_RANK as a given name or LAST_RANK as a family name in some country: ~450,000 names,
13 MB) to a cache file, `$XDG_CACHE_HOME/stillhouse/names-<version>.tsv` (default
~/.cache), and every later use reads that in well under a second.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

FIRST_RANK = 3000
LAST_RANK = 5000
NONE = 10**9  # the rank of a name the dataset does not have


@dataclass(frozen=True)
class Name:
    """A word's best rank over countries as a given name and as a family name (NONE: not one)."""

    first: int = NONE
    last: int = NONE


def cache_file() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "stillhouse" / f"names-{metadata.version('names-dataset')}.tsv"


def _best(entry: dict | None) -> int:
    ranks = [r for r in ((entry or {}).get("rank") or {}).values() if r]
    return min(ranks) if ranks else NONE


def _build(path: Path) -> None:
    from names_dataset import NameDataset

    log.info("pii: building the name lexicon from names-dataset once (about 10 s, 2 GB): %s", path)
    nd = NameDataset()
    ranks: dict[str, list[int]] = {}
    for i, (table, limit) in enumerate(((nd.first_names, FIRST_RANK), (nd.last_names, LAST_RANK))):
        for name, entry in table.items():
            best = _best(entry)
            if best <= limit and "\t" not in name:
                ranks.setdefault(name, [NONE, NONE])[i] = best
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, encoding="utf-8") as out:
        out.writelines(f"{name}\t{f}\t{last}\n" for name, (f, last) in sorted(ranks.items()))
    os.replace(out.name, path)  # atomic: a parallel build or a kill leaves no half file


@lru_cache(maxsize=1)
def lexicon() -> dict[str, Name]:
    """Every name the dataset ranks within FIRST_RANK / LAST_RANK somewhere, by its spelling."""
    path = cache_file()
    if not path.exists():
        _build(path)
    table = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            name, first, last = line.rstrip("\n").split("\t")
            table[name] = Name(int(first), int(last))
    return table


def name(word: str) -> Name:
    """The ranks of `word` (as written, else title-cased: KOWALSKI, kowalski)."""
    table = lexicon()
    return table.get(word) or table.get(word.title()) or Name()


@lru_cache(maxsize=65536)
def zipf(word: str) -> float:
    """How common `word` is in English text: log10 of its count per billion words (0: unseen;
    "the" 7.7, "station" 5.0, "okonkwo" 1.9)."""
    from wordfreq import zipf_frequency

    return zipf_frequency(word, "en")
