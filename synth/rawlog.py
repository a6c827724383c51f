"""Append-only JSONL logs (raw.jsonl, failures.jsonl): the cache and the resume point.

Each finished record is handed to the OS at once (one write per line), so killing the
process loses nothing finished; fsync runs in batches (every N records or T seconds) so
a machine crash loses at most the last batch. A torn last line (a write cut short by a
crash) is cut off with a warning before appending; any other bad line is an error that names it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from synth.runtime import atomic_write, is_main_process

logger = logging.getLogger(__name__)


def repair_tail(path: Path) -> bool:
    """Cut off a torn last line (one without its newline); True when something was cut.

    Every record is written with its newline in one write, so a line without one can only
    be a write cut short by a crash or kill.
    """
    if not path.exists():
        return False
    size = path.stat().st_size
    if size == 0:
        return False
    with path.open("r+b") as fh:
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return False
        # Walk back to the previous newline; the bytes after it are the torn line.
        pos, block = size, 1 << 16
        keep = 0
        while pos > 0:
            start = max(0, pos - block)
            fh.seek(start)
            chunk = fh.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    logger.warning(
        "%s: the last line was torn (%d bytes without a newline), probably by a crash or kill; "
        "cut it off, that request will be sent again", path, size - keep,
    )
    return True


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a JSONL log, in order; a corrupt line is an error that names it."""
    for _, record in iter_numbered_records(path):
        yield record


def iter_numbered_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of a JSONL log, in order; a missing file has none."""
    if not path.exists():
        return
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError as exc:
                raise ValueError(
                    f"{path} line {lineno} is not valid JSON ({exc}); it was not written by synth "
                    "as is: fix or delete that line (the other lines are intact)"
                ) from None
            if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                raise ValueError(f"{path} line {lineno} is not a record with a string 'id'; fix or delete that line")
            yield lineno, record


def repeated_request(path: Path, request_id: str, first_line: int, line: int) -> ValueError:
    """The error for a request id a log holds twice (synth writes each once)."""
    return ValueError(f"{path} line {line} repeats request {request_id} of line {first_line}; synth writes each "
                      "request once, so the log was edited or merged by hand: delete one of the two lines")


class Appender:
    """Appends whole entries to a file: one write per entry (a kill loses nothing written),
    fsync in batches (every `sync_every` entries or `sync_interval_s` seconds)."""

    def __init__(self, path: Path, sync_every: int = 256, sync_interval_s: float = 5.0):
        self.path = path
        self.sync_every = sync_every
        self.sync_interval_s = sync_interval_s
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._unsynced = 0
        self._last_sync = time.monotonic()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # os.write may write less than asked (signals, full pipes)
            written = os.write(self._fd, view)
            view = view[written:]
        self._unsynced += 1
        if self._unsynced >= self.sync_every or time.monotonic() - self._last_sync >= self.sync_interval_s:
            self.sync()

    def sync(self) -> None:
        if self._unsynced:
            os.fsync(self._fd)
            self._unsynced = 0
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JsonlAppender(Appender):
    """Appends records to a JSONL file, one line each."""

    def append(self, record: dict[str, Any]) -> None:
        self.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))


def rewrite_atomically(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace a JSONL file with `records` (runtime.atomic_write)."""
    with atomic_write(path) as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


class DirLock:
    """An exclusive lock on an output directory, so two commands never write it at once.

    Every command that writes an output dir holds it (generate, expand, curate, the card,
    sft train and eval; `synth run` for all its stages). Re-entrant within a process: a
    stage run inside `synth run` holds the lock `synth run` took. Under torchrun /
    accelerate launch only rank 0 takes it (the other ranks write nothing there)."""

    _held: dict[Path, list] = {}  # path -> [open file, depth], for this process

    def __init__(self, directory: Path):
        self.path = (directory / ".lock").absolute()

    def __enter__(self) -> DirLock:
        if not is_main_process():
            return self
        held = self._held.get(self.path)
        if held is not None:
            held[1] += 1
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise ValueError(
                f"output.dir: {self.path.parent} is in use by {holder}; wait for it to finish "
                "or choose another output.dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        self._held[self.path] = [fh, 1]
        return self

    def __exit__(self, *exc: object) -> None:
        held = self._held.get(self.path)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del self._held[self.path]
            fcntl.flock(held[0], fcntl.LOCK_UN)
            held[0].close()
