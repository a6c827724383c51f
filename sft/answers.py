"""The trained student's own answers to prompts (greedy), for preference pairs (`synth pairs`
with `pairs.sources: [student]`): on vLLM with the adapter as a LoRA request, or with
transformers (`sft.eval_engine`, as `sft eval`; sft.generation). Cached in
OUTPUT/student_answers.jsonl by the student's weights, the prompt, the length and the engine,
so a rerun answers only new prompts (`cached_answers`, which `synth compare` shares)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sft.config import SftConfig
from sft.generation import engine_for, student_answers
from synth.fingerprint import fingerprint_dir
from synth.layout import StudentLayout
from synth.plan import Plan
from synth.rawlog import JsonlAppender, iter_records
from synth.runtime import canonical_json

logger = logging.getLogger(__name__)


def cached_answers(cfg: SftConfig, files: StudentLayout, prompts: list[list[dict[str, Any]]], max_new: int,
                   path: Path, label: str, **row: Any) -> list[str]:
    """The trained student's greedy answers to `prompts`, through the cache at `path`: a row
    per answer, keyed by the student's weights, the prompt, the length and the engine, so only
    prompts not answered yet are generated (`row`: more fields for each new row)."""
    weights, engine = fingerprint_dir(files.trained), engine_for(cfg)

    def key(prompt: list[dict[str, Any]]) -> str:
        return hashlib.sha256(canonical_json([weights, prompt, max_new, engine]).encode()).hexdigest()[:32]

    keys = [key(p) for p in prompts]
    cached = {r["id"]: r["answer"] for r in iter_records(path)} if path.exists() else {}
    todo = list({k: p for k, p in zip(keys, prompts, strict=True) if k not in cached}.items())
    logger.info("%s: %d answers to generate (%s), %d cached in %s", label, len(todo), engine, len(prompts) - len(todo), path)
    if todo:
        texts = student_answers(cfg, files, [p for _, p in todo], max_new)
        path.parent.mkdir(parents=True, exist_ok=True)
        with JsonlAppender(path, 1, 1.0) as sink:
            for (k, _), text in zip(todo, texts, strict=True):
                sink.append({"id": k, **row, "answer": text})
                cached[k] = text
    return [cached[k] for k in keys]


def student_answerer(plan: Plan) -> Callable[[list[list[dict[str, Any]]]], list[str]]:
    """A function that answers prompts with the plan's trained student, through the cache."""
    cfg, student = plan.sft, plan.student.files
    if not student.trained_marker.is_file():
        raise ValueError(f"pairs.sources: student: no trained student in {student.root}; run `sft train` first")
    max_new = plan.recipe.pair_options.student_max_tokens
    return lambda prompts: cached_answers(cfg, student, prompts, max_new, plan.layout.student_answers, "student answers")
