"""Requests: one rendered chat for one sample, identified by a hash of what shapes the answer."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from synth.runtime import canonical_json


def request_id(
    messages: list[dict[str, str]],
    seed_fields: dict[str, Any],
    teacher: dict[str, Any],
    sampling: dict[str, Any],
    sample_index: int,
    tools: dict[str, Any] | None = None,
) -> str:
    """Content hash of everything that can change the teacher's output.

    The rendered messages cover the system prompt, template and few-shot turns; the seed
    fields cover the seed row; `teacher` is the backend's identity (model, revision,
    weights fingerprint, endpoint); `sampling` the sampling parameters with the per-sample
    seed. The seed's position in the file is left out on purpose: reordering seeds keeps
    finished work. `tools` (the tools shown and the tool_choice) only when the call has them,
    so the ids of calls without stay what they were.
    """
    payload = {
        "messages": messages,
        "seed": seed_fields,
        "teacher": teacher,
        "sampling": sampling,
        "sample": sample_index,
        **({"tools": tools} if tools is not None else {}),
    }
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class Request:
    """One teacher call: a chat, its sampling parameters, and where it came from."""

    id: str
    messages: list[dict[str, str]]
    sampling: dict[str, Any]
    sample_index: int
    seed: dict[str, Any]  # {"source", "line", "fields"}
    template: dict[str, str]  # {"name", "sha256"}
    tools: list[dict[str, Any]] | None = None  # the tools the teacher may call (OpenAI's format)
    tool_choice: str | None = None  # auto, required or none, with tools
    parallel_tool_calls: bool = True  # whether one answer may make several calls


def sample_sampling(base: dict[str, Any], sample_index: int) -> dict[str, Any]:
    """Sampling parameters of sample `sample_index`: a base seed s becomes s + sample_index."""
    out = dict(base)
    if out.get("seed") is not None:
        out["seed"] = int(out["seed"]) + sample_index
    return out


def request_seed(sampling_seed: int, request_id: str) -> int:
    """The seed a request is sampled with: drawn from its sampling seed (the recipe's seed plus
    the sample's index) and its id, so a rerun samples alike while no two prompts share their
    random draws. vLLM (in process or behind an OpenAI-compatible server) seeds one generator
    per request; with the recipe's seed itself, every prompt's first sample drew the same
    numbers, and a teacher unsure between two answers wrote the same one for every prompt of
    a kind (the code demo's teacher at temperature 1.0 chose max() for "the larger" and "the
    smaller" alike)."""
    digest = hashlib.sha256(f"{sampling_seed}:{request_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def estimate_prompt_tokens(messages: list[dict[str, str]]) -> int:
    """A tokenizer-free estimate (about 4 characters a token, plus per-message framing)."""
    return sum(len(m.get("content") or "") for m in messages) // 4 + 4 * len(messages) + 2
