"""A yes/no judge for filters that flag records (semantic_decontam's rephrasing check, the
grounding check, the pii detector): each flagged record goes to the judge once
(synth.judging), with a packaged or given template, and the last [[YES]]/[[NO]]-style tag of
its answer decides.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.backends import teacher_identity
from synth.config import JudgeConfig
from synth.configtools import help_field
from synth.judging import JudgeAnswers, call_judge, template_digest


@dataclass
class VerdictJudge(JudgeConfig):
    max_tokens: int = help_field(64, help="most tokens of the judge's answer")

    def identity(self, packaged: str) -> dict[str, Any]:
        """What the verdicts depend on, for curation's stage key."""
        return {"template": template_digest(self, packaged), "teacher": teacher_identity(self.teacher)}


def call(judge: VerdictJudge, packaged: str, items: dict[str, dict[str, Any]], log: Path) -> JudgeAnswers:
    """One call per item (record id -> template fields), cached in `log`."""
    return call_judge(judge, packaged, items, log)


def ask(judge: VerdictJudge, packaged: str, items: dict[str, dict[str, Any]], log: Path,
        tags: tuple[str, str]) -> tuple[dict[str, tuple[str | None, str]], dict[str, int]]:
    """Ask the judge about each item (record id -> template fields). Returns record id ->
    (the tag found: tags[0], tags[1], or None; why, when none: the failure or the answer), and
    counts."""
    found = call_judge(judge, packaged, items, log)
    stats = {"flagged": len(items), "sent": found.sent, "cached": found.cached, tags[0].lower(): 0,
             tags[1].lower(): 0, "unreadable": 0, "failed": 0}
    pattern = re.compile(r"\[\[\s*(" + "|".join(map(re.escape, tags)) + r")\s*\]\]", re.IGNORECASE)
    out: dict[str, tuple[str | None, str]] = {}
    for rec_id in items:
        if rec_id in found.failed:
            stats["failed"] += 1
            out[rec_id] = (None, f"the judge call failed ({found.failed[rec_id]})")
            continue
        text = found.answers[rec_id]
        matches = pattern.findall(text)
        tag = next((t for t in tags if matches and matches[-1].upper() == t.upper()), None)
        stats[tag.lower() if tag else "unreadable"] += 1
        out[rec_id] = (tag, "" if tag else f"the judge's answer has no [[{tags[0]}]] or [[{tags[1]}]]: "
                                           f"{json.dumps(text[:80])}")
    return out, stats
