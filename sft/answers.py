"""The trained student's own answers to prompts (greedy), for preference pairs (`synth pairs`
with `pairs.sources: [student]`): on vLLM with the adapter as a LoRA request, or with
transformers (`sft.eval_engine`, as `sft eval`). Cached in OUTPUT/student_answers.jsonl by
the student's weights, the prompt and the length, so a rerun answers only new prompts."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from synth.config import Recipe

logger = logging.getLogger(__name__)


def student_answerer(recipe: Recipe) -> Callable[[list[list[dict[str, Any]]]], list[str]]:
    from sft.config import sft_of
    from sft.train import resolve_student
    from synth.fingerprint import fingerprint_dir
    from synth.rawlog import JsonlAppender, iter_records

    cfg = sft_of(recipe)
    student = cfg.student(recipe.layout)
    if not student.trained_marker.is_file():
        raise ValueError(f"pairs.sources: student: no trained student in {student.root}; run `sft train` first")
    weights = fingerprint_dir(student.trained)
    max_new = recipe.pair_options.student_max_tokens
    path = recipe.layout.student_answers

    def key(prompt: list[dict[str, Any]]) -> str:
        payload = json.dumps([weights, prompt, max_new], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    def answer(prompts: list[list[dict[str, Any]]]) -> list[str]:
        cached = {r["id"]: r["answer"] for r in iter_records(path)} if path.exists() else {}
        todo = list({key(p): p for p in prompts if key(p) not in cached}.items())
        logger.info("student answers: %d to generate, %d cached in %s", len(todo), len(prompts) - len(todo), path)
        if todo:
            texts = _generate(cfg, resolve_student(cfg.model), student, [p for _, p in todo], max_new)
            with JsonlAppender(path, 1, 1.0) as sink:
                for (k, _), text in zip(todo, texts, strict=True):
                    sink.append({"id": k, "answer": text})
                    cached[k] = text
        return [cached[key(p)] for p in prompts]

    return answer


def _generate(cfg: Any, model_id: str, student: Any, prompts: list, max_new: int) -> list[str]:
    from sft.evaluate import _engine, _generate_transformers, _load_models, _vllm_engine

    if _engine(cfg) == "vllm":
        import vllm
        from vllm.lora.request import LoRARequest

        from synth.runtime import release_engine

        full = cfg.full_finetune  # the trained model itself, else the base with the adapter
        llm = _vllm_engine(cfg, str(student.trained) if full else model_id, max_new, lora=not full)
        try:
            params = vllm.SamplingParams(temperature=0.0, max_tokens=max_new)
            lora = None if full else LoRARequest("student", 1, str(student.trained))
            return [o.outputs[0].text for o in llm.chat(prompts, params, lora_request=lora, use_tqdm=False)]
        finally:
            release_engine(llm)
    models = _load_models(cfg, model_id, student.trained)
    try:
        return _generate_transformers(models.tuned, models.tokenizer, prompts, max_new)
    finally:
        models.release()
