"""A yes/no judge for filters that flag records (semantic_decontam's rephrasing check, the
grounding check): each flagged record goes to the judge once, with a packaged or given
template, and the last [[YES]]/[[NO]]-style tag of its answer decides. Calls are cached in a
JSONL file under the output dir by request id, like judge.jsonl, so reruns send nothing new.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.config import TeacherConfig
from synth.configtools import help_field


@dataclass
class VerdictJudge:
    teacher: TeacherConfig = help_field(help="the judge model: a teacher block (backend vllm, openai or anthropic)")
    template: str | None = help_field(None, help="judge template; none: the filter's packaged one")
    max_tokens: int = help_field(64, help="most tokens of the judge's answer")
    seed: int | None = help_field(0, help="judge sampling seed (temperature 0)")

    def __post_init__(self) -> None:
        if self.template is not None and not Path(self.template).is_file():
            raise ValueError(f"template: {self.template} does not exist; give a judge template or leave it out for the packaged one")

    def template_path(self, default: str) -> Path:
        from synth.templates import builtin_template

        return Path(self.template) if self.template else builtin_template(default)

    def identity(self, default: str) -> dict[str, Any]:
        """What the verdicts depend on, for curation's stage key."""
        from synth.backends import load_backend_class
        from synth.runtime import file_sha256

        return {"template": file_sha256(self.template_path(default)),
                "teacher": load_backend_class(self.teacher.backend).identity_for(self.teacher)}


def call(judge: VerdictJudge, default_template: str, items: dict[str, dict[str, Any]],
         log: Path) -> tuple[dict[str, str], dict[str, str], dict[str, int]]:
    """One call per item (record id -> template fields), cached in `log`. Returns the answers
    and the failures by record id, and counts (sent, cached)."""
    from synth.backends import load_backend_class
    from synth.calls import CachedCalls
    from synth.config import TemplateConfig
    from synth.requests import Request, request_id
    from synth.templates import PromptTemplate

    template = PromptTemplate.load(TemplateConfig(path=str(judge.template_path(default_template))))
    identity = load_backend_class(judge.teacher.backend).identity_for(judge.teacher)
    sampling = {"temperature": 0.0, "top_p": 1.0, "top_k": None, "max_tokens": judge.max_tokens, "seed": judge.seed, "stop": []}
    requests: dict[str, Request] = {}
    by_record: dict[str, str] = {}
    for rec_id, fields in items.items():
        messages = template.render(fields, where=f"record {rec_id}")
        rid = request_id(messages, {}, identity, sampling, 0)
        requests[rid] = Request(id=rid, messages=messages, sampling=sampling, sample_index=0,
                                seed={"source": "record", "line": 0, "fields": {"record": rec_id}},
                                template=template.provenance())
        by_record[rec_id] = rid
    calls = CachedCalls(judge.teacher, log)
    cached = sum(1 for rid in requests if rid in calls.answers)
    try:
        answers, failed = calls.answer(list(requests.values()))
    finally:
        calls.close()
    return ({rec: answers[rid] for rec, rid in by_record.items() if rid not in failed},
            {rec: failed[rid] for rec, rid in by_record.items() if rid in failed}, {"sent": calls.sent, "cached": cached})


def ask(judge: VerdictJudge, default_template: str, items: dict[str, dict[str, Any]], log: Path,
        tags: tuple[str, str]) -> tuple[dict[str, tuple[str | None, str]], dict[str, int]]:
    """Ask the judge about each item (record id -> template fields). Returns record id ->
    (the tag found: tags[0], tags[1], or None; why, when none: the failure or the answer), and
    counts."""
    answers, failed, sent = call(judge, default_template, items, log)
    stats = {"flagged": len(items), **sent, tags[0].lower(): 0, tags[1].lower(): 0, "unreadable": 0, "failed": 0}
    pattern = re.compile(r"\[\[\s*(" + "|".join(map(re.escape, tags)) + r")\s*\]\]", re.IGNORECASE)
    out: dict[str, tuple[str | None, str]] = {}
    for rec_id in items:
        if rec_id in failed:
            stats["failed"] += 1
            out[rec_id] = (None, f"the judge call failed ({failed[rec_id]})")
            continue
        found = pattern.findall(answers[rec_id])
        tag = next((t for t in tags if found and found[-1].upper() == t.upper()), None)
        stats[tag.lower() if tag else "unreadable"] += 1
        out[rec_id] = (tag, "" if tag else f"the judge's answer has no [[{tags[0]}]] or [[{tags[1]}]]: {json.dumps(answers[rec_id][:80])}")
    return out, stats
