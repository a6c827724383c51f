"""`synth score`: a local teacher computes the top-k logprobs of answers that already exist.

Knowledge distillation needs the teacher's distribution at every answer token. When the data
was written by a teacher that gave none (an API without logprobs, another model, people), a
local model scores it afterwards: prompt + answer go through vLLM once with
`prompt_logprobs=k` (prefix caching off, as vLLM requires for them) and the answer positions'
top k land in OUTPUT/logprobs.bin exactly as if they had been captured during generation
(synth.logprobs: same entry, tied to the chat, the scorer's vocabulary digest). Records that
have an entry already are skipped, so a rerun (or a run after a kill) scores only the rest.
The scorer must share the student's tokenizer (sft.distill checks it).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from synth.backends.vllm_engine import VllmBackend
from synth.config import TeacherConfig
from synth.logprobs import LogprobAppender, LogprobStore
from synth.plan import Plan
from synth.rawlog import DirLock, iter_records
from synth.runtime import progress_bar

logger = logging.getLogger(__name__)


def answer_tokens(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], int] | None:
    """(the chat's token ids up to the answer's end token, where the answer starts), or None
    when the chat template does not render the prompt as a prefix of the whole chat."""
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    if list(full[:len(prompt)]) != list(prompt) or len(full) == len(prompt):
        return None
    end = len(full)
    eos = tokenizer.eos_token_id
    for i in range(len(prompt), len(full)):  # the template may add text after the end token
        if full[i] == eos:
            end = i + 1
            break
    return list(full[:end]), len(prompt)


def run_score(plan: Plan, top_k: int, scorer: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Score every record of the recipe's raw log that has no logprobs yet; returns counts."""
    with DirLock(plan.layout.root):
        return _score(plan, top_k, scorer, progress)


def _scorer(plan: Plan, scorer: str | None) -> tuple[TeacherConfig, dict[str, Any] | None]:
    """The scoring model (--teacher, or the recipe's local teacher) and its identity when known."""
    teacher = plan.recipe.teacher
    if scorer is not None:
        return TeacherConfig(model=scorer, backend="vllm", vllm=teacher.vllm), None
    if teacher.backend != "vllm":
        raise ValueError("synth score: the recipe's teacher is not a local model (teacher.backend is "
                         f"{teacher.backend}); give one with --teacher MODEL (a directory or HF id that shares the "
                         "student's tokenizer)")
    return teacher, plan.teacher


def _score(plan: Plan, top_k: int, scorer: str | None, progress: bool) -> dict[str, Any]:
    if not 1 <= top_k <= 64:
        raise ValueError(f"--top-k: must be between 1 and 64, got {top_k}")
    teacher, identity = _scorer(plan, scorer)
    layout, out = plan.layout, plan.recipe.output
    counts = {"records_scored": 0, "already_had_logprobs": 0, "not_scorable": 0}
    store = LogprobStore(layout.logprobs)
    todo = []
    for rec in iter_records(layout.raw):
        if store.status(rec["id"], rec["messages"]) == "ok":
            counts["already_had_logprobs"] += 1
        else:
            todo.append(rec)
    store.close()
    if not todo:
        return counts
    started = time.monotonic()
    backend = VllmBackend(teacher, scoring=True, identity=identity)
    try:
        tokenizer, vocab = backend.llm.get_tokenizer(), backend.vocab
        with LogprobAppender(layout.logprobs, out.sync_every, out.sync_interval_s) as sink:
            bar = progress_bar(len(todo), "score", "rec", progress)
            batch: list[tuple[dict[str, Any], list[int], int]] = []
            for rec in todo:
                tokens = answer_tokens(tokenizer, rec["messages"])
                if tokens is None:
                    counts["not_scorable"] += 1
                    bar.update(1)
                    continue
                batch.append((rec, *tokens))
                if len(batch) >= 256:
                    counts["records_scored"] += _score_batch(backend, batch, top_k, sink, vocab)
                    bar.update(len(batch))
                    batch = []
            if batch:
                counts["records_scored"] += _score_batch(backend, batch, top_k, sink, vocab)
                bar.update(len(batch))
            bar.close()
    finally:
        backend.close()
    counts["wall_s"] = round(time.monotonic() - started, 1)
    logger.info("scored %d records with %s (top %d); %d had logprobs, %d could not be scored",
                counts["records_scored"], teacher.model, top_k, counts["already_had_logprobs"], counts["not_scorable"])
    return counts


def _score_batch(backend: Any, batch: list[tuple[dict[str, Any], list[int], int]], k: int, sink: Any, vocab: bytes) -> int:
    """Score one batch through the engine and append its entries; returns how many."""
    from vllm import SamplingParams, TokensPrompt  # heavy: vllm

    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=k, flat_logprobs=True, detokenize=False)
    outputs = backend.llm.generate([TokensPrompt(prompt_token_ids=ids) for _, ids, _ in batch], params, use_tqdm=False)
    for (rec, ids, start), out in zip(batch, outputs, strict=True):
        topk = backend.topk_of(out.prompt_logprobs, ids, k, start)
        sink.append(rec["id"], rec["messages"], topk, vocab)
    return len(batch)


def score_summary(counts: dict[str, Any], path: Path) -> str:
    return (f"synth score: {counts['records_scored']} records scored into {path} "
            f"({counts['already_had_logprobs']} had logprobs already, {counts['not_scorable']} could not be scored)")
