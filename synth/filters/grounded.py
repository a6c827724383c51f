"""Grounding: reject answers their source document does not support (document_qa data).

First pass, lexical: the share of the answer's content words (lower-cased words of three or
more letters that are not stop words, and numbers; citations in brackets left out) that occur
in the source chunk (`seed.fields.context` of the record, as document_qa writes it). Below
`min_support` the record is rejected with the share and the words the source lacks. With a
`judge`, every record that passes the lexical check is also shown to the judge with its source
(packaged template judge/grounded.j2) and only [[SUPPORTED]] keeps it; calls cached in
OUTPUT/grounded_judge.jsonl.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.configtools import help_field
from synth.filters.base import Filter, answer_text, prompt_text
from synth.filters.verdict import VerdictJudge, ask

GROUNDED_TEMPLATE = "judge/grounded.j2"
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_CITATION = re.compile(r"\[[^\]]{0,200}\]|\((?:source|see|cf\.)[^)]{0,200}\)", re.IGNORECASE)
STOP_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between both
but by can could did do does doing down during each either else ever every few for from further had has have having
he her here hers him his how however i if in into is it its itself just may me might more most must my no nor not
now of off on once only or other our ours out over own per same shall she should so some such than that the their
theirs them then there these they this those through thus to too under until up upon us very was we were what when
where whether which while who whom whose why will with within without would yes yet you your yours
""".split())


def content_words(text: str) -> set[str]:
    """Lower-cased content words of a text (no stop words, no words under three letters; numbers kept)."""
    words = _WORD.findall(_CITATION.sub(" ", text).lower())
    return {w for w in words if w.isdigit() or (len(w) >= 3 and w not in STOP_WORDS)}


def support(answer: str, source: str) -> tuple[float, list[str]]:
    """(share of the answer's content words found in the source, the ones not found)."""
    words = content_words(answer)
    if not words:
        return 1.0, []
    have = content_words(source)
    missing = sorted(words - have)
    return 1 - len(missing) / len(words), missing


@dataclass
class GroundedOptions:
    context_field: str = help_field("context", help="seed field of the record that holds its source text (document_qa writes `context`)")
    min_support: float = help_field(0.6, help="least share of the answer's content words that must occur in the source")
    judge: VerdictJudge | None = help_field(None, help="also ask a judge (template default: the packaged judge/grounded.j2); only [[SUPPORTED]] keeps a record; calls cached in grounded_judge.jsonl")

    def __post_init__(self) -> None:
        if not 0 <= self.min_support <= 1:
            raise ValueError(f"min_support: must be in [0, 1], got {self.min_support}")


class Grounded(Filter):
    """Reject answers that their source chunk does not support."""

    name = "grounded"
    Options = GroundedOptions

    @classmethod
    def inputs(cls, o: GroundedOptions) -> dict[str, Any]:
        return {"judge": o.judge.identity(GROUNDED_TEMPLATE)} if o.judge is not None else {}

    def setup(self) -> None:
        if self.options.judge is not None:
            self.batch = True  # the judge's calls go out as one batch
            self.verdicts: dict[str, str | None] = {}
            self.stats = {"flagged": 0, "sent": 0, "cached": 0, "supported": 0, "unsupported": 0, "unreadable": 0, "failed": 0}

    def _lexical(self, rec: dict[str, Any]) -> str | None:
        source = ((rec.get("seed") or {}).get("fields") or {}).get(self.options.context_field)
        if not isinstance(source, str) or not source.strip():
            return (f"no source text: the record's seed has no '{self.options.context_field}' field (grounded checks "
                    "document_qa data; set context_field to the seed column that holds the source)")
        share, missing = support(answer_text(rec), source)
        if share < self.options.min_support:
            return (f"answer not supported by its source: {share:.0%} of its content words occur in it (at least "
                    f"{self.options.min_support:.0%} needed); not in the source: {', '.join(missing[:8])}")
        return None

    def prepare(self, records: Iterable[dict[str, Any]], out_dir: Path) -> None:
        items = {}
        for rec in records:
            self.verdicts[rec["id"]] = self._lexical(rec)
            if self.verdicts[rec["id"]] is None:
                source = rec["seed"]["fields"][self.options.context_field]
                items[rec["id"]] = {"source": source, "question": prompt_text(rec), "answer": answer_text(rec)}
        answers, stats = ask(self.options.judge, GROUNDED_TEMPLATE, items, out_dir / "grounded_judge.jsonl", ("SUPPORTED", "UNSUPPORTED"))
        self.stats.update(stats)
        for rec_id, (tag, why) in answers.items():
            if tag == "UNSUPPORTED":
                self.verdicts[rec_id] = "the judge says the source does not support the answer"
            elif tag is None:
                self.verdicts[rec_id] = f"{why}, so it is not kept"

    def check(self, rec: dict[str, Any]) -> str | None:
        return self.verdicts[rec["id"]] if self.batch else self._lexical(rec)
