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

from synth.config import TeacherConfig, TemplateConfig
from synth.configtools import help_field
from synth.filters.base import Filter, answer_text, prompt_text
from synth.requests import Request, request_id

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


@dataclass
class JudgeOptions:
    teacher: TeacherConfig = help_field(help="the judge model: a teacher block (backend vllm or openai)")
    template: str | None = help_field(None, help="rubric template (variables prompt and answer; must ask for 'Score: N'); none: the packaged judge/rubric.j2")
    threshold: float = help_field(7.0, help="keep records scored at or above this")
    min_score: float = help_field(1.0, help="lowest valid score")
    max_score: float = help_field(10.0, help="highest valid score")
    max_tokens: int = help_field(256, help="most tokens of the judge's answer")
    temperature: float = help_field(0.0, help="judge sampling temperature")
    seed: int | None = help_field(0, help="judge sampling seed")

    def __post_init__(self) -> None:
        if self.min_score >= self.max_score:
            raise ValueError("min_score: must be below max_score")
        if not (self.min_score <= self.threshold <= self.max_score):
            raise ValueError(f"threshold: must be between min_score and max_score, got {self.threshold}")
        if self.template is not None and not Path(self.template).is_file():
            raise ValueError(f"template: {self.template} does not exist; give a rubric template or leave it out for the packaged one")

    @property
    def template_path(self) -> Path:
        from synth.templates import builtin_template

        return Path(self.template) if self.template else builtin_template("judge/rubric.j2")


class Judge(Filter):
    """Keep records the judge scores at or above the threshold; scores go on the record."""

    name = "judge"
    Options = JudgeOptions
    batch = True  # needs every surviving record before deciding (one batch of judge calls)

    @classmethod
    def inputs(cls, o: JudgeOptions) -> dict[str, Any]:
        from synth.backends import load_backend_class
        from synth.runtime import file_sha256

        return {"template": file_sha256(o.template_path), "judge": load_backend_class(o.teacher.backend).identity_for(o.teacher)}

    def setup(self) -> None:
        from synth.backends import load_backend_class
        from synth.templates import PromptTemplate

        self.template = PromptTemplate.load(TemplateConfig(path=str(self.o.template_path)))
        self.backend_cls = load_backend_class(self.o.teacher.backend)
        self.identity = self.backend_cls.identity_for(self.o.teacher)
        self.sampling = {"temperature": self.o.temperature, "top_p": 1.0, "top_k": None,
                         "max_tokens": self.o.max_tokens, "seed": self.o.seed, "stop": []}
        self.verdicts: dict[str, tuple[float | None, str]] = {}
        self.stats = {"judged": 0, "cached": 0, "sent": 0, "unparseable": 0, "failed": 0}

    def _request(self, rec: dict[str, Any]) -> Request:
        fields = {"prompt": prompt_text(rec), "answer": answer_text(rec)}
        messages = self.template.render(fields, where=f"record {rec['id']}")
        rid = request_id(messages, {}, self.identity, self.sampling, 0)
        return Request(id=rid, messages=messages, sampling=self.sampling, sample_index=0,
                       seed={"source": "record", "line": 0, "fields": {"record": rec["id"]}},
                       template=self.template.provenance())

    def prepare(self, records: Iterable[dict[str, Any]], out_dir: Path) -> None:
        """Score every record (sending only judge calls not already in judge.jsonl)."""
        from synth.calls import CachedCalls
        from synth.layout import Layout

        calls = CachedCalls(self.o.teacher, Layout(out_dir).judge)
        by_record: dict[str, str] = {}
        requests: list[Request] = []
        for rec in records:
            req = self._request(rec)
            by_record[rec["id"]] = req.id
            requests.append(req)
        self.stats["cached"] = len({rid for rid in by_record.values() if rid in calls.answers})
        try:
            answers, failed = calls.answer(requests)
        finally:
            calls.close()
        self.stats["sent"] = calls.sent
        for rec_id, rid in by_record.items():
            if rid in failed:
                self.verdicts[rec_id] = (None, f"judge call failed ({failed[rid]})")
                self.stats["failed"] += 1
                continue
            text = answers[rid]
            score = parse_score(text, self.o.min_score, self.o.max_score)
            self.stats["judged"] += 1
            if score is None:
                self.stats["unparseable"] += 1
                self.verdicts[rec_id] = (None, f"judge answer has no score in [{self.o.min_score:g}, {self.o.max_score:g}]: {json.dumps(text[:120])}")
            else:
                self.verdicts[rec_id] = (score, "")

    def check(self, rec: dict[str, Any]) -> str | None:
        score, why = self.verdicts[rec["id"]]
        if score is None:
            return why
        rec["scores"] = {**(rec.get("scores") or {}), "judge": score}
        if score < self.o.threshold:
            return f"judge score {score:g} below threshold {self.o.threshold:g}"
        return None
