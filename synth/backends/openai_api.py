"""Teacher backend `openai`: any OpenAI-compatible endpoint through the official client.

One asyncio loop drives many requests at once under three controls (synth/ratelimit.py):
an adaptive bound on requests in flight, requests/tokens-per-minute buckets, and a shared
pause when the server says Retry-After. Retries (tenacity) use exponential backoff with
jitter, bounded, for 429, 5xx, connection errors, timeouts and malformed bodies; 401, 403
and 404 stop the whole run at once (a bad key or model name is not a per-request
failure); other 4xx become failure records.

Speed: the client uses the openai package's aiohttp transport and its raw-response path
(`client.post(..., cast_to=httpx2.Response)`), skipping pydantic parsing of each answer.
The API key lives only in the client: never in ids, records, logs or error messages.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlparse

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from synth.backends.base import Completion, Failure
from synth.config import TeacherConfig
from synth.logprobs import TopK
from synth.ratelimit import AdaptiveLimit, TokenBucket, budget_spent_wait, retry_after_s
from synth.requests import Request, estimate_prompt_tokens, request_seed

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_KEYLIKE = re.compile(r"\b(sk-|key-)[A-Za-z0-9_\-*.]{6,}")
_DONE = object()


class FatalTeacherError(ValueError):
    """The endpoint refuses every request (bad key, no such model): stop the run."""


class MalformedResponse(Exception):
    """A 2xx response whose body is not a chat completion (truncated or invalid JSON)."""


def _is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


class OpenAIBackend:
    """An OpenAI-compatible chat completions endpoint as a teacher."""

    name = "openai"
    section = "openai"  # the teacher config's section of this backend's options
    sdk_module = "openai"
    base_url_env, default_base_url = "OPENAI_BASE_URL", DEFAULT_BASE_URL
    endpoint_path = "/chat/completions"  # relative to base_url

    @classmethod
    def base_url_for(cls, cfg: TeacherConfig) -> str:
        o = getattr(cfg, cls.section)
        return (o.base_url or os.environ.get(cls.base_url_env) or cls.default_base_url).rstrip("/")

    @classmethod
    def identity_for(cls, cfg: TeacherConfig) -> dict[str, Any]:
        o = cfg.openai
        return {
            "backend": "openai",
            "model": cfg.model,
            "revision": cfg.revision,
            "base_url": cls.base_url_for(cfg),
            "response_format": o.response_format,
            "extra_body": o.extra_body or None,
        }

    def __init__(self, cfg: TeacherConfig, identity: dict[str, Any] | None = None):
        try:
            self.sdk = importlib.import_module(self.sdk_module)
        except ImportError:
            raise ImportError(f"teacher.backend={self.section} needs {self.sdk_module}: pip install 'stillhouse[api]'") from None
        self.cfg = cfg
        self.api = getattr(cfg, self.section)  # this backend's options (synth.config.ApiOptions)
        self.base_url = self.base_url_for(cfg)
        key = self.api.api_key or os.environ.get(self.api.api_key_env)
        if not key:
            if not _is_loopback(self.base_url):
                raise ValueError(
                    f"teacher.{self.section}: no API key for {self.base_url}: set the environment variable "
                    f"{self.api.api_key_env} (or teacher.{self.section}.api_key_env to the variable that holds it)"
                )
            key = "EMPTY"  # a local server started without --api-key accepts any key
        self._key = key
        self._identity = identity if identity is not None else self.identity_for(cfg)
        self.vocab = b"\0" * 8  # the endpoint's tokenizer is not known here (synth.logprobs.UNKNOWN_VOCAB)
        self.stats = {"retries": 0, "rate_limited": 0, "concurrency": self.api.max_concurrency}

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def redact(self, text: str) -> str:
        if self._key and self._key != "EMPTY":
            text = text.replace(self._key, "<redacted>")
        return _KEYLIKE.sub(lambda m: m.group(1) + "<redacted>", text)

    def progress_fields(self) -> dict[str, Any]:
        return {"retries": self.stats["retries"], "429s": self.stats["rate_limited"], "conc": self.stats["concurrency"]}

    # ---- one request -------------------------------------------------------------------

    def body(self, req: Request) -> dict[str, Any]:
        """The chat completions request body of `req` (the batch backend writes the same)."""
        s, o = req.sampling, self.api
        body: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": req.messages,
            "temperature": s["temperature"],
            "top_p": s["top_p"],
            "max_tokens": s["max_tokens"],
        }
        if s.get("seed") is not None:
            body["seed"] = request_seed(s["seed"], req.id)
        if s.get("stop"):
            body["stop"] = list(s["stop"])
        if s.get("top_k") is not None:
            body["top_k"] = s["top_k"]  # not in OpenAI's API; vLLM and others accept it
        if o.response_format is not None:
            body["response_format"] = o.response_format
        if req.tools:
            body["tools"] = req.tools
            body["tool_choice"] = req.tool_choice or "auto"
            if not req.parallel_tool_calls:
                body["parallel_tool_calls"] = False
        if s.get("logprobs"):
            body["logprobs"] = True
            body["top_logprobs"] = s["logprobs"]
        body.update(o.extra_body)
        return body

    def _topk(self, choice: dict[str, Any], k: int) -> Any:
        """The answer's top-k logprobs from a chat completion's `logprobs.content`. Training
        needs token ids: a vLLM server gives them as "token_id:N" with
        `extra_body: {return_tokens_as_token_ids: true}`; token strings alone are refused."""
        content = (choice.get("logprobs") or {}).get("content")
        if content is None:
            raise FatalTeacherError(
                f"teacher: {self.base_url} returned no logprobs although sampling.logprobs={k} asked for them; "
                "use an endpoint that gives logprobs (or set sampling.logprobs: 0)")

        def token_id(token: str) -> int:
            if not token.startswith("token_id:"):
                raise FatalTeacherError(
                    f"teacher: {self.base_url} returned logprobs as token strings ({token!r}), not token ids, so they "
                    "cannot be lined up with the student's tokens; a vLLM server returns ids with "
                    "teacher.openai.extra_body: {return_tokens_as_token_ids: true}")
            return int(token.split(":", 1)[1])

        ids = [token_id(t["token"]) for t in content]
        top = [[(token_id(c["token"]), float(c["logprob"])) for c in t.get("top_logprobs") or []] for t in content]
        return TopK.from_lists(ids, top, k)

    async def _send(self, client: Any, req: Request) -> Completion:
        import httpx2

        started = time.monotonic()
        response = await client.post(self.endpoint_path, cast_to=httpx2.Response, body=self.body(req))
        try:
            data = json.loads(response.content)
        except ValueError as exc:
            raise MalformedResponse(f"malformed response body ({type(exc).__name__}: {exc})") from None
        result = self.completion(req, data, round(time.monotonic() - started, 4))
        self._after_success(response.headers)
        return result

    def completion(self, req: Request, data: Any, latency_s: float) -> Completion:
        """The Completion of a chat completion body (a dict); MalformedResponse if it is none."""
        try:
            choice = data["choices"][0]
            message = choice["message"]
            text = message["content"]
            usage = data.get("usage") or {}
            # A reasoning model's thinking, where the server gives it apart (vLLM with a
            # reasoning parser, DeepSeek, ...): `reasoning_content`, or `reasoning` in newer APIs.
            reasoning = message.get("reasoning_content") or message.get("reasoning")
            tool_calls = message.get("tool_calls") or None
            if tool_calls is not None and not (isinstance(tool_calls, list) and all(
                    isinstance(tc, dict) and isinstance(tc.get("function"), dict) for tc in tool_calls)):
                raise TypeError("message.tool_calls is not a list of {id, type, function}")
            if text is None and (isinstance(reasoning, str) or tool_calls):
                text = ""  # cut off while still reasoning, or only calling tools
            if not isinstance(text, str):
                raise TypeError("message.content is not a string")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise MalformedResponse(f"malformed response body ({type(exc).__name__}: {exc})") from None
        return Completion(
            reasoning=reasoning if isinstance(reasoning, str) else None,
            request=req,
            text=text,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            latency_s=latency_s,
            topk=self._topk(choice, req.sampling["logprobs"]) if req.sampling.get("logprobs") else None,
            tool_calls=tool_calls,
        )

    def _after_success(self, headers: Any) -> None:
        self._limit.on_success()
        self.stats["concurrency"] = self._limit.limit
        # A server that says its request or token budget is spent: wait for the reset.
        wait = budget_spent_wait(headers)
        if wait:
            self._pause(wait)

    def _pause(self, seconds: float) -> None:
        self._pause_until = max(self._pause_until, time.monotonic() + seconds)

    async def _gate(self, req: Request) -> int:
        """Wait for the shared pause and the rate buckets; returns the tokens charged."""
        while (delay := self._pause_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        if self._rpm is not None:
            await self._rpm.acquire(1)
        charged = 0
        if self._tpm is not None:
            charged = estimate_prompt_tokens(req.messages) + int(req.sampling["max_tokens"])
            await self._tpm.acquire(charged)
        return charged

    def _retryable(self, exc: BaseException) -> bool:
        sdk = self.sdk
        if isinstance(exc, (MalformedResponse, sdk.APIConnectionError, sdk.RateLimitError, sdk.InternalServerError)):
            return True
        # 529: Anthropic's "overloaded"; 408/409: timeouts and conflicts worth another try.
        return isinstance(exc, sdk.APIStatusError) and (exc.status_code in (408, 409) or exc.status_code >= 500)

    @staticmethod
    def _asked_wait(exc: BaseException | None) -> float | None:
        """The wait the server asked for in this error's headers (Retry-After and kin)."""
        response = getattr(exc, "response", None)
        return retry_after_s(getattr(response, "headers", None)) if response is not None else None

    def _wait(self, state: Any) -> float:
        o = self.api
        backoff = wait_random_exponential(multiplier=o.backoff_s, max=o.backoff_max_s)(state)
        return max(backoff, self._asked_wait(state.outcome.exception()) or 0.0)

    def _before_sleep(self, state: Any) -> None:
        exc = state.outcome.exception()
        self.stats["retries"] += 1
        status = getattr(exc, "status_code", None)
        if status in (429, 503, 529):
            self._limit.on_overload()
            self.stats["concurrency"] = self._limit.limit
            if status == 429:
                self.stats["rate_limited"] += 1
        asked = self._asked_wait(exc)
        if asked is not None:
            self._pause(asked)  # every sender waits, not only this one
        logger.debug("retrying request after %s", self.redact(f"{type(exc).__name__}: {exc}"))

    async def _run_one(self, client: Any, req: Request) -> Completion | Failure:
        sdk = self.sdk

        attempts = 0
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.api.max_retries + 1),
                wait=self._wait,
                retry=retry_if_exception(self._retryable),
                before_sleep=self._before_sleep,
                reraise=True,
            ):
                with attempt:
                    attempts += 1
                    charged = await self._gate(req)
                    try:
                        result = await self._send(client, req)
                    except BaseException:
                        if charged:
                            self._tpm.adjust(-charged)  # refund: the server did not serve it
                        raise
                    if charged:
                        self._tpm.adjust(result.prompt_tokens + result.completion_tokens - charged)
                    return result
        except (sdk.AuthenticationError, sdk.PermissionDeniedError, sdk.NotFoundError) as exc:
            raise FatalTeacherError(
                f"teacher: {self.base_url} answered {exc.status_code} for model '{self.cfg.model}' "
                f"({self.redact(str(exc.message))[:300]}); check the API key "
                f"(${self.api.api_key_env}), teacher.model and teacher.{self.section}.base_url"
            ) from None
        except (asyncio.CancelledError, FatalTeacherError):
            raise
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            return Failure(req, type(exc).__name__, self.redact(str(exc))[:2000], status=status, extra={"attempts": attempts})
        raise AssertionError("unreachable: tenacity either returns or raises")

    # ---- the loop ----------------------------------------------------------------------

    def _make_client(self) -> Any:
        import openai

        o = self.api
        http_client = openai.DefaultAioHttpClient(timeout=o.timeout_s) if o.transport == "aiohttp" else None
        return openai.AsyncOpenAI(
            base_url=self.base_url, api_key=self._key, max_retries=0, timeout=o.timeout_s, http_client=http_client
        )

    async def _dispatch(self, client: Any, requests: Iterable[Request], queue: asyncio.Queue) -> None:
        tasks: set[asyncio.Task] = set()
        fatal: list[BaseException] = []

        async def run(req: Request) -> None:
            try:
                queue.put_nowait(await self._run_one(client, req))
            except FatalTeacherError as exc:
                if not fatal:
                    fatal.append(exc)
                    queue.put_nowait(exc)
            finally:
                await self._limit.release()

        try:
            for req in requests:
                await self._limit.acquire()
                if fatal:
                    await self._limit.release()
                    break
                task = asyncio.create_task(run(req))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks and not fatal:
                await asyncio.wait(set(tasks), return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in list(tasks):
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            queue.put_nowait(_DONE)

    @staticmethod
    async def _next_items(queue: asyncio.Queue) -> list[Any]:
        items = [await queue.get()]
        while not queue.empty():
            items.append(queue.get_nowait())
        return items

    def generate(self, requests: Iterable[Request]) -> Iterator[Completion | Failure]:
        o = self.api
        loop = asyncio.new_event_loop()
        # Flow-control state belongs to this loop; rebuilt per generate() call.
        self._limit = AdaptiveLimit(o.max_concurrency, o.min_concurrency)
        self._rpm = TokenBucket(o.rpm / 60, o.burst or max(1.0, o.rpm / 60)) if o.rpm else None
        self._tpm = TokenBucket(o.tpm / 60, max(o.tpm / 60, 1.0) * 10) if o.tpm else None
        self._pause_until = 0.0
        queue: asyncio.Queue = asyncio.Queue()
        client = self._make_client()
        dispatcher = loop.create_task(self._dispatch(client, requests, queue))
        try:
            while True:
                for item in loop.run_until_complete(self._next_items(queue)):
                    if item is _DONE:
                        return
                    if isinstance(item, BaseException):
                        raise item
                    yield item
        finally:
            if not dispatcher.done():
                dispatcher.cancel()
            loop.run_until_complete(asyncio.gather(dispatcher, return_exceptions=True))
            # Closed here, not in the dispatcher: a cancelled dispatcher could be cut off mid-close.
            loop.run_until_complete(client.close())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def close(self) -> None:
        pass
