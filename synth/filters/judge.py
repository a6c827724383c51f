"""LLM-as-judge: a teacher backend scores each answer against a rubric template.

Judge calls are cached exactly like generation: each has a request id (a hash of the
rendered rubric chat, the judge's identity and sampling) and its answer is appended to
OUTPUT/judge.jsonl as it arrives, so a rerun (or a crash) sends only what is missing. It
runs as a batch over the records that survive the filters before it. A judge answer with
no readable score is a recorded rejection ("unparseable"), never a crash.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.backends import teacher_identity
from synth.config import JudgeConfig
from synth.configtools import help_field
from synth.filters.base import Filter, answer_text, prompt_text
from synth.judging import call_judge, template_digest
from synth.layout import Layout

logger = logging.getLogger(__name__)

_PATTERNS = [
    re.compile(r"\"score\"\s*:\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE),  # {"score": 7}
    re.compile(r"\[\[\s*(-?\d+(?:\.\d+)?)\s*\]\]"),  # [[7]]
    re.compile(r"score\s*[:=]?\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*\d+)?", re.IGNORECASE),  # Score: 7, score 7/10
    re.compile(r"(-?\d+(?:\.\d+)?)\s*/\s*10\b"),  # 7/10
]


def parse_score(text: str, lo: float, hi: float) -> float | None:
    """The judge's score: the last match of the most explicit form found, within [lo, hi]."""
    for pattern in _PATTERNS:
        matches = pattern.findall(text)
        if matches:
            value = float(matches[-1])
            return value if lo <= value <= hi else None
    return None


RUBRIC = "judge/rubric.j2"  # the packaged rubric


@dataclass
class JudgeOptions(JudgeConfig):
    template: str | None = help_field(None, help="rubric template (variables prompt and answer; must ask for 'Score: N'); none: the packaged judge/rubric.j2")
    threshold: float = help_field(7.0, help="keep records scored at or above this")
    min_score: float = help_field(1.0, help="lowest valid score")
    max_score: float = help_field(10.0, help="highest valid score")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_score >= self.max_score:
            raise ValueError("min_score: must be below max_score")
        if not (self.min_score <= self.threshold <= self.max_score):
            raise ValueError(f"threshold: must be between min_score and max_score, got {self.threshold}")


class Judge(Filter):
    """Keep records the judge scores at or above the threshold; scores go on the record."""

    name = "judge"
    Options = JudgeOptions
    batch = True  # needs every surviving record before deciding (one batch of judge calls)

    @classmethod
    def inputs(cls, o: JudgeOptions) -> dict[str, Any]:
        return {"template": template_digest(o, RUBRIC), "judge": teacher_identity(o.teacher)}

    def setup(self) -> None:
        self.verdicts: dict[str, tuple[float | None, str]] = {}
        self.stats = {"judged": 0, "cached": 0, "sent": 0, "unparseable": 0, "failed": 0}

    def prepare(self, records: Iterable[dict[str, Any]], out_dir: Path) -> None:
        """Score every record (sending only judge calls not already in judge.jsonl)."""
        items = {rec["id"]: {"prompt": prompt_text(rec), "answer": answer_text(rec)} for rec in records}
        got = call_judge(self.options, RUBRIC, items, Layout(out_dir).judge)
        self.stats["cached"], self.stats["sent"] = got.cached, got.sent
        lo, hi = self.options.min_score, self.options.max_score
        for rec_id in items:
            if rec_id in got.failed:
                self.verdicts[rec_id] = (None, f"judge call failed ({got.failed[rec_id]})")
                self.stats["failed"] += 1
                continue
            text = got.answers[rec_id]
            score = parse_score(text, lo, hi)
            self.stats["judged"] += 1
            if score is None:
                self.stats["unparseable"] += 1
                self.verdicts[rec_id] = (None, f"judge answer has no score in [{lo:g}, {hi:g}]: {json.dumps(text[:120])}")
            else:
                self.verdicts[rec_id] = (score, "")

    def check(self, rec: dict[str, Any]) -> str | None:
        score, why = self.verdicts[rec["id"]]
        if score is None:
            return why
        rec["scores"] = {**(rec.get("scores") or {}), "judge": score}
        if score < self.options.threshold:
            return f"judge score {score:g} below threshold {self.options.threshold:g}"
        return None
