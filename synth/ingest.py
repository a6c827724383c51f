"""`synth ingest DOCS... --out chunks.jsonl`: a domain's documents into text chunks that keep
their provenance.

Conversion: PDF, DOCX, PPTX and HTML with markitdown's converter for that format (Microsoft's
markitdown: pdfminer for PDFs, whose page breaks it keeps as form feeds, mammoth for DOCX,
python-pptx, BeautifulSoup for HTML; all to Markdown with the headings kept, no model
download, so it works offline); Markdown and plain text are read as they are. Runs of spaces
and tabs are collapsed. Scanned PDFs (images only) have no text: they are reported, not OCRed.

Chunking: the text is cut into sections at Markdown headings (the heading path is the
chunk's `section`), and each section into chunks of at most `max_tokens` words at paragraph
boundaries (a longer paragraph at sentence or word boundaries), each chunk starting with the
last `overlap` words of the one before. Chunks never cross a page.

Each chunk is one JSONL row: `id` (a hash of the file's content and the chunk's place),
`text`, `source` {file, sha256, format, page, section, span: [start, end) in that page's
converted text}, `chunk` and `chunks` (its index and its file's count). Deterministic (files
in sorted order, no timestamps) and resumable: a file's chunks are appended in one write,
files already in the output (same content hash) are skipped, and a torn or partial tail is
cut off on the next run. A file that cannot be read is reported with the reason and the
others go on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.configtools import help_field
from synth.runtime import atomic_write, progress_bar

logger = logging.getLogger(__name__)

FORMATS = {".pdf": "pdf", ".docx": "docx", ".pptx": "pptx", ".html": "html", ".htm": "html", ".md": "markdown",
           ".markdown": "markdown", ".txt": "text"}
_CONVERTERS = {"pdf": "PdfConverter", "docx": "DocxConverter", "pptx": "PptxConverter", "html": "HtmlConverter"}
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_SPACES = re.compile(r"[ \t]+")
_WORD = re.compile(r"\S+")


@dataclass
class IngestOptions:
    max_tokens: int = help_field(300, help="most words in a chunk")
    overlap: int = help_field(40, help="words of the previous chunk repeated at the start of the next")
    min_tokens: int = help_field(5, help="chunks with fewer words are left out (headings alone, page numbers)")

    def __post_init__(self) -> None:
        if self.max_tokens < 10:
            raise ValueError(f"max_tokens: must be >= 10, got {self.max_tokens}")
        if not 0 <= self.overlap < self.max_tokens // 2:
            raise ValueError(f"overlap: must be >= 0 and under half of max_tokens ({self.max_tokens}), got {self.overlap}")
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens: must be >= 0, got {self.min_tokens}")


def find_documents(paths: list[str]) -> list[Path]:
    """The supported files among `paths` (folders searched recursively), sorted, deduplicated."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            found.update(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in FORMATS)
        elif p.is_file():
            if p.suffix.lower() not in FORMATS:
                raise ValueError(f"{p}: unsupported format '{p.suffix}'; supported: {', '.join(sorted(FORMATS))}")
            found.add(p)
        else:
            raise ValueError(f"{p} does not exist")
    return sorted(found)


def convert(path: Path) -> list[tuple[int | None, str]]:
    """(page number or None, text) of a document, spaces collapsed."""
    fmt = FORMATS[path.suffix.lower()]
    if fmt in ("markdown", "text"):
        text = path.read_text(encoding="utf-8")
    else:
        try:
            from markitdown import StreamInfo, converters
        except ImportError:
            raise ImportError("synth ingest needs markitdown for PDF, DOCX, PPTX and HTML: pip install 'stillhouse[docs]'") from None
        # The format's own converter: markitdown's guessing would read a broken PDF as plain text.
        converter = getattr(converters, _CONVERTERS[fmt])()
        with path.open("rb") as fh:
            text = converter.convert(fh, StreamInfo(extension=path.suffix.lower(), filename=path.name)).markdown
    text = text.replace("\r\n", "\n")
    if fmt == "pdf":
        pages = text.split("\f")
        if pages and not pages[-1].strip():
            pages.pop()
        return [(i + 1, _SPACES.sub(" ", page)) for i, page in enumerate(pages)]
    return [(None, _SPACES.sub(" ", text))]


def _sections(text: str) -> Iterator[tuple[str, int, int]]:
    """(heading path, start, end) of the text under each Markdown heading (and before the first)."""
    path: list[tuple[int, str]] = []
    start, title = 0, ""
    for m in _HEADING.finditer(text):
        if text[start : m.start()].strip():
            yield title, start, m.start()
        level = len(m.group(1))
        path = [(lv, t) for lv, t in path if lv < level] + [(level, m.group(2).strip())]
        title = " > ".join(t for _, t in path)
        start = m.start()
    if text[start:].strip():
        yield title, start, len(text)


def chunk_spans(text: str, start: int, end: int, o: IngestOptions) -> Iterator[tuple[int, int]]:
    """[start, end) spans of the chunks of one section."""
    words = [(m.start(), m.end()) for m in _WORD.finditer(text, start, end)]
    i = 0
    while i < len(words):
        j = min(i + o.max_tokens, len(words))
        if j < len(words):  # end at the last paragraph end, else sentence end, else line break in the budget
            limit = words[j - 1][1]
            lo = words[i + max(1, o.max_tokens // 2) - 1][1]
            window = text[lo:limit]
            for pattern in (r"[.!?:][\"')\]]?[ \t]*\n\s*\n", r"[.!?][\"')\]]?\s", r"\n\s*\n"):
                ends = [m.end() + lo for m in re.finditer(pattern, window)]
                if ends:
                    cut = ends[-1]
                    j = next(k for k in range(i, len(words) + 1) if k == len(words) or words[k][0] >= cut)
                    break
        yield words[i][0], words[j - 1][1]
        if j >= len(words):
            break
        i = max(j - o.overlap, i + 1)


def chunk_document(path: Path, o: IngestOptions, sha: str) -> list[dict[str, Any]]:
    rows = []
    fmt = FORMATS[path.suffix.lower()]
    for page, text in convert(path):
        for section, s_start, s_end in _sections(text):
            for start, end in chunk_spans(text, s_start, s_end, o):
                body = text[start:end].strip()
                if len(_WORD.findall(body)) < o.min_tokens:
                    continue
                rid = hashlib.sha256(f"{sha}:{page}:{start}:{end}".encode()).hexdigest()[:32]
                rows.append({"id": rid, "text": body, "source": {"file": str(path), "sha256": sha, "format": fmt,
                                                                  "page": page, "section": section, "span": [start, end]}})
    for i, row in enumerate(rows):
        row["chunk"], row["chunks"] = i, len(rows)
    return rows


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _done(out: Path) -> set[str]:
    """Content hashes of the files whose chunks are all in `out`; a torn or partial tail is cut."""
    if not out.exists():
        return set()
    keep, counts, totals = [], {}, {}
    with out.open("rb") as fh:
        for line in fh:
            try:
                row = json.loads(line)
                sha = row["source"]["sha256"]
            except (ValueError, KeyError, TypeError):
                break  # torn tail
            keep.append((sha, line))
            counts[sha] = counts.get(sha, 0) + 1
            totals[sha] = row["chunks"]
    complete = {sha for sha, n in counts.items() if n == totals[sha]}
    good = [line for sha, line in keep if sha in complete]
    if len(good) != len(keep) or sum(map(len, good)) != out.stat().st_size:
        with atomic_write(out, "wb") as fh:
            fh.write(b"".join(good))
        logger.info("%s: cut a partial tail left by an interrupted run", out)
    return complete


def run_ingest(paths: list[str], out: Path, o: IngestOptions | None = None, progress: bool = True) -> dict[str, Any]:
    """Chunk every supported document under `paths` into `out` (JSONL); returns the counts
    and the files that could not be read with the reason."""
    o = o or IngestOptions()
    files = find_documents(paths)
    if not files:
        raise ValueError(f"no documents under {', '.join(paths)}; supported: {', '.join(sorted(FORMATS))}")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _done(out)
    counts = {"files": len(files), "skipped": 0, "ingested": 0, "chunks": 0, "failed": 0}
    failures: list[dict[str, str]] = []
    with out.open("ab") as fh, progress_bar(len(files), "ingest", "file", progress) as bar:
        for path in files:
            bar.update(1)
            sha = _file_sha(path)
            if sha in done:
                counts["skipped"] += 1
                continue
            try:
                rows = chunk_document(path, o, sha)
            except ImportError:
                raise
            except Exception as exc:  # a converter's error on one file: report it, go on
                reason = f"{type(exc).__name__}: {exc}".strip()
                logger.warning("%s: cannot be read (%s); the other files go on", path, reason)
                failures.append({"file": str(path), "reason": reason})
                counts["failed"] += 1
                continue
            if not rows:
                logger.warning("%s: no text found (a scanned PDF needs OCR first); left out", path)
                failures.append({"file": str(path), "reason": "no text found"})
                counts["failed"] += 1
                continue
            fh.write(b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows))
            fh.flush()
            os.fsync(fh.fileno())
            done.add(sha)
            counts["ingested"] += 1
            counts["chunks"] += len(rows)
    return {**counts, "failures": failures}
