"""The trained student's own answers to prompts (greedy), for preference pairs (`synth pairs`
with `pairs.sources: [student]`): on vLLM with the adapter as a LoRA request, or with
transformers (`sft.eval_engine`, as `sft eval`; sft.generation). Cached in
OUTPUT/student_answers.jsonl by the student's weights, the prompt and the length, so a rerun
answers only new prompts."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from sft.generation import student_answers
from synth.fingerprint import fingerprint_dir
from synth.plan import Plan
from synth.rawlog import JsonlAppender, iter_records

logger = logging.getLogger(__name__)


def student_answerer(plan: Plan) -> Callable[[list[list[dict[str, Any]]]], list[str]]:
    """A function that answers prompts with the plan's trained student, through the cache."""
    cfg, student = plan.sft, plan.student.files
    if not student.trained_marker.is_file():
        raise ValueError(f"pairs.sources: student: no trained student in {student.root}; run `sft train` first")
    weights = fingerprint_dir(student.trained)
    max_new = plan.recipe.pair_options.student_max_tokens
    path = plan.layout.student_answers

    def key(prompt: list[dict[str, Any]]) -> str:
        payload = json.dumps([weights, prompt, max_new], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    def answer(prompts: list[list[dict[str, Any]]]) -> list[str]:
        cached = {r["id"]: r["answer"] for r in iter_records(path)} if path.exists() else {}
        todo = list({key(p): p for p in prompts if key(p) not in cached}.items())
        logger.info("student answers: %d to generate, %d cached in %s", len(todo), len(prompts) - len(todo), path)
        if todo:
            texts = student_answers(cfg, student, [p for _, p in todo], max_new)
            with JsonlAppender(path, 1, 1.0) as sink:
                for (k, _), text in zip(todo, texts, strict=True):
                    sink.append({"id": k, "answer": text})
                    cached[k] = text
        return [cached[key(p)] for p in prompts]

    return answer
