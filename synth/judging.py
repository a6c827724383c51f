"""Calls to a judge model: one templated call per item, cached by request id.

Every judge in stillhouse goes through `call_judge`: the judge filter (a score per record),
the yes/no checks of the semantic_decontam, grounded and pii filters, `synth diff --judge`
and sft.eval_judge (which of two answers is better). Each item (a record, a pair of answers)
renders the judge's template with its fields; the call's id covers the rendered chat, the
judge's identity and its sampling, and its answer is appended to the cache log as it
arrives (like judge.jsonl), so a rerun sends only what is missing.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.backends import teacher_identity
from synth.calls import CachedCalls
from synth.config import JudgeConfig
from synth.configtools import from_dict, help_field, load_yaml
from synth.requests import Request, request_id
from synth.runtime import file_sha256
from synth.templates import PromptTemplate


@dataclass
class JudgeAnswers:
    """The judge's answers and failures by item key, and what the call cost."""

    answers: dict[str, str]
    failed: dict[str, str]
    sent: int
    cached: int


def template_digest(judge: JudgeConfig, packaged: str) -> str | None:
    """The SHA-256 of the judge's template (a stage-key input)."""
    return file_sha256(judge.template_path(packaged))


def call_judge(judge: JudgeConfig, packaged: str, items: dict[str, dict[str, Any]], log: Path,
               source: str = "record") -> JudgeAnswers:
    """One call per item (key -> template fields), cached in `log`. `packaged` names the
    packaged template used when the judge gives none; `source` goes into each call's seed
    provenance ("record": the item key is the record id)."""
    template = PromptTemplate.from_file(judge.template_path(packaged))
    identity = teacher_identity(judge.teacher)
    sampling = judge.sampling()
    requests: dict[str, Request] = {}
    by_item: dict[str, str] = {}
    for key, fields in items.items():
        messages = template.render(fields, where=f"{source} {key}")
        rid = request_id(messages, {}, identity, sampling, 0)
        seed = {"source": source, "line": 0, "fields": {"record": key} if source == "record" else {}}
        requests[rid] = Request(id=rid, messages=messages, sampling=sampling, sample_index=0, seed=seed,
                                template=template.provenance())
        by_item[key] = rid
    calls = CachedCalls(judge.teacher, log, identity=identity)
    cached = sum(1 for rid in requests if rid in calls.answers)
    try:
        answers, failed = calls.answer(list(requests.values()))
    finally:
        calls.close()
    return JudgeAnswers({key: answers[rid] for key, rid in by_item.items() if rid not in failed},
                        {key: failed[rid] for key, rid in by_item.items() if rid in failed}, calls.sent, cached)


_WINNER = re.compile(r"winner\s*[:=]?\s*\[*\s*(1|2|tie)\b", re.IGNORECASE)
PAIRWISE = "judge/pairwise.j2"  # the packaged pairwise template


def parse_winner(text: str) -> str | None:
    """'1', '2' or 'tie' from the judge's last "Winner: ..." line, or None."""
    found = _WINNER.findall(text)
    return found[-1].lower() if found else None


@dataclass
class PairwiseJudge(JudgeConfig):
    """A JUDGE.yaml: which of two answers is better (`synth diff --judge`, sft.eval_judge)."""

    template: str | None = help_field(None, help="pairwise template (variables prompt, answer_1, answer_2); none: the packaged judge/pairwise.j2")
    limit: int = help_field(200, help="judge at most this many prompts (those that changed most first)")
    max_tokens: int = help_field(128, help="most tokens per judge answer")
    seed: int | None = help_field(0, help="seed of the judge's sampling and of the answer order shown to it (against position bias)")


def judge_preference(pairs: list[tuple[str, str, str]], judge_file: str | Path, log: Path) -> dict[str, Any]:
    """Ask the judge of `judge_file` (a JUDGE.yaml) which of two answers is better, for
    (prompt, answer_a, answer_b) triples; each pair is shown in a seeded random order and
    mapped back. Cached in `log`. Returns the tally and `winners`, each judged pair's winner
    in order ("a", "b", "tie"; None where the call failed or its answer had no verdict)."""
    judge = from_dict(PairwiseJudge, load_yaml(judge_file), prefix="judge")
    rng = random.Random(judge.seed)
    items, swaps = {}, {}
    for i, (prompt, a, b) in enumerate(pairs[: judge.limit]):
        swapped = rng.random() < 0.5
        items[str(i)] = {"prompt": prompt, "answer_1": b if swapped else a, "answer_2": a if swapped else b}
        swaps[str(i)] = swapped
    got = call_judge(judge, PAIRWISE, items, log, source="diff")
    tally = {"a": 0, "b": 0, "tie": 0, "unparseable": 0, "failed": len(got.failed)}
    winners: list[str | None] = []  # per pair judged, in order: "a", "b", "tie", or None (failed, unparseable)
    for key, swapped in swaps.items():
        winner = None if key in got.failed else parse_winner(got.answers.get(key, ""))
        if winner is None:
            if key not in got.failed:
                tally["unparseable"] += 1
        elif winner == "tie":
            tally["tie"] += 1
        else:
            winner = "b" if (winner == "1") == swapped else "a"
            tally[winner] += 1
        winners.append(winner)
    decided = tally["a"] + tally["b"] + tally["tie"]
    return {"judged": len(items), "calls_sent": got.sent, "calls_cached": got.cached, **tally,
            "b_win_rate": round((tally["b"] + 0.5 * tally["tie"]) / decided, 4) if decided else None,
            "winners": winners}
