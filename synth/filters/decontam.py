"""Decontamination: reject records that share a long word n-gram with an evaluation set."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.configtools import help_field
from synth.filters import answer_text, prompt_text
from synth.filters.base import options
from synth.filters.dedup import normalise


@dataclass
class EvalSet:
    path: str = help_field(help="eval set: .jsonl/.csv/.txt/.parquet or a saved HF dataset dir")
    fields: list[str] = help_field([], help="text columns to index; empty indexes every string column")
    format: str = help_field("auto", help="as seeds.format")
    split: str = help_field("test", help="split of a saved DatasetDict")
    name: str | None = help_field(None, help="a name for reports (default: the file name)")


@dataclass
class DecontamOptions:
    eval_sets: list[EvalSet] = help_field([], help="evaluation sets to protect")
    n: int = help_field(13, help="word n-gram length; an item shorter than n words (but >= min_words) is matched whole")
    min_words: int = help_field(8, help="eval items shorter than this are ignored (too generic to match on)")
    field: str = help_field("both", help="record text checked: prompt, answer or both")

    def __post_init__(self) -> None:
        if not self.eval_sets:
            raise ValueError("eval_sets: give at least one eval set, e.g. [{path: evals/test.jsonl, fields: [question]}]")
        if self.n < 1 or self.min_words < 1:
            raise ValueError("n: must be >= 1 (and min_words >= 1)")
        if self.field not in ("prompt", "answer", "both"):
            raise ValueError(f"field: unknown '{self.field}'; choose prompt, answer or both")


def _h(words: list[str]) -> bytes:
    return hashlib.blake2b(" ".join(words).encode(), digest_size=12).digest()


class Decontam:
    """Reject records that contain an n-gram of any eval item; reports which item matched."""

    name = "decontam"

    def __init__(self, opts: dict[str, Any], where: str):
        from synth.config import SeedsConfig
        from synth.seeds import read_rows

        self.o = o = options(DecontamOptions, opts, where)
        self.index: dict[bytes, str] = {}
        self.lengths: set[int] = set()
        for i, es in enumerate(o.eval_sets):
            if not Path(es.path).exists():
                raise ValueError(f"{where}.eval_sets[{i}].path: {es.path} does not exist")
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

    def __call__(self, rec: dict[str, Any]) -> str | None:
        on = self.o.field
        text = prompt_text(rec) if on == "prompt" else answer_text(rec) if on == "answer" else prompt_text(rec) + "\n" + answer_text(rec)
        words = normalise(text).split()
        for size in sorted(self.lengths, reverse=True):
            for j in range(len(words) - size + 1):
                hit = self.index.get(_h(words[j : j + size]))
                if hit:
                    return f"{size}-gram overlap with eval item {hit}: '{' '.join(words[j : j + size])[:80]}'"
        return None
