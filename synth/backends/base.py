"""The small protocol every teacher backend implements."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from synth.requests import Request


@dataclass
class Completion:
    """The teacher's answer to one request."""

    request: Request
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    topk: Any = None  # synth.logprobs.TopK when sampling.logprobs asked for them
    batch_id: str | None = None  # the provider batch that answered it (batch mode)
    reasoning: str | None = None  # the API's reasoning field or thinking blocks, when it gives them apart
    conversation: dict[str, Any] | None = None  # multi-turn: {turns, ended, turn_ids} (synth.conversation)
    tool_calls: list[dict[str, Any]] | None = None  # the calls the answer makes, OpenAI's wire format
    tool_use: dict[str, Any] | None = None  # with tools: {calls, rounds, errors, ended, turn_ids} (synth.conversation)


@dataclass
class Failure:
    """A request the teacher could not answer; it goes to failures.jsonl, never silently away."""

    request: Request
    error_type: str
    message: str
    status: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    """A teacher. `generate` yields one result per request, in completion order, as each
    finishes, so the caller can write it at once (a crash then loses only work in flight)."""

    def identity(self) -> dict[str, Any]:
        """What identifies the teacher's weights and endpoint (goes into every request id)."""
        ...

    def generate(self, requests: Iterable[Request]) -> Iterator[Completion | Failure]: ...

    def close(self) -> None: ...
