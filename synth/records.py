"""The record format: a teacher's answer (or failure) as one JSONL line.

make_record turns a Completion into the raw-log record (docs/concepts.md) that
generation, the cached judge and expansion calls and the conversation turns all write;
make_failure does the same for failures.jsonl.
"""

from __future__ import annotations

import json
from typing import Any

from synth.backends.base import Completion, Failure
from synth.reasoning import separate
from synth.runtime import utc_now
from synth.tools import record_calls, wire_calls


def make_record(result: Completion, teacher: dict[str, Any], reasoning: Any = None) -> dict[str, Any]:
    """The raw-log record of a completion. `reasoning` (the teacher's ReasoningConfig) splits
    a tagged reasoning trace from the answer: the assistant message then holds it as
    `reasoning_content`, as transformers' chat templates read it."""
    req = result.request
    split = separate(result.text, result.reasoning, result.finish_reason, reasoning)
    text, thought, finished = split.answer, split.reasoning, split.finished
    answer = {"role": "assistant", "content": text, **({"reasoning_content": thought} if thought is not None else {})}
    if result.tool_calls:
        answer["tool_calls"] = record_calls(wire_calls({"tool_calls": result.tool_calls}))
    return {
        "id": req.id,
        "messages": [*(record_message(m) for m in req.messages), answer],
        **({"tools": json.dumps(req.tools, ensure_ascii=False)} if req.tools else {}),
        **({"reasoning": {"chars": len(thought), "finished": finished}} if thought is not None else {}),
        "seed": req.seed,
        "sample_index": req.sample_index,
        "teacher": {key: teacher.get(key) for key in ("backend", "model", "revision", "base_url", "fingerprint")},
        "sampling": req.sampling,
        "template": req.template,
        "finish_reason": result.finish_reason,
        "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens},
        **({"logprobs": {"k": result.topk.k, "tokens": len(result.topk.token_ids)}} if result.topk is not None else {}),
        "latency_s": result.latency_s,
        **({"batch_id": result.batch_id} if result.batch_id else {}),
        **({"conversation": result.conversation} if result.conversation else {}),
        **({"tool_use": result.tool_use} if result.tool_use else {}),
        "created_at": utc_now(),
    }


def record_message(m: dict[str, Any]) -> dict[str, Any]:
    """A history message as a record holds it: tool calls with their arguments as objects (TRL's format)."""
    if not m.get("tool_calls"):
        return m
    return {**m, "tool_calls": record_calls(wire_calls(m))}


def make_failure(result: Failure) -> dict[str, Any]:
    """The failures.jsonl row of a request the teacher could not answer."""
    req = result.request
    return {
        "id": req.id,
        "seed": req.seed,
        "sample_index": req.sample_index,
        "error": {"type": result.error_type, "message": result.message, "status": result.status, **result.extra},
        "created_at": utc_now(),
    }
