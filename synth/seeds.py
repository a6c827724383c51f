"""Seed rows from JSONL, CSV, plain text, parquet or a saved HF dataset.

Every error names the file, the line (or row) and the field, and says how to fix it.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.config import SeedsConfig
from synth.runtime import read_jsonl_objects, text_lines

_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".txt": "txt", ".parquet": "parquet"}


@dataclass(frozen=True)
class SeedRow:
    """One seed: the template variables it provides and where it came from."""

    source: str
    line: int  # 1-based line in a text file, or 1-based row in a dataset
    fields: dict[str, Any]

    def provenance(self) -> dict[str, Any]:
        return {"source": self.source, "line": self.line, "fields": self.fields}


def detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "hf"
    found = _EXTENSIONS.get(path.suffix.lower())
    if found is None:
        raise ValueError(
            f"seeds.path: cannot tell the format of {path} from its extension; "
            f"set seeds.format to one of jsonl, csv, txt, parquet, hf"
        )
    return found


def _read_csv(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(text_lines(path, "seeds.path"))
    if not reader.fieldnames:
        return
    for row in reader:
        lineno = reader.line_num
        if None in row:
            raise ValueError(
                f"seeds.path: {path} line {lineno} has more cells than the header "
                f"({len(reader.fieldnames)} columns: {', '.join(reader.fieldnames)}); quote cells that contain commas"
            )
        missing = [k for k, v in row.items() if v is None]
        if missing:
            raise ValueError(
                f"seeds.path: {path} line {lineno} has no cell for column '{missing[0]}'; "
                "every row needs as many cells as the header"
            )
        yield lineno, dict(row)


def _read_txt(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, line in enumerate(text_lines(path, "seeds.path"), 1):
        text = line.rstrip("\r\n")
        if text.strip():
            yield lineno, {"prompt": text}


def _read_dataset(path: Path, fmt: str, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"seeds.path: reading {fmt} seeds needs datasets: pip install 'stillhouse[data]'"
        ) from None
    if fmt == "parquet":
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    else:
        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError as exc:
            raise ValueError(
                f"seeds.path: {path} is not a dataset saved with save_to_disk ({exc}); "
                "give a .jsonl/.csv/.txt/.parquet file or a saved dataset directory"
            ) from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(
                    f"seeds.split: {path} has no split '{split}'; it has {', '.join(ds)}"
                )
            ds = ds[split]
    for i, row in enumerate(ds, 1):
        yield i, dict(row)


def read_rows(cfg: SeedsConfig) -> Iterator[tuple[int, dict[str, Any]]]:
    """Raw (line, row) pairs of the seed source, validated for shape only."""
    path = Path(cfg.path)
    if not path.exists():
        raise ValueError(f"seeds.path: {path} does not exist; check the path (relative paths start at the working directory)")
    fmt = detect_format(path, cfg.format)
    if fmt in ("jsonl", "csv", "txt") and not path.is_file():
        raise ValueError(f"seeds.path: {path} is a directory; for a saved HF dataset set seeds.format=hf")
    readers = {
        "jsonl": lambda: read_jsonl_objects(path, "seeds.path", '{"prompt": "..."}'),
        "csv": lambda: _read_csv(path),
        "txt": lambda: _read_txt(path),
        "parquet": lambda: _read_dataset(path, "parquet", cfg.split),
        "hf": lambda: _read_dataset(path, "hf", cfg.split),
    }
    return readers[fmt]()


def load_seeds(cfg: SeedsConfig) -> list[SeedRow]:
    """All seed rows, mapped to template variables by `cfg.fields`."""
    source = str(cfg.path)
    rows: list[SeedRow] = []
    for lineno, row in read_rows(cfg):
        if cfg.fields:
            fields = {}
            for var, column in cfg.fields.items():
                if column not in row:
                    raise ValueError(
                        f"seeds.fields.{var}: {source} line {lineno} has no column '{column}' "
                        f"(it has: {', '.join(map(str, row)) or 'none'}); fix the row or the mapping"
                    )
                fields[var] = row[column]
        else:
            fields = row
        rows.append(SeedRow(source=source, line=lineno, fields=fields))
        if cfg.limit is not None and len(rows) >= cfg.limit:
            break
    if not rows:
        raise ValueError(f"seeds.path: {source} has no seed rows; add at least one prompt")
    return rows
