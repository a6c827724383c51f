"""Exact and near-duplicate removal (the first record in curation order is kept).

Near-dedup: MinHash signatures of word n-gram shingles (synth.minhash: numpy, one hash per
shingle), LSH banding over compact sorted runs of 32-bit band hashes (synth.compact: 8 bytes
a band per kept record), and each candidate confirmed by its estimated Jaccard similarity
against the matched record's signature, kept on disk. Both dedups decide a block of records
at a time, exactly as one at a time would (earlier records of the block count).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synth.compact import Digests, Keys, Runs
from synth.configtools import help_field
from synth.filters.base import BlockFilter, FieldOptions, field_text
from synth.minhash import Signer, mix, normalise, shingle_hashes

__all__ = ["ExactDedup", "NearDedup", "NearIndex", "bands_for", "normalise", "shingle_hashes"]

BLOCK = BlockFilter.block_size  # records decided at once


def _key_text(rec: dict[str, Any], field: str) -> str:
    return field_text(rec, field, joiner="\n\x00\n")


@dataclass
class ExactOptions(FieldOptions):
    field: str = help_field("both", help="what must repeat: prompt, answer or both (normalised)")


class ExactDedup(BlockFilter):
    """Reject records whose normalised prompt, answer or both were seen before. The index
    keeps a 64-bit digest and the id of each first occurrence: about 28 bytes a record."""

    name = "exact_dedup"
    Options = ExactOptions

    def setup(self) -> None:
        self._seen = Runs(np.uint64)
        self._ids = Keys()

    def check_many(self, recs: list[dict[str, Any]]) -> list[str | None]:
        digests = np.array([int.from_bytes(hashlib.blake2b(normalise(_key_text(r, self.options.field)).encode(),
                                                           digest_size=8).digest(), "little") for r in recs], np.uint64)
        pos, first = self._seen.query(digests)
        earlier = dict(zip(pos.tolist(), first.tolist(), strict=True))
        reasons: list[str | None] = []
        new: dict[int, str] = {}  # digest -> id, first seen in this block
        fresh = []
        for i, (rec, digest) in enumerate(zip(recs, digests.tolist(), strict=True)):
            if i in earlier:
                reasons.append(f"exact duplicate ({self.options.field}) of {self._ids[earlier[i]]}")
            elif digest in new:
                reasons.append(f"exact duplicate ({self.options.field}) of {new[digest]}")
            else:
                new[digest] = rec["id"]
                fresh.append(i)
                reasons.append(None)
        start = len(self._ids)
        for i in fresh:
            self._ids.append(recs[i]["id"])
        self._seen.add(digests[fresh], np.arange(start, start + len(fresh), dtype=np.uint32))
        return reasons

    def save_state(self, arrays: dict[str, Any], prefix: str) -> dict[str, Any]:
        return {**super().save_state(arrays, prefix), "runs": self._seen.save(arrays, prefix + "seen"),
                "ids": self._ids.save(arrays, prefix + "ids")}

    def load_state(self, state: dict[str, Any], arrays: Any, prefix: str) -> None:
        super().load_state(state, arrays, prefix)
        self._seen.load(arrays, prefix + "seen", state["runs"])
        self._ids.load(arrays, prefix + "ids", state["ids"])


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
        if not 1 <= self.shingle <= 8 or self.num_perm < 8:
            raise ValueError("shingle: must be 1 to 8 words, and num_perm >= 8")
        if self.num_bands is not None and (self.num_bands < 1 or self.num_perm % self.num_bands):
            raise ValueError(f"num_bands: must divide num_perm ({self.num_perm})")


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
    """MinHash LSH: add() returns the key of an indexed near-duplicate or None.

    Memory per indexed text: 4 + 4 bytes for each of `num_bands` bands and 16 for its key;
    its signature (2 bytes a permutation) goes to a temporary file."""

    def __init__(self, threshold: float, shingle: int, num_perm: int, num_bands: int | None, seed: int):
        self.threshold = threshold
        self.signer = Signer(num_perm, shingle, seed)
        self.num_bands = num_bands or bands_for(threshold, num_perm)
        self.num_perm = num_perm
        self._bands = [Runs() for _ in range(self.num_bands)]
        self._digests = Digests(num_perm)
        self.keys = Keys()
        salt = np.arange(1, num_perm // self.num_bands + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        self._band_salt = mix(salt)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        """Bytes in memory (the signatures on disk excluded)."""
        return sum(b.nbytes for b in self._bands) + self.keys.nbytes

    def add(self, key: str, text: str) -> tuple[str, float] | None:
        """Index `text` under `key` unless it near-duplicates an indexed text; return that
        text's (key, estimated Jaccard) or None."""
        return self.add_many([key], [text])[0]

    def add_many(self, keys: list[str], texts: list[str]) -> list[tuple[str, float] | None]:
        """add() for each text in turn (a text may match an earlier one of the same call)."""
        return self._run(keys, self.signer.sign(texts), insert_all=False)

    def link(self, key: str, text: str) -> list[str]:
        """Index `text` under `key` whatever it matches; return the keys it near-duplicates."""
        return self.link_many([key], [text])[0]

    def link_many(self, keys: list[str], texts: list[str]) -> list[list[str]]:
        return self._run(keys, self.signer.sign(texts), insert_all=True)

    def add_signed(self, keys: list[str], sig: np.ndarray) -> list[tuple[str, float] | None]:
        """add_many() from signatures made beforehand with self.signer.sign (benchmarks)."""
        return self._run(keys, sig, insert_all=False)

    def attach(self, path: Path, rows: int | None = None) -> None:
        """Keep the signatures in `path` (resumable curation), holding its first `rows`
        (None: all it has)."""
        self._digests.close()
        self._digests = Digests(self.num_perm, path, rows)

    def save(self, arrays: dict[str, np.ndarray], prefix: str) -> dict[str, Any]:
        self._digests.flush()
        return {"bands": [runs.save(arrays, f"{prefix}b{b}_") for b, runs in enumerate(self._bands)],
                "keys": self.keys.save(arrays, prefix + "keys"), "digests": len(self._digests)}

    def load(self, state: dict[str, Any], arrays: Any, prefix: str, path: Path) -> None:
        for b, runs in enumerate(self._bands):
            runs.load(arrays, f"{prefix}b{b}_", state["bands"][b])
        self.keys.load(arrays, prefix + "keys", state["keys"])
        self.attach(path, state["digests"])

    def _band_keys(self, sig: np.ndarray) -> np.ndarray:
        rows = self.num_perm // self.num_bands
        with np.errstate(over="ignore"):
            acc = (sig.reshape(len(sig), self.num_bands, rows).astype(np.uint64) * self._band_salt).sum(axis=2, dtype=np.uint64)
            acc += np.arange(self.num_bands, dtype=np.uint64) * np.uint64(0xD6E8FEB86659FD93)
            return (mix(acc) >> np.uint64(32)).astype(np.uint32)

    def _similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        # 16-bit digests: two different minima agree by chance 1/65536 of the time
        equal = float(np.count_nonzero(a == b)) / len(a)
        return max(0.0, (equal - 2**-16) / (1 - 2**-16))

    def _run(self, keys: list[str], sig: np.ndarray, insert_all: bool) -> list[Any]:
        n = len(sig)
        digest = (sig & 0xFFFF).astype(np.uint16)
        bands = self._band_keys(sig)
        stored: dict[int, set[int]] = {}
        block: dict[int, set[int]] = {}
        for b, runs in enumerate(self._bands):
            for i, v in zip(*(x.tolist() for x in runs.query(bands[:, b])), strict=True):
                stored.setdefault(i, set()).add(v)
            if n > 1:  # texts of this call sharing the band: each later one is a candidate of the earlier
                order = np.argsort(bands[:, b], kind="stable")
                col = bands[order, b]
                same = np.flatnonzero(col[1:] == col[:-1])
                for j in same.tolist():
                    later = int(order[j + 1])
                    k = j
                    while k >= 0 and col[k] == col[j + 1]:
                        block.setdefault(later, set()).add(int(order[k]))
                        k -= 1
        base = len(self.keys)
        slot: dict[int, int] = {}  # position in this call -> index once inserted
        owner: list[int] = []  # index - base -> position in this call

        def key_of(index: int) -> str:
            return self.keys[index] if index < base else keys[owner[index - base]]

        out: list[Any] = []
        for i in range(n):
            matches: list[tuple[int, float]] = []
            for c in sorted(stored.get(i, ())):
                sim = self._similarity(digest[i], self._digests[c])
                if sim >= self.threshold:
                    matches.append((c, sim))
            for j in sorted(block.get(i, ())):
                if j in slot:
                    sim = self._similarity(digest[i], digest[j])
                    if sim >= self.threshold:
                        matches.append((slot[j], sim))
            if insert_all:
                out.append([key_of(c) for c, _ in matches])
            else:
                best = max(matches, key=lambda m: m[1], default=None)  # first of equals
                out.append(None if best is None else (key_of(best[0]), best[1]))
                if best is not None:
                    continue
            slot[i] = base + len(slot)
            owner.append(i)
        inserted = np.fromiter(slot, np.int64, len(slot))
        values = np.fromiter(slot.values(), np.uint32, len(slot))
        for b, runs in enumerate(self._bands):
            runs.add(bands[inserted, b], values)
        self._digests.append(digest[inserted])
        for i in slot:
            self.keys.append(keys[i])
        return out


class NearDedup(BlockFilter):
    """Reject records whose text is a near-duplicate (MinHash LSH) of an earlier one."""

    name = "near_dedup"
    Options = NearOptions

    def setup(self) -> None:
        o = self.options
        self.index = NearIndex(o.threshold, o.shingle, o.num_perm, o.num_bands, o.seed)

    def attach(self, folder: Path) -> None:
        self._digests_path = folder / f"{self.where}.digests"
        self.index.attach(self._digests_path)

    def save_state(self, arrays: dict[str, Any], prefix: str) -> dict[str, Any]:
        return {**super().save_state(arrays, prefix), "index": self.index.save(arrays, prefix)}

    def load_state(self, state: dict[str, Any], arrays: Any, prefix: str) -> None:
        super().load_state(state, arrays, prefix)
        self.index.load(state["index"], arrays, prefix, self._digests_path)

    def check_many(self, recs: list[dict[str, Any]]) -> list[str | None]:
        matches = self.index.add_many([r["id"] for r in recs], [_key_text(r, self.options.field) for r in recs])
        return [f"near duplicate ({self.options.field}, Jaccard ~{m[1]:.2f}) of {m[0]}" if m else None for m in matches]
