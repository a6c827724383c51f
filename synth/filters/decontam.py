"""Decontamination: reject records that share a long word n-gram with an evaluation set."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.configtools import help_field
from synth.filters.base import FieldOptions, Filter, field_text
from synth.filters.dedup import normalise


@dataclass
class EvalSet:
    path: str = help_field(help="eval set: .jsonl/.csv/.txt/.parquet or a saved HF dataset dir")
    fields: list[str] = help_field([], help="text columns to index; empty indexes every string column")
    format: str = help_field("auto", help="as seeds.format")
    split: str = help_field("test", help="split of a saved DatasetDict")
    name: str | None = help_field(None, help="a name for reports (default: the file name)")

    def __post_init__(self) -> None:
        if not Path(self.path).exists():
            raise ValueError(f"path: {self.path} does not exist")


@dataclass
class DecontamOptions(FieldOptions):
    field: str = help_field("both", help="record text checked: prompt, answer or both")
    eval_sets: list[EvalSet] = help_field([], help="evaluation sets to protect")
    n: int = help_field(13, help="word n-gram length; an item shorter than n words (but >= min_words) is matched whole")
    min_words: int = help_field(8, help="eval items shorter than this are ignored (too generic to match on)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.eval_sets:
            raise ValueError("eval_sets: give at least one eval set, e.g. [{path: evals/test.jsonl, fields: [question]}]")
        if self.n < 1 or self.min_words < 1:
            raise ValueError("n: must be >= 1 (and min_words >= 1)")


def _h(words: list[str]) -> bytes:
    return hashlib.blake2b(" ".join(words).encode(), digest_size=12).digest()


class Decontam(Filter):
    """Reject records that contain an n-gram of any eval item; reports which item matched."""

    name = "decontam"
    Options = DecontamOptions

    @classmethod
    def inputs(cls, o: DecontamOptions) -> dict[str, Any]:
        from synth.fingerprint import path_digest

        return {"eval_sets": [path_digest(Path(es.path)) for es in o.eval_sets]}

    def setup(self) -> None:
        from synth.config import SeedsConfig
        from synth.seeds import read_rows

        o, where = self.o, self.where
        self.index: dict[bytes, str] = {}
        self.lengths: set[int] = set()
        for i, es in enumerate(o.eval_sets):
            label = es.name or Path(es.path).name
            cfg = SeedsConfig(path=es.path, format=es.format, split=es.split)
            for line, row in read_rows(cfg):
                missing = [f for f in es.fields if f not in row]
                if missing:
                    raise ValueError(f"{where}.eval_sets[{i}].fields: {es.path} line {line} has no column '{missing[0]}'")
                values = [row[f] for f in es.fields] if es.fields else [v for v in row.values() if isinstance(v, str)]
                for value in values:
                    words = normalise(str(value)).split()
                    if len(words) < o.min_words:
                        continue
                    size = min(o.n, len(words))
                    self.lengths.add(size)
                    for j in range(len(words) - size + 1):
                        self.index.setdefault(_h(words[j : j + size]), f"{label} line {line}")

    def check(self, rec: dict[str, Any]) -> str | None:
        words = normalise(field_text(rec, self.o.field)).split()
        for size in sorted(self.lengths, reverse=True):
            for j in range(len(words) - size + 1):
                hit = self.index.get(_h(words[j : j + size]))
                if hit:
                    return f"{size}-gram overlap with eval item {hit}: '{' '.join(words[j : j + size])[:80]}'"
        return None
