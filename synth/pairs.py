"""`synth pairs`: preference pairs for DPO, in TRL's conversational preference format.

Each pair is a prompt (the chat up to the answer), a chosen and a rejected answer (each a
one-message assistant list), with where they came from and their scores. The ranking is the
recipe's `best_of_n` curation filter (its verifier or judge), so pairs and training data
agree on what a good answer is. Pairs come only from prompts curation kept for training:
the held-out split never reaches preference training, and dedup and decontamination have
already applied to every prompt.

Sources (`pairs.sources`):
- samples: each kept (best) sample against the lowest-scored sample of its prompt that
  best_of_n ranked below it (rejected.jsonl, filter best_of_n);
- student: each kept sample against the trained student's own answer to its prompt
  (greedy, `pairs.student_max_tokens`; answers cached in student_answers.jsonl by the
  student's weights), where the teacher's answer scores higher: the student's own mistakes.

A pair is made only when the chosen answer scores more than the rejected one by more than
`pairs.min_margin`. The file is rewritten whole (atomically) each run.

The Pairs stage's key: the curated files (train.jsonl, rejected.jsonl), the pairs settings,
the ranking filter's inputs and, for student pairs, the trained student's weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sft.answers import student_answerer
from synth.configtools import canonical_dict
from synth.filters.best_of_n import prompt_key
from synth.fingerprint import fingerprint_dir
from synth.manifest import update_manifest
from synth.plan import Plan
from synth.rawlog import iter_records, rewrite_atomically
from synth.runtime import file_sha256, utc_now
from synth.stage import Stage, StageResult

Answerer = Callable[[list[list[dict[str, Any]]]], list[str]]  # the student's answers to prompts

logger = logging.getLogger(__name__)


def _ranking_filter(plan: Plan) -> Any:
    for entry in plan.filters_named("best_of_n")[:1]:
        return entry.build()
    raise ValueError("pairs: the pairs are ranked by curation's best_of_n filter, and curate.filters has none; add "
                     "e.g. {name: best_of_n, function: my_checks:is_correct} (with sampling.n > 1), then rerun synth curate")


def _pair(prompt: list[dict[str, Any]], chosen: dict[str, Any], rejected: str, source: str, scores: tuple[float, float],
          by: str, reason: str | None, rejected_id: str | None) -> dict[str, Any]:
    answer = chosen["messages"][-1]
    rid = hashlib.sha256(json.dumps([chosen["id"], rejected, source], ensure_ascii=False).encode()).hexdigest()[:32]
    return {"id": rid, "prompt": prompt,
            "chosen": [{"role": "assistant", "content": answer["content"]}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "source": source, "by": by, "scores": {"chosen": scores[0], "rejected": scores[1]},
            **({"reason": reason} if reason else {}),
            "chosen_id": chosen["id"], **({"rejected_id": rejected_id} if rejected_id else {}),
            "seed": chosen.get("seed")}


def _from_samples(plan: Plan, by: str, margin: float) -> list[dict[str, Any]]:
    layout = plan.layout
    worst: dict[str, dict[str, Any]] = {}
    for rec in iter_records(layout.rejected) if layout.rejected.exists() else []:
        if (rec.get("rejection") or {}).get("filter") != "best_of_n" or by not in (rec.get("scores") or {}):
            continue
        key = prompt_key(rec)
        if key not in worst or rec["scores"][by] < worst[key]["scores"][by]:
            worst[key] = rec
    pairs = []
    for rec in iter_records(layout.train):
        other = worst.get(prompt_key(rec))
        if other is None or by not in (rec.get("scores") or {}) or other["messages"][:-1] != rec["messages"][:-1]:
            continue  # (conversations whose samples parted before the last answer make no pair)
        good, bad = rec["scores"][by], other["scores"][by]
        if good - bad > margin:
            pairs.append(_pair(rec["messages"][:-1], rec, other["messages"][-1]["content"], "samples", (good, bad), by,
                               other["rejection"]["reason"], other["id"]))
    return pairs


def _from_student(plan: Plan, ranker: Any, by: str, margin: float,
                  answer: Answerer) -> tuple[list[dict[str, Any]], dict[str, int]]:
    kept = [rec for rec in iter_records(plan.layout.train) if by in (rec.get("scores") or {})]
    answers = answer([rec["messages"][:-1] for rec in kept])
    students = [{**rec, "id": f"student:{rec['id']}", "scores": {},
                 "messages": [*rec["messages"][:-1], {"role": "assistant", "content": text}]}
                for rec, text in zip(kept, answers, strict=True)]
    pairs, counts = [], {"student_answers": len(kept), "student_scored_lower": 0, "student_unscored": 0}
    for rec, student, (score, reason) in zip(kept, students, _score_all(plan, ranker, students), strict=True):
        if score is None:  # the judge failed or wrote no score: no pair either way
            counts["student_unscored"] += 1
            continue
        good = rec["scores"][by]
        if good - score > margin:
            counts["student_scored_lower"] += 1
            pairs.append(_pair(rec["messages"][:-1], rec, student["messages"][-1]["content"], "student", (good, score), by,
                               reason, None))
    return pairs, counts


def _score_all(plan: Plan, ranker: Any, records: list[dict[str, Any]]) -> list[tuple[float | None, str | None]]:
    """Each record's score by the ranking: best_of_n's verifier, or the curation judge (its
    calls cached in judge.jsonl like curation's); None where the judge gave no score."""
    if ranker.options.by == "verifier":
        return [ranker.score(rec) for rec in records]
    judges = plan.filters_named("judge")
    if not judges:
        raise ValueError("pairs: best_of_n ranks by the judge, and curate.filters has no judge filter to score the "
                         "student's answers with")
    judge = judges[0].build()
    judge.prepare(iter(records), plan.layout.root)
    out = []
    for rec in records:
        reason = judge.check(rec)
        score = (rec.get("scores") or {}).get("judge")
        out.append((float(score) if score is not None else None, reason))
    return out


def pairs_key(plan: Plan) -> dict[str, Any]:
    """The Pairs stage's key (see the module docstring)."""
    layout, cfg = plan.layout, plan.recipe.pair_options
    ranking = [entry.inputs() for entry in plan.filters_named("best_of_n")]
    key: dict[str, Any] = {"train": file_sha256(layout.train), "rejected": file_sha256(layout.rejected),
                           "pairs": canonical_dict(cfg), "ranking": ranking}
    if "student" in cfg.sources and plan.recipe.sft is not None:
        trained = plan.student.files.trained
        key["student"] = fingerprint_dir(trained) if trained.is_dir() else None
    return key


class Pairs(Stage):
    """Preference pairs from the curated data (keyed; see the module docstring)."""

    name = "pairs"

    def __init__(self, plan: Plan, progress: bool = True, answer: Answerer | None = None):
        super().__init__(plan, progress)
        self.answer = answer

    def key(self) -> dict[str, Any]:
        return pairs_key(self.plan)

    def stamp(self) -> Path:
        return self.plan.layout.stamp("pairs")

    def outputs(self) -> tuple[Path, ...]:
        return (self.plan.layout.pairs,)

    def work(self, key: dict[str, Any] | None) -> StageResult:
        c = _pairs(self.plan, self.answer)
        sources = ", ".join(f"{s} {c.get(s, 0)}" for s in self.plan.recipe.pair_options.sources)
        lines = [f"synth pairs: {c['pairs']} pairs ({sources}; {c['duplicates']} duplicates dropped) "
                 f"-> {self.plan.layout.pairs}"]
        if "student_answers" in c:
            lines.append(f"  the student scored lower than the teacher on {c['student_scored_lower']} of "
                         f"{c['student_answers']} training prompts")
        return self.result(f"{c['pairs']} pairs ({sources})", lines, c)


def run_pairs(plan: Plan, answer: Answerer | None = None) -> dict[str, Any]:
    """Write OUTPUT/pairs.jsonl from the curated data now (the stage, forced); returns the
    counts (also in the manifest's `pairs`). `answer` gives the student's answers to prompts
    (source: student); by default the trained student of the recipe's sft section answers."""
    return Pairs(plan, answer=answer).run(force=True).details


def _pairs(plan: Plan, answer: Answerer | None) -> dict[str, Any]:
    layout, cfg = plan.layout, plan.recipe.pair_options
    if not layout.train.exists():
        raise ValueError(f"pairs: {layout.train} does not exist; run `synth curate` first")
    ranker = _ranking_filter(plan)
    by = ranker.options.by
    pairs: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    if "samples" in cfg.sources:
        found = _from_samples(plan, by, cfg.min_margin)
        counts["samples"] = len(found)
        pairs += found
    if "student" in cfg.sources:
        found, student_counts = _from_student(plan, ranker, by, cfg.min_margin, answer or student_answerer(plan))
        counts.update(student_counts, student=len(found))
        pairs += found
    seen, unique = set(), []
    for p in pairs:  # one pair per (prompt, chosen, rejected)
        same = json.dumps([p["prompt"], p["chosen"], p["rejected"]], sort_keys=True, ensure_ascii=False)
        if same not in seen:
            seen.add(same)
            unique.append(p)
    counts.update(pairs=len(unique), duplicates=len(pairs) - len(unique))
    rewrite_atomically(layout.pairs, unique)
    update_manifest(layout.manifest, {"pairs": {"finished_at": utc_now(), "by": by, "sources": cfg.sources,
                                                "min_margin": cfg.min_margin, "counts": counts,
                                                "file": layout.pairs.name}})
    logger.info("pairs: %s -> %s", counts, layout.pairs)
    return counts
