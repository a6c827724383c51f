"""Teacher backend `anthropic`: the Messages API through the official `anthropic` SDK, and
its Message Batches API in batch mode (`teacher.anthropic.batch: true`).

The synchronous backend is the openai backend's loop (synth/backends/openai_api.py: adaptive
concurrency, rpm/tpm buckets, Retry-After and the `anthropic-ratelimit-*` headers pausing
every sender, bounded retries with jitter for 429, 529 "overloaded", 5xx and connection
errors; 401/403/404 stop the run) with the Messages API's request and answer:

- system messages become the `system` parameter; user and assistant turns stay `messages`;
- `max_tokens`, `temperature`, `top_k` and `stop_sequences` from `sampling`; `top_p` only
  when below 1 (recent models refuse temperature and top_p together); no seed (the API has
  none); `extra_body` passes other fields through (metadata, thinking);
- the answer is the text blocks joined, the reasoning the thinking blocks (extended thinking,
  `extra_body: {thinking: {type: enabled, budget_tokens: N}}`); `stop_reason`
  end_turn/stop_sequence -> stop, max_tokens -> length; usage from input/output_tokens.

Batch mode sends the same bodies as `params` of a message batch (`custom_id` = request id,
at most 100,000 requests or 256 MB a batch); the ledger and the loop are batch.py's. Message
batches carry no metadata, so a batch created by a run killed before it could record the id
is found by elimination: the one batch created since the part was recorded, not in the
ledger, with the part's request count. Where that is ambiguous (another process creating
batches on the same key at the same moment) the run stops and names the candidates.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from synth.backends.base import Completion, Failure
from synth.backends.batch import BatchMode, BatchView, Part
from synth.backends.openai_api import FatalTeacherError, MalformedResponse, OpenAIBackend
from synth.config import TeacherConfig
from synth.rawlog import JsonlAppender
from synth.requests import Request

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.anthropic.com"
STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


class AnthropicBackend(OpenAIBackend):
    """Anthropic's Messages API as a teacher."""

    name = "anthropic"
    section = "anthropic"
    sdk_module = "anthropic"
    base_url_env, default_base_url = "ANTHROPIC_BASE_URL", DEFAULT_BASE_URL
    endpoint_path = "/v1/messages"

    @classmethod
    def identity_for(cls, cfg: TeacherConfig) -> dict[str, Any]:
        return {
            "backend": "anthropic",
            "model": cfg.model,
            "revision": cfg.revision,
            "base_url": cls.base_url_for(cfg),
            "extra_body": cfg.anthropic.extra_body or None,
        }

    def body(self, req: Request) -> dict[str, Any]:
        """The Messages API request body of `req` (batch mode sends the same as `params`)."""
        s = req.sampling
        system = "\n\n".join(m["content"] for m in req.messages if m["role"] == "system")
        body: dict[str, Any] = {
            "model": self.cfg.model,
            "max_tokens": s["max_tokens"],
            "messages": [{"role": m["role"], "content": m["content"]} for m in req.messages if m["role"] != "system"],
            "temperature": s["temperature"],
        }
        if system:
            body["system"] = system
        if s.get("top_p") is not None and s["top_p"] < 1:
            body["top_p"] = s["top_p"]
        if s.get("top_k") is not None:
            body["top_k"] = s["top_k"]
        if s.get("stop"):
            body["stop_sequences"] = list(s["stop"])
        body.update(self.api.extra_body)
        return body

    def completion(self, req: Request, data: Any, latency_s: float | None) -> Completion:
        """The Completion of a Messages API answer (a dict); MalformedResponse if it is none."""
        try:
            blocks = data["content"]
            text = "".join(b["text"] for b in blocks if b.get("type") == "text")
            thinking = [b.get("thinking") or "" for b in blocks if b.get("type") == "thinking"]
            usage = data.get("usage") or {}
            reason = data.get("stop_reason")
        except (KeyError, TypeError, AttributeError) as exc:
            raise MalformedResponse(f"malformed response body ({type(exc).__name__}: {exc})") from None
        return Completion(
            request=req,
            text=text,
            finish_reason=STOP_REASONS.get(reason, reason),
            prompt_tokens=int(usage.get("input_tokens") or 0),
            completion_tokens=int(usage.get("output_tokens") or 0),
            latency_s=latency_s,
            reasoning="\n\n".join(thinking) if thinking else None,
        )

    def _make_client(self) -> Any:
        return self.sdk.AsyncAnthropic(base_url=self.base_url, api_key=self._key, max_retries=0, timeout=self.api.timeout_s)


def _unix(value: Any) -> float:
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


class AnthropicBatchBackend(BatchMode, AnthropicBackend):
    """Anthropic's Message Batches API as a teacher."""

    name = "anthropic-batch"
    batch_api = "the Message Batches API"

    def __init__(self, cfg: TeacherConfig, ledger: Path, wait: bool = True, identity: dict[str, Any] | None = None):
        AnthropicBackend.__init__(self, cfg, identity)
        self._init_batch(ledger, wait)

    def _make_api(self) -> Any:
        return self.sdk.Anthropic(base_url=self.base_url, api_key=self._key, max_retries=self.api.max_retries,
                                  timeout=self.api.timeout_s)

    def _batch_request(self, req: Request) -> dict[str, Any]:
        return {"custom_id": req.id, "params": self.body(req)}

    def _request_line(self, req: Request) -> bytes:
        return json.dumps(self._batch_request(req), ensure_ascii=False).encode("utf-8")

    def _find_batch(self, part: Part, known: set[str]) -> str | None:
        candidates = []
        for b in self._call("listing message batches", self._api().messages.batches.list, limit=100):
            created = _unix(b.created_at)
            if created < part.created - 300:
                break  # newest first: older than the part (with 5 minutes for clock skew)
            c = b.request_counts
            total = c.processing + c.succeeded + c.errored + c.canceled + c.expired
            if b.id not in known and total == len(part.requests):
                candidates.append(b.id)
        if len(candidates) > 1:
            raise FatalTeacherError(
                f"teacher (batch mode): a run was killed while creating a message batch of {len(part.requests)} requests "
                f"and {len(candidates)} batches of that size were created since ({', '.join(candidates)}); which one is "
                f"this run's cannot be told apart. Cancel the ones that are not (console or API), then record the right "
                f"one by rerunning with only it left, or delete {self.ledger_path.name}'s last 'part' line to submit anew")
        return candidates[0] if candidates else None

    def _create_batch(self, ledger: JsonlAppender, part: Part, requests: list[Request], fresh: bool) -> str:
        batch = self._call(f"creating a message batch of {len(requests)} requests", self._api().messages.batches.create,
                           requests=[self._batch_request(r) for r in requests])
        return batch.id

    def _view(self, batch_id: str) -> BatchView:
        b = self._call(f"retrieving message batch {batch_id}", self._api().messages.batches.retrieve, batch_id)
        c = b.request_counts
        done = c.succeeded + c.errored + c.canceled + c.expired
        return BatchView(b.id, b.processing_status == "ended", b.processing_status,
                         f"{b.processing_status} {done}/{done + c.processing}", raw=b)

    def _rows(self, view: BatchView) -> Iterator[dict[str, Any]]:
        for row in self._call(f"downloading the results of {view.id}", self._api().messages.batches.results, view.id):
            yield row.model_dump(mode="json")

    @staticmethod
    def _row_ok(row: dict[str, Any]) -> bool:
        return (row.get("result") or {}).get("type") == "succeeded"

    def _row_result(self, req: Request, row: dict[str, Any], batch_id: str | None) -> Completion | Failure:
        result = row.get("result") or {}
        kind = result.get("type")
        if kind == "succeeded":
            return self._answered(req, result.get("message"), batch_id)
        if kind == "errored":
            error = ((result.get("error") or {}).get("error")) or {}
            return Failure(req, "BatchRequestErrored", self.redact(str(error.get("message") or result))[:2000],
                           extra={"batch_id": batch_id, "code": error.get("type")})
        return Failure(req, f"Batch{str(kind).capitalize()}",
                       f"batch {batch_id}: the request was {kind} before it ran", extra={"batch_id": batch_id})
