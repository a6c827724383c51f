"""The audit index behind `synth view`: every record of a run, where it ended and why.

One SQLite file, OUTPUT/.audit.sqlite, built by streaming the run's files once and reused
until one of them changes (size or mtime): a row per request id with its stage (train, eval,
rejected, failed, or not curated), the rejecting filter and reason, the PII redaction counts
and types, the seed's file and line, and where the full record sits (file, offset), plus a
full-text index (FTS5) of its turns (every user turn; every assistant turn and tool
result). Pages then query it: a million records are a few SQL queries away, never loaded
whole.

Texts that never went through the run's `pii` filter (rejected before it, failed, not
curated) are redacted the same way before they are indexed or shown: the page shows the
redaction types and counts, never the original values.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from synth.filters import parse_spec
from synth.filters.pii import TYPES, find_pii, map_strings
from synth.layout import Layout
from synth.runtime import atomic_write, progress_bar

logger = logging.getLogger(__name__)

VERSION = 2  # of the index: an older one is rebuilt
# A record's place in the run, most final first: the first file that holds an id wins.
SOURCES = ("rejected", "eval", "train", "raw", "failures")
STAGE = {"rejected": "rejected", "eval": "eval", "train": "train", "raw": "not curated", "failures": "failed"}
SNIPPET = 160


def _files(layout: Layout) -> dict[str, Path]:
    return {name: getattr(layout, name) for name in SOURCES}


def _signature(layout: Layout) -> str:
    parts = {"version": VERSION}
    for name, path in [*_files(layout).items(), ("manifest", layout.manifest)]:
        if path.exists():
            st = path.stat()
            parts[name] = [st.st_size, st.st_mtime_ns]
    return json.dumps(parts, sort_keys=True)


def _lines(path: Path) -> Iterator[tuple[int, int, int, bytes]]:
    """(line number, offset, length, bytes) of each non-blank line."""
    offset = 0
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                yield lineno, offset, len(line), line
            offset += len(line)


def redaction_types(layout: Layout) -> list[str] | None:
    """The PII types the run's `pii` filter looked for, or None when it had none."""
    try:
        manifest = json.loads(layout.manifest.read_text())
        specs = manifest["curate"]["config"]["filters"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for i, spec in enumerate(specs):
        try:
            name, options = parse_spec(spec, i)
        except ValueError:
            continue
        if name == "pii":
            return list(options.get("types") or TYPES)
    return None


def shown(rec: dict[str, Any], source: str, types: list[str] | None) -> tuple[dict[str, Any], dict[str, int]]:
    """The record as the page may show it, and the redactions made for showing it: texts
    that did not pass the run's pii filter are redacted here with its types (and the seed's
    fields of every record: a document chunk may hold what its answer did not)."""
    if types is None:
        return rec, {}

    if isinstance(rec.get("seed"), dict) and rec["seed"].get("fields"):
        rec = {**rec, "seed": {**rec["seed"], "fields": map_strings(rec["seed"]["fields"], lambda t: find_pii(t, types)[0])}}
    if source in ("train", "eval"):
        return rec, {}

    counts: dict[str, int] = {}
    messages = []
    for m in rec.get("messages") or []:
        if isinstance(m.get("content"), str):
            text, found = find_pii(m["content"], types)
            for k, v in found.items():
                counts[k] = counts.get(k, 0) + v
            m = {**m, "content": text}
        messages.append(m)
    return ({**rec, "messages": messages} if "messages" in rec else rec), counts


def _texts(rec: dict[str, Any]) -> tuple[str, str, str]:
    """(the last user turn, every user turn, every assistant turn and tool result): the
    snippet and what search looks in."""
    prompt, users, others = "", [], []
    for m in rec.get("messages") or []:
        content = m.get("content") if isinstance(m.get("content"), str) else ""
        if m.get("role") == "user":
            prompt = content
            users.append(content)
        elif m.get("role") in ("assistant", "tool"):
            others.append(content)
    return prompt, "\n".join(users), "\n".join(others)


SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE records (
    rowid INTEGER PRIMARY KEY, id TEXT UNIQUE, stage TEXT, filter TEXT, reason TEXT,
    pii TEXT, pii_types TEXT, seed_source TEXT, seed_line INTEGER, teacher TEXT,
    source TEXT, line INTEGER, offset INTEGER, length INTEGER, prompt TEXT);
CREATE VIRTUAL TABLE texts USING fts5(prompt, answer, content='');
"""


def build(layout: Layout, progress: bool = True) -> Path:
    """Write OUTPUT/.audit.sqlite unless it is current; returns its path."""
    path = layout.root / ".audit.sqlite"
    signature = _signature(layout)
    if path.exists():
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                if db.execute("SELECT value FROM meta WHERE key = 'signature'").fetchone() == (signature,):
                    return path
        except sqlite3.Error:
            pass
    files = {name: p for name, p in _files(layout).items() if p.exists()}
    if "raw" not in files and "failures" not in files:
        raise ValueError(f"{layout.root}: no raw.jsonl or failures.jsonl; run `synth generate` first (or give the run's output.dir)")
    types = redaction_types(layout)
    total = sum(p.stat().st_size for p in files.values())
    with atomic_write(path, "wb") as fh:  # sqlite writes the temporary file by its name
        db = sqlite3.connect(fh.name)
        try:
            db.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;" + SCHEMA)
            with progress_bar(total, "audit index", "B", progress) as bar:
                for source, file in files.items():
                    for lineno, offset, length, line in _lines(file):
                        bar.update(length)
                        _add(db, source, file, lineno, offset, length, line, types)
            db.execute("CREATE INDEX by_stage ON records (stage, filter)")
            db.execute("CREATE INDEX by_seed ON records (seed_line)")
            db.execute("INSERT INTO meta VALUES ('signature', ?)", (signature,))
            db.commit()
        finally:
            db.close()
    return path


def _add(db: sqlite3.Connection, source: str, file: Path, lineno: int, offset: int, length: int, line: bytes,
         types: list[str] | None) -> None:
    try:
        rec = json.loads(line)
        rid = rec["id"]
    except (ValueError, KeyError, TypeError):
        logger.warning("%s line %d is not a valid record; left out of the audit page", file, lineno)
        return
    rec, redacted = shown(rec, source, types)
    pii = {**(rec.get("pii") or {}), **redacted}
    rejection = rec.get("rejection") or {}
    if source == "failures":
        error = rec.get("error") or {}
        rejection = {"filter": "generate", "reason": f"{error.get('type', 'error')}: {error.get('message', '')}"}
    seed = rec.get("seed") or {}
    prompt, users, answers = _texts(rec)
    cur = db.execute(
        "INSERT OR IGNORE INTO records (id, stage, filter, reason, pii, pii_types, seed_source, seed_line, teacher, "
        "source, line, offset, length, prompt) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (rid, STAGE[source], rejection.get("filter"), rejection.get("reason"), json.dumps(pii) if pii else None,
         "," + ",".join(sorted(pii)) + "," if pii else None, seed.get("source"), seed.get("line"),
         (rec.get("teacher") or {}).get("model"), source, lineno, offset, length, prompt[:SNIPPET]))
    if cur.rowcount:
        db.execute("INSERT INTO texts (rowid, prompt, answer) VALUES (?, ?, ?)", (cur.lastrowid, users, answers))


def read_record(layout: Layout, row: sqlite3.Row) -> dict[str, Any]:
    """The full record of an index row, as the page may show it (redacted when it must be)."""
    path = _files(layout)[row["source"]]
    with path.open("rb") as fh:
        fh.seek(row["offset"])
        rec = json.loads(fh.read(row["length"]))
    return shown(rec, row["source"], redaction_types(layout))[0]
