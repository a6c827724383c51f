"""The filter contract: a filter decides one record at a time; the base class owns the rest.

A filter subclasses `Filter`, names its options dataclass (`Options`, validated when the
recipe loads) and implements `check(record) -> None | reason`. The base class parses the
options with errors that name `curate.filters[i].key`, runs the loop over a stream of
records, counts what it rejects and hands each rejection (with its reason) to the writer.
A filter may edit the record it keeps (PII redaction). A batch filter (`batch = True`)
sees every record that reaches it in `prepare` before deciding any (the judge, embeddings).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from synth.configtools import from_dict, help_field

T = TypeVar("T")
Record = dict[str, Any]
Reject = Callable[[Record, str, str], None]  # (record, filter name, reason)

FIELDS = ("prompt", "answer", "both")


def parse_options(cls: type[T], values: dict[str, Any], where: str) -> T:
    """Validate a filter's options against its dataclass; errors name curate.filters[i].key."""
    return from_dict(cls, values, prefix=where)


@dataclass
class NoOptions:
    """A filter without options."""


@dataclass
class FieldOptions:
    """The shared `field` option: which text of a record a filter looks at. (Named `field`,
    not `on`: YAML reads a bare `on` key as the boolean true.) Subclasses set its default."""

    field: str = help_field("answer", help="text looked at: prompt (the last user turn), answer (the last assistant turn) or both")

    def __post_init__(self) -> None:
        if self.field not in FIELDS:
            raise ValueError(f"field: unknown '{self.field}'; choose one of {', '.join(FIELDS)}")


def prompt_text(rec: Record) -> str:
    """The last user turn of a record's chat."""
    for message in reversed(rec["messages"]):
        if message["role"] == "user":
            return message["content"]
    return ""


def answer_text(rec: Record) -> str:
    """The teacher's answer: the last assistant turn."""
    message = rec["messages"][-1]
    return message["content"] if message["role"] == "assistant" else ""


def field_text(rec: Record, field: str, joiner: str = "\n") -> str:
    """The text named by a `field` option."""
    if field == "prompt":
        return prompt_text(rec)
    if field == "answer":
        return answer_text(rec)
    return prompt_text(rec) + joiner + answer_text(rec)


class Filter:
    """Base of every curation filter."""

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    batch: ClassVar[bool] = False  # True: `prepare` sees every record before `check`

    def __init__(self, options: dict[str, Any] | Any, where: str):
        """`options`: the entry's options as the recipe gives them, or already checked (an
        instance of `Options`, as synth.plan hands them over)."""
        self.options = options if isinstance(options, self.Options) else parse_options(self.Options, options, where)
        self.where = where
        self.rejected = 0
        self.stats: dict[str, Any] = {}  # what a run had to do (judge calls sent, ...)
        self.setup()

    def setup(self) -> None:
        """Load what the filter needs (indexes, models); options are in self.options."""

    def check(self, rec: Record) -> str | None:
        """None to keep the record, else the reason it is rejected."""
        raise NotImplementedError

    def prepare(self, records: Iterable[Record], out_dir: Path) -> None:
        """Batch filters: see every record that reaches this filter (out_dir holds caches)."""

    @classmethod
    def inputs(cls, o: Any) -> dict[str, Any]:
        """What the filter's decisions depend on besides its options (files it reads, models
        it asks), as digests: part of curation's stage key. Options are keyed already."""
        return {}

    def attach(self, folder: Path) -> None:
        """Resumable curation: files the filter keeps as it goes (append-only) live in
        `folder`, so a checkpoint only records their length."""

    def save_state(self, arrays: dict[str, Any], prefix: str) -> dict[str, Any]:
        """A checkpoint of what the filter learned so far: numpy arrays go into `arrays`
        (names starting with `prefix`), the rest is returned as JSON."""
        return {"rejected": self.rejected, "stats": self.stats}

    def load_state(self, state: dict[str, Any], arrays: Any, prefix: str) -> None:
        """Back to a checkpoint written by save_state (arrays: the saved npz)."""
        self.rejected = state["rejected"]
        self.stats = state["stats"]

    def apply(self, records: Iterable[Record], reject: Reject) -> Iterator[Record]:
        """The records this filter keeps; each rejection goes to `reject` with its reason."""
        for rec in records:
            reason = self.check(rec)
            if reason is None:
                yield rec
            else:
                self.rejected += 1
                reject(rec, self.name, reason)


class BlockFilter(Filter):
    """A filter that decides a block of records at once (`check_many`), in order: exactly
    as one at a time would, earlier records of the block included (dedup's indexes, an
    embedder's batches)."""

    block_size: ClassVar[int] = 1024

    def check(self, rec: Record) -> str | None:
        return self.check_many([rec])[0]

    def check_many(self, recs: list[Record]) -> list[str | None]:
        raise NotImplementedError

    def apply(self, records: Iterable[Record], reject: Reject) -> Iterator[Record]:
        block: list[Record] = []
        for rec in records:
            block.append(rec)
            if len(block) == self.block_size:
                yield from self._decide(block, reject)
                block = []
        if block:
            yield from self._decide(block, reject)

    def _decide(self, block: list[Record], reject: Reject) -> Iterator[Record]:
        for rec, reason in zip(block, self.check_many(block), strict=True):
            if reason is None:
                yield rec
            else:
                self.rejected += 1
                reject(rec, self.name, reason)
