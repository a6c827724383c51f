"""Exact and near-duplicate removal (the first record in curation order is kept).

Near-dedup: MinHash over word n-gram shingles with LSH banding (rensa, a Rust MinHash:
measured 15x+ faster than datasketch, bench/dedup.py), then the candidate is confirmed
by its estimated Jaccard similarity against the matched record.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from synth.configtools import help_field
from synth.filters.base import FieldOptions, Filter, field_text

_PUNCT = re.compile(r"[^\w\s]")


def normalise(text: str) -> str:
    """Case-folded, NFKC, punctuation dropped, whitespace collapsed."""
    text = text.lower() if text.isascii() else unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_PUNCT.sub(" ", text).split())


def _key_text(rec: dict[str, Any], field: str) -> str:
    return field_text(rec, field, joiner="\n\x00\n")


@dataclass
class ExactOptions(FieldOptions):
    field: str = help_field("both", help="what must repeat: prompt, answer or both (normalised)")


class ExactDedup(Filter):
    """Reject records whose normalised prompt, answer or both were seen before."""

    name = "exact_dedup"
    Options = ExactOptions

    def setup(self) -> None:
        self._seen: dict[bytes, str] = {}

    def check(self, rec: dict[str, Any]) -> str | None:
        digest = hashlib.blake2b(normalise(_key_text(rec, self.o.field)).encode(), digest_size=16).digest()
        first = self._seen.setdefault(digest, rec["id"])
        return f"exact duplicate ({self.o.field}) of {first}" if first != rec["id"] else None


@dataclass
class NearOptions(FieldOptions):
    threshold: float = help_field(0.8, help="Jaccard similarity at or above which two texts are near-duplicates")
    shingle: int = help_field(5, help="word n-gram size of the shingles")
    num_perm: int = help_field(128, help="MinHash permutations (more: more exact, slower)")
    num_bands: int | None = help_field(None, help="LSH bands; none picks them from threshold and num_perm")
    seed: int = help_field(42, help="MinHash seed")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0 < self.threshold <= 1):
            raise ValueError(f"threshold: must be in (0, 1], got {self.threshold}")
        if self.shingle < 1 or self.num_perm < 8:
            raise ValueError("shingle: must be >= 1 and num_perm >= 8")
        if self.num_bands is not None and (self.num_bands < 1 or self.num_perm % self.num_bands):
            raise ValueError(f"num_bands: must divide num_perm ({self.num_perm})")


def shingles(text: str, n: int) -> list[str]:
    words = normalise(text).split()
    if len(words) <= n:
        return [" ".join(words)] if words else [""]
    return [" ".join(gram) for gram in zip(*(words[i:] for i in range(n)), strict=False)]  # n-grams


def bands_for(threshold: float, num_perm: int) -> int:
    """The band count whose S-curve threshold (1/b)^(1/r) is the highest one at or below
    0.9 x `threshold`: candidates are confirmed by their estimated Jaccard anyway, so a
    lower LSH threshold costs a few extra checks and buys recall near the threshold."""
    target = 0.9 * threshold
    options = [(num_perm // b, b) for b in range(1, num_perm + 1) if num_perm % b == 0]
    below = [(1 / b) ** (1 / r) for r, b in options if (1 / b) ** (1 / r) <= target]
    if not below:
        return num_perm  # r = 1: every shared hash is a candidate
    best = max(below)
    return next(b for r, b in options if (1 / b) ** (1 / r) == best)


class NearIndex:
    """MinHash LSH over shingled texts: add() returns the key of a near-duplicate or None."""

    def __init__(self, threshold: float, shingle: int, num_perm: int, num_bands: int | None, seed: int):
        try:
            from rensa import RMinHash, RMinHashLSH
        except ImportError:
            raise ImportError("near_dedup needs rensa: pip install 'stillhouse[curate]'") from None
        self._MinHash = RMinHash
        self.threshold, self.shingle, self.num_perm, self.seed = threshold, shingle, num_perm, seed
        self._lsh = RMinHashLSH(threshold, num_perm, num_bands or bands_for(threshold, num_perm))
        self._hashes: list[Any] = []
        self.keys: list[str] = []

    def signature(self, text: str):
        return self._signature(shingles(text, self.shingle))

    def _signature(self, tokens: list[str]):
        m = self._MinHash(self.num_perm, self.seed)
        m.update(tokens)
        return m

    def add(self, key: str, text: str) -> tuple[str, float] | None:
        """Index `text` under `key` unless it near-duplicates an indexed text; return that
        text's (key, estimated Jaccard) or None."""
        return self.add_tokens(key, shingles(text, self.shingle))

    def add_tokens(self, key: str, tokens: list[str]) -> tuple[str, float] | None:
        """As add(), from shingles already built."""
        m = self._signature(tokens)
        best = max(self._matches(m), key=lambda match: match[1], default=None)  # first of equals
        if best is None:
            self._insert(key, m)
        return best

    def link(self, key: str, text: str) -> list[str]:
        """Index `text` under `key` whatever it matches; return the keys it near-duplicates."""
        m = self.signature(text)
        found = [k for k, _ in self._matches(m)]
        self._insert(key, m)
        return found

    def _matches(self, m: Any) -> list[tuple[str, float]]:
        """LSH candidates confirmed by estimated Jaccard >= threshold, in index order."""
        out = []
        for idx in self._lsh.query(m):
            sim = m.jaccard(self._hashes[idx])
            if sim >= self.threshold:
                out.append((self.keys[idx], sim))
        return out

    def _insert(self, key: str, m: Any) -> None:
        self._lsh.insert(len(self._hashes), m)
        self._hashes.append(m)
        self.keys.append(key)


class NearDedup(Filter):
    """Reject records whose text is a near-duplicate (MinHash LSH) of an earlier one."""

    name = "near_dedup"
    Options = NearOptions

    def setup(self) -> None:
        o = self.o
        self.index = NearIndex(o.threshold, o.shingle, o.num_perm, o.num_bands, o.seed)

    def check(self, rec: dict[str, Any]) -> str | None:
        match = self.index.add(rec["id"], _key_text(rec, self.o.field))
        return f"near duplicate ({self.o.field}, Jaccard ~{match[1]:.2f}) of {match[0]}" if match else None
