"""Compact stores for curation's indexes: a few bytes per record, no Python object per record.

- `Runs`: a multimap of unsigned integer keys to uint32 values, as sorted numpy runs
  merged when a newer run grows to an eighth of the one before it (so at most about
  log8(n) runs are searched), queried a block of keys at a time. 8 bytes an entry for
  uint32 keys, 12 for uint64.
- `Keys`: record ids by position; 32-hex-digit ids (every request id) packed to 16 bytes.
- `Digests`: fixed-size rows (MinHash signatures) in an unlinked temporary file, read back
  by position with pread: they stay out of the process's memory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

_MERGE = 8


class Runs:
    """Sorted runs of (key, value); add() takes a block, query() a block of keys."""

    def __init__(self, key_dtype: type = np.uint32):
        self.key_dtype = key_dtype
        self.keys: list[np.ndarray] = []
        self.values: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(k) for k in self.keys)

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in zip(self.keys, self.values, strict=True))

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        if not len(keys):
            return
        order = np.argsort(keys, kind="stable")
        self.keys.append(np.asarray(keys, self.key_dtype)[order])
        self.values.append(np.asarray(values, np.uint32)[order])
        while len(self.keys) > 1 and len(self.keys[-2]) <= _MERGE * len(self.keys[-1]):
            k2, v2 = self.keys.pop(), self.values.pop()
            k1, v1 = self.keys.pop(), self.values.pop()
            at = np.searchsorted(k1, k2, side="right")  # older entries stay first among equals
            self.keys.append(np.insert(k1, at, k2))
            self.values.append(np.insert(v1, at, v2))

    def save(self, arrays: dict[str, np.ndarray], prefix: str) -> int:
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            arrays[f"{prefix}k{i}"], arrays[f"{prefix}v{i}"] = k, v
        return len(self.keys)

    def load(self, arrays, prefix: str, count: int) -> None:
        self.keys = [np.asarray(arrays[f"{prefix}k{i}"], self.key_dtype) for i in range(count)]
        self.values = [np.asarray(arrays[f"{prefix}v{i}"], np.uint32) for i in range(count)]

    def query(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in `keys`, value) of every stored entry whose key equals a queried key."""
        keys = np.asarray(keys, self.key_dtype)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        hits_q, hits_v = [], []
        for run_keys, run_values in zip(self.keys, self.values, strict=True):
            at = np.searchsorted(run_keys, sorted_keys)
            step = 0
            while True:  # equal keys sit side by side: walk them (rarely more than one)
                pos = at + step
                ok = pos < len(run_keys)
                ok[ok] = run_keys[pos[ok]] == sorted_keys[ok]
                if not ok.any():
                    break
                hits_q.append(order[ok])
                hits_v.append(run_values[pos[ok]])
                step += 1
        if not hits_q:
            return np.empty(0, np.int64), np.empty(0, np.uint32)
        return np.concatenate(hits_q), np.concatenate(hits_v)


class Keys:
    """A growing list of record ids, 16 bytes each for 32-hex-digit ids."""

    def __init__(self) -> None:
        self._packed = bytearray()
        self._other: dict[int, str] = {}
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def append(self, key: str) -> int:
        i = self._n
        if len(key) == 32:
            try:
                packed = bytes.fromhex(key)
            except ValueError:
                packed = b""
            if packed.hex() == key:  # lower-case hex: packs losslessly
                self._packed += packed
                self._n += 1
                return i
        self._packed += bytes(16)
        self._other[i] = key
        self._n += 1
        return i

    def __getitem__(self, i: int) -> str:
        other = self._other.get(i)
        return other if other is not None else self._packed[16 * i : 16 * i + 16].hex()

    @property
    def nbytes(self) -> int:
        return len(self._packed) + 100 * len(self._other)

    def save(self, arrays: dict[str, np.ndarray], prefix: str) -> dict[str, str]:
        arrays[f"{prefix}packed"] = np.frombuffer(bytes(self._packed), np.uint8)
        return {str(i): key for i, key in self._other.items()}

    def load(self, arrays, prefix: str, other: dict[str, str]) -> None:
        self._packed = bytearray(np.asarray(arrays[f"{prefix}packed"]).tobytes())
        self._other = {int(i): key for i, key in other.items()}
        self._n = len(self._packed) // 16


class Digests:
    """Rows of `width` uint16 values appended in blocks and read back one at a time: the
    newest rows in memory, older ones from an unlinked temporary file."""

    _BUFFER_ROWS = 4096

    def __init__(self, width: int, path: Path | None = None, rows: int | None = None):
        """An unlinked temporary file, or `path` (resumable curation) holding its first
        `rows` rows already (anything after them is cut off; None: every whole row)."""
        self.width = width
        if path is None:
            self._file = tempfile.TemporaryFile(prefix="stillhouse-digests-")
        else:
            self._file = open(path, "r+b" if path.exists() else "w+b")  # noqa: SIM115 (kept open, closed by close())
            if rows is None:
                rows = os.fstat(self._file.fileno()).st_size // (2 * width)
            self._file.truncate(rows * 2 * width)
            self._file.seek(0, os.SEEK_END)  # appends go after the kept rows
        self._written = rows or 0
        self._buffer = np.empty((self._BUFFER_ROWS, width), np.uint16)
        self._buffered = 0

    def __len__(self) -> int:
        return self._written + self._buffered

    def append(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, np.uint16)
        while len(rows):
            take = min(len(rows), self._BUFFER_ROWS - self._buffered)
            self._buffer[self._buffered : self._buffered + take] = rows[:take]
            self._buffered += take
            rows = rows[take:]
            if self._buffered == self._BUFFER_ROWS:
                self._flush()

    def flush(self) -> None:
        """Write the buffered rows to the file (and fsync it)."""
        self._flush()
        os.fsync(self._file.fileno())

    def _flush(self) -> None:
        data = memoryview(self._buffer[: self._buffered].tobytes())
        while data:
            data = data[os.write(self._file.fileno(), data) :]
        self._written += self._buffered
        self._buffered = 0

    def __getitem__(self, i: int) -> np.ndarray:
        if i >= self._written:
            return self._buffer[i - self._written]
        row = 2 * self.width
        return np.frombuffer(os.pread(self._file.fileno(), row, i * row), np.uint16)

    def close(self) -> None:
        self._file.close()
