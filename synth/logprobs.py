"""The teacher's top-k logprobs, beside the raw log: OUTPUT/logprobs.bin.

`sampling.logprobs: k` makes the teacher return, for every token of its answer, the k most
likely tokens and their logprobs. They do not go into raw.jsonl (512 tokens x k=20 per
answer would bloat every reader of it): each finished answer appends one binary entry here,
keyed by request id, *before* its record goes to raw.jsonl. So a kill at any moment loses no
finished record's logprobs; an entry whose record never reached raw.jsonl is superseded when
the request is answered again (the last entry of an id wins, and it is the one written just
before that id's record). A torn last entry (a write cut short) is cut off like a torn line
of raw.jsonl; a corrupt entry in the middle is an error naming its offset.

One entry, little-endian:

    b"LP" | request id (16 bytes) | chat digest (8) | vocabulary digest (8) | n (u32) | k (u16)
    | answer token ids (i32 x n) | top-k token ids (i32 x n x k) | top-k logprobs (f16 x n x k) | crc32

The chat digest (every turn, the answer included) ties the logprobs to the text they score:
curation that edits a turn (PII redaction) breaks the tie, and training falls back to plain
cross-entropy for that record. The vocabulary digest says which tokenizer the ids belong to (zeros when unknown).
About 4 + 6k bytes per answer token (124 KB per 1,000 tokens at k=20).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synth.rawlog import Appender

logger = logging.getLogger(__name__)

MAGIC = b"LP"
_HEAD = struct.Struct("<2s16s8s8sIH")
_CRC = struct.Struct("<I")
UNKNOWN_VOCAB = b"\0" * 8


def chat_digest(messages: list[dict[str, Any]]) -> bytes:
    """The digest of a chat (every turn, the answer included) stored with its entry."""
    turns = [[m.get("role"), m.get("content")] for m in messages]
    return hashlib.sha256(json.dumps(turns, ensure_ascii=False).encode("utf-8")).digest()[:8]


def vocab_digest(tokenizer: Any) -> bytes:
    """A digest of a tokenizer's vocabulary (token -> id, added tokens included)."""
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256("\n".join(f"{i}\t{t}" for t, i in items).encode("utf-8")).digest()[:8]


@dataclass
class TopK:
    """The teacher's view of one answer: the tokens it wrote and, at each, its top k."""

    token_ids: np.ndarray  # int32 [n]
    ids: np.ndarray  # int32 [n, k]; -1 where fewer than k were given
    logprobs: np.ndarray  # float16 [n, k]; -inf where ids is -1

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])

    @classmethod
    def from_lists(cls, token_ids: list[int], top: list[list[tuple[int, float]]], k: int) -> TopK:
        """From per-position [(token id, logprob), ...] (best first, at most k used)."""
        n = len(token_ids)
        ids = np.full((n, k), -1, dtype=np.int32)
        lps = np.full((n, k), -np.inf, dtype=np.float16)
        for i, position in enumerate(top):
            for j, (tid, lp) in enumerate(position[:k]):
                ids[i, j] = tid
                lps[i, j] = max(lp, -65000.0)  # float16's range; -inf stays for "absent"
        return cls(np.asarray(token_ids, dtype=np.int32), ids, lps)

    @classmethod
    def from_ranked(cls, token_ids: list[int], positions: np.ndarray, ids: np.ndarray, logprobs: np.ndarray,
                    ranks: np.ndarray, k: int) -> TopK:
        """From flat arrays (one row per (position, token) pair, its rank among the
        vocabulary), as vLLM's FlatLogprobs gives them; ranks above k are left out."""
        n = len(token_ids)
        out_ids = np.full((n, k), -1, dtype=np.int32)
        out_lps = np.full((n, k), -np.inf, dtype=np.float16)
        keep = (ranks >= 1) & (ranks <= k)
        out_ids[positions[keep], ranks[keep] - 1] = ids[keep]
        out_lps[positions[keep], ranks[keep] - 1] = np.maximum(logprobs[keep], -65000.0)
        return cls(np.asarray(token_ids, dtype=np.int32), out_ids, out_lps)

    def encode(self, request_id: str, messages: list[dict[str, Any]], vocab: bytes) -> bytes:
        n, k = self.ids.shape
        head = _HEAD.pack(MAGIC, bytes.fromhex(request_id), chat_digest(messages), vocab, n, k)
        body = (self.token_ids.astype("<i4").tobytes() + self.ids.astype("<i4").tobytes()
                + self.logprobs.astype("<f2").tobytes())
        data = head + body
        return data + _CRC.pack(zlib.crc32(data))


@dataclass
class Entry:
    """Where one answer's logprobs are, and what they belong to."""

    offset: int
    text: bytes
    vocab: bytes
    n: int
    k: int


def _body_size(n: int, k: int) -> int:
    return 4 * n + 4 * n * k + 2 * n * k


def scan(path: Path) -> tuple[dict[str, Entry], int]:
    """(entries by request id, the last one of each id; the offset where the valid data ends).

    A torn last entry (cut short, or its checksum failing at the very end) ends the valid
    data; a damaged entry with data after it is an error."""
    index: dict[str, Entry] = {}
    if not path.exists():
        return index, 0
    size = path.stat().st_size
    offset = 0
    with path.open("rb") as fh:
        while offset < size:
            head = fh.read(_HEAD.size)
            if len(head) < _HEAD.size:
                return index, offset
            magic, rid, text, vocab, n, k = _HEAD.unpack(head)
            need = _body_size(n, k) + _CRC.size
            rest = fh.read(need) if magic == MAGIC else b""
            intact = len(rest) == need and _CRC.unpack(rest[-_CRC.size:])[0] == zlib.crc32(head + rest[:-_CRC.size])
            if not intact:
                if magic == MAGIC and offset + _HEAD.size + need >= size:
                    return index, offset  # the last entry, cut short by a crash or kill
                raise ValueError(f"{path}: the entry at byte {offset} is damaged and data follows it; delete the file "
                                 "and capture the logprobs again (rerun synth generate in a new output.dir)")
            index[rid.hex()] = Entry(offset, text, vocab, n, k)
            offset += _HEAD.size + need
    return index, offset


def read_entry(fh: Any, entry: Entry) -> TopK:
    fh.seek(entry.offset + _HEAD.size)
    n, k = entry.n, entry.k
    raw = fh.read(_body_size(n, k))
    token_ids = np.frombuffer(raw, dtype="<i4", count=n)
    ids = np.frombuffer(raw, dtype="<i4", count=n * k, offset=4 * n).reshape(n, k)
    lps = np.frombuffer(raw, dtype="<f2", count=n * k, offset=4 * n + 4 * n * k).reshape(n, k)
    return TopK(token_ids.astype(np.int32), ids.astype(np.int32), lps.astype(np.float16))


class LogprobStore:
    """Read access: the last entry of each request id, checked against an answer's text."""

    def __init__(self, path: Path):
        self.path = path
        self.index, _ = scan(path)
        self._fh = path.open("rb") if path.exists() else None

    def __len__(self) -> int:
        return len(self.index)

    def status(self, request_id: str, messages: list[dict[str, Any]]) -> str:
        """"ok", "missing" (no logprobs for this id) or "changed" (a turn was edited since)."""
        entry = self.index.get(request_id)
        if entry is None:
            return "missing"
        return "ok" if entry.text == chat_digest(messages) else "changed"

    def get(self, request_id: str) -> tuple[TopK, Entry] | None:
        entry = self.index.get(request_id)
        return None if entry is None or self._fh is None else (read_entry(self._fh, entry), entry)

    def iter_entries(self) -> Iterator[tuple[str, Entry]]:
        return iter(self.index.items())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class LogprobAppender(Appender):
    """Appends entries (one write each, fsync in batches, as raw.jsonl); a torn last entry
    is cut off first."""

    def __init__(self, path: Path, sync_every: int = 256, sync_interval_s: float = 5.0):
        _, end = scan(path)
        if path.exists() and path.stat().st_size > end:
            logger.warning("%s: the last entry was torn (%d bytes), probably by a crash or kill; cut it off, that "
                           "request will be sent again", path, path.stat().st_size - end)
            with path.open("r+b") as fh:
                fh.truncate(end)
                os.fsync(fh.fileno())
        super().__init__(path, sync_every, sync_interval_s)

    def append(self, request_id: str, messages: list[dict[str, Any]], topk: TopK, vocab: bytes) -> None:
        self.write(topk.encode(request_id, messages, vocab))
