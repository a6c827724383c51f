"""MinHash signatures of many texts at once, in numpy: no Python loop over words or shingles.

Per block of texts: normalise (case-folded, punctuation dropped; ASCII texts through one
byte translation), hash every word with a polynomial rolling hash over the whole block's
bytes (prefix sums), combine `shingle` consecutive word hashes into a word n-gram hash, and
sketch each text's set of n-gram hashes with one-permutation hashing (each hash falls in
one of `num_perm` bins, the bin keeps its minimum; Li, Owen and Zhang 2012) and optimal
densification for the empty bins (Shrivastava 2017). The fraction of equal bins of two
signatures estimates the Jaccard similarity of the two n-gram sets, as classic MinHash's
equal minima do, at one hash per n-gram instead of `num_perm`.

Deterministic: the same texts, `shingle`, `num_perm` and `seed` give the same signatures on
every machine and run (no Python `hash()`).
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

M64 = (1 << 64) - 1
EMPTY = np.uint32(0xFFFFFFFF)
_BASE = 0x100000001B3  # odd, so it has an inverse modulo 2**64
_PUNCT = re.compile(r"[^\w\s]")
# ASCII: letters lower-cased, digits and '_' kept (Python's \w), everything else a space.
_ASCII_TABLE = bytes((c | 0x20) if chr(c).isalpha() else c if (chr(c).isdigit() or c == 95) else 32 for c in range(128)) + b" " * 128
_MUL = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
                 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x2545F4914F6CDD1D, 0x9FB21C651E98DF25], np.uint64)
_EMPTY_TEXT = 0x51ED270B27A1B3C5  # the one shingle of an empty text (empty texts match each other)
_CHUNK = 512  # texts per numpy pass: arrays stay in cache and in the heap


def normalise(text: str) -> str:
    """Case-folded, NFKC, punctuation dropped, whitespace collapsed."""
    text = text.lower() if text.isascii() else unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_PUNCT.sub(" ", text).split())


def _normal_bytes(text: str) -> bytes:
    """normalise(text)'s words as bytes, separated by one or more spaces."""
    if text.isascii():
        return text.encode().translate(_ASCII_TABLE)
    return normalise(text).encode()


def _inverse(b: int) -> int:
    x = b
    for _ in range(7):  # Newton's iteration doubles the correct low bits each step
        x = (x * (2 - b * x)) & M64
    return x


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64 (wrapping)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class _Powers:
    """BASE**i and BASE**-i modulo 2**64, grown on demand."""

    def __init__(self) -> None:
        self.pow = np.ones(1, np.uint64)
        self.inv = np.ones(1, np.uint64)

    def upto(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.pow) < n:
            m = max(n, 2 * len(self.pow))
            one = np.ones(1, np.uint64)
            self.pow = np.concatenate([one, np.cumprod(np.full(m - 1, _BASE, np.uint64))])
            self.inv = np.concatenate([one, np.cumprod(np.full(m - 1, _inverse(_BASE), np.uint64))])
        return self.pow[:n], self.inv[:n]


_POWERS = _Powers()


def shingle_hashes(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hash of every word n-gram of every text, index of its text). A text of n words
    or fewer is one shingle of all its words; an empty text is one fixed shingle."""
    if not 1 <= n <= len(_MUL):
        raise ValueError(f"shingle: must be 1 to {len(_MUL)} words, got {n}")
    blobs = [_normal_bytes(t) for t in texts]
    arr = np.frombuffer(b" ".join(blobs), np.uint8)
    size = len(arr)
    starts = np.cumsum([0] + [len(b) + 1 for b in blobs[:-1]])
    pw, inv = _POWERS.upto(size + 1)
    with np.errstate(over="ignore"):
        prefix = np.zeros(size + 1, np.uint64)
        np.cumsum(arr * pw[:size], out=prefix[1:])
        word = np.concatenate([[False], arr != 32, [False]])
        edges = np.flatnonzero(word[1:] != word[:-1])
        ws, we = edges[::2], edges[1::2]
        words = mix((prefix[we] - prefix[ws]) * inv[ws])
        doc = np.searchsorted(starts, ws, side="right") - 1
        count = np.bincount(doc, minlength=len(texts))
        hashes, owners = [], []
        k = len(words) - n + 1
        if k > 0:
            acc = words[:k] * _MUL[0]
            for i in range(1, n):
                acc += words[i : i + k] * _MUL[i]
            inside = doc[:k] == doc[n - 1 :]
            hashes.append(mix(acc[inside]))
            owners.append(doc[:k][inside])
        short = np.flatnonzero(count < n)
        if len(short):  # texts of fewer than n words (rare): one shingle of all their words
            first = np.cumsum(count) - count
            acc = np.full(len(short), _EMPTY_TEXT, np.uint64)
            for i in range(n - 1):
                has = count[short] > i
                acc[has] += words[first[short[has]] + i] * _MUL[i]
            hashes.append(mix(acc))
            owners.append(short)
    if not hashes:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    return np.concatenate(hashes), np.concatenate(owners)


class Signer:
    """Texts -> (n, num_perm) uint32 MinHash signatures (one-permutation hashing)."""

    def __init__(self, num_perm: int = 128, shingle: int = 5, seed: int = 42):
        if num_perm < 8:
            raise ValueError(f"num_perm: must be >= 8, got {num_perm}")
        self.num_perm, self.shingle, self.seed = num_perm, shingle, seed
        self._salt = np.uint64(mix(np.array([seed & M64], np.uint64))[0])
        # Optimal densification: an empty bin j takes the value of bin route[j, t] for the
        # first t at which that bin is filled; the route is the same for every text.
        rng = np.random.default_rng(seed)
        self._route = rng.integers(0, num_perm, size=(num_perm, 8 * num_perm))

    def sign(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.num_perm), np.uint32)
        for i in range(0, len(texts), _CHUNK):
            out[i : i + _CHUNK] = self._sign(texts[i : i + _CHUNK])
        return out

    def _sign(self, texts: list[str]) -> np.ndarray:
        k = self.num_perm
        hashes, owners = shingle_hashes(texts, self.shingle)
        with np.errstate(over="ignore"):
            h = mix(hashes ^ self._salt)
            bins = ((h >> np.uint64(32)) * np.uint64(k)) >> np.uint64(32)
        values = np.minimum((h & np.uint64(0xFFFFFFFF)).astype(np.uint32), EMPTY - np.uint32(1))
        sig = np.full(len(texts) * k, EMPTY, np.uint32)
        np.minimum.at(sig, owners * k + bins.astype(np.int64), values)
        sig = sig.reshape(len(texts), k)
        filled = sig.copy()
        rows, cols = np.nonzero(sig == EMPTY)
        for t in range(self._route.shape[1]):
            if not len(rows):
                break
            v = filled[rows, self._route[cols, t]]
            ok = v != EMPTY
            sig[rows[ok], cols[ok]] = v[ok]
            rows, cols = rows[~ok], cols[~ok]
        if len(rows):  # still empty after the route (a text of one or two shingles): next filled bin
            for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
                row = filled[r]
                nz = np.flatnonzero(row != EMPTY)
                sig[r, c] = row[nz[np.searchsorted(nz, c) % len(nz)]]
        return sig
