"""Batch mode of the API teachers (`teacher.openai.batch`, `teacher.anthropic.batch`): what
every provider's batch API shares. synth/backends/openai_batch.py and anthropic_api.py add
the provider's calls.

The same requests as synchronous mode (same bodies, same request ids, so a recipe switches
modes with one key and keeps its finished work), sent as batches:

1. The ledger OUTPUT/batches.jsonl is read first. Batches submitted and not yet collected
   are re-attached: their requests are in flight (paid for) and never sent again.
2. Requests with no answer and in no batch are cut into parts (at most `batch_max_requests`
   requests and `batch_max_mb` each). Each part is recorded in the ledger (with its request
   ids) before anything is sent, a `creating` entry just before the batch is asked for, and
   its batch id after the batch is created (OpenAI: its uploaded file's id in between). A
   kill between two of these steps is repaired by the next run, which looks the upload and
   the batch up before sending anything again. A creation the killed run never heard back
   from can still appear at the provider after the rerun's first look (the provider finishes
   the request after the client is gone), so a part with a `creating` entry and no batch id
   is looked for again every `batch_poll_s` until `batch_create_grace_s` after that entry
   before it is created anew (the log says so while it waits).
3. The running batches are polled every `batch_poll_s`; as each ends, its results are
   downloaded and one result is yielded per request: a Completion for an answer, a Failure
   for an error, and for a request the batch never ran (expired, cancelled, failed, or left
   out of a finished batch's results) a Failure that names the batch and its state.
   Failures are sent again by the next run, as in synchronous mode.
4. The ledger's `collected` entry lists the requests answered; should a crash lose some of
   those records, the next run downloads that batch's results again (no new batch).

With `wait=False` (`synth generate --no-wait`) a run submits, collects the batches that
have already ended, and returns; the manifest names the batches still running.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synth.backends.base import Completion, Failure
from synth.backends.openai_api import FatalTeacherError, MalformedResponse
from synth.rawlog import JsonlAppender, repair_tail
from synth.requests import Request
from synth.runtime import utc_now

logger = logging.getLogger(__name__)


@dataclass
class Part:
    """One batch (its input) and what became of it, as the ledger records it."""

    id: str
    requests: list[str]
    created: float = 0.0  # unix time the part was recorded
    filename: str | None = None  # OpenAI: the input file's name
    file_id: str | None = None  # OpenAI: the uploaded input file
    batch_id: str | None = None
    status: str | None = None  # the batch's final status once collected
    ok: list[str] = field(default_factory=list)  # requests the collected batch answered
    abandoned: bool = False
    creating: float | None = None  # unix time a run last asked the provider to create its batch

    @property
    def live(self) -> bool:
        return self.batch_id is not None and self.status is None and not self.abandoned


@dataclass
class BatchView:
    """A provider's batch as the loop needs it."""

    id: str
    ended: bool
    status: str  # the provider's status word (completed, expired, ended, ...)
    progress: str  # e.g. "in_progress 120/500", for the log
    errors: str = ""  # the provider's reason for a failed batch, if it gives one
    raw: Any = None  # the provider's batch object


def _clock(unix: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(unix))


def part_id(request_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(request_ids).encode()).hexdigest()[:16]


def read_ledger(path: Path) -> dict[str, Part]:
    """The ledger's parts by id (later events update earlier ones)."""
    parts: dict[str, Part] = {}
    if not path.exists():
        return parts
    repair_tail(path)
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n")[:-1], 1):  # at "\n" only
        try:
            event = json.loads(line)
            kind, pid = event["event"], event["part"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path} line {n} is not a batch ledger entry (an object with 'event' and 'part'); "
                             "it was not written by synth as is: restore it (the ledger says which batches were "
                             "paid for), or delete the file only if no batch of this output is still running") from None
        if kind == "part":
            parts[pid] = Part(pid, list(event["requests"]), float(event.get("created") or 0), event.get("filename"))
        elif pid in parts:
            p = parts[pid]
            if kind == "uploaded":
                p.file_id = event["file_id"]
            elif kind == "creating":
                p.creating = float(event["time"])
            elif kind == "submitted":
                p.batch_id = event["batch_id"]
            elif kind == "collected":
                p.status, p.ok = event["status"], list(event.get("ok") or [])
            elif kind == "abandoned":
                p.abandoned = True
    return parts


class BatchMode:
    """The ledger and the loop, mixed into a synchronous API backend (its `body`,
    `completion`, `redact`, `sdk`, `o` and `base_url`). Providers implement the hooks:
    `_make_api`, `_find_batch`, `_create_batch`, `_view`, `_rows`, `_row_ok`, `_row_result`,
    and `_request_line` (one request's bytes in a batch, for sizing). A result row names
    its request by `custom_id`, in both providers' formats."""

    batch_api = "the batch API"  # for messages

    def _init_batch(self, ledger: Path, wait: bool) -> None:
        self.ledger_path = ledger
        self.wait = wait
        self._client: Any = None
        self.in_flight: set[str] = set()  # requests in batches still running when generate returned
        self.summary: dict[str, Any] = {"submitted": [], "collected": [], "running": [], "in_flight_requests": 0}

    def _api(self) -> Any:
        if self._client is None:
            self._client = self._make_api()
        return self._client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One API call (the SDK client retries 429, 5xx and connection errors itself); a
        refusal of the key or the endpoint stops the run, with the key redacted."""
        sdk = self.sdk
        try:
            return fn(*args, **kwargs)
        except (sdk.AuthenticationError, sdk.PermissionDeniedError) as exc:
            raise FatalTeacherError(
                f"teacher (batch mode): {self.base_url} answered {exc.status_code} to {what} "
                f"({self.redact(str(exc.message))[:300]}); check the API key (${self.api.api_key_env})"
            ) from None
        except sdk.NotFoundError as exc:
            raise FatalTeacherError(
                f"teacher (batch mode): {self.base_url} answered 404 to {what} ({self.redact(str(exc.message))[:300]}); "
                f"does the endpoint implement {self.batch_api}? (a vLLM server does not: use batch: false there)"
            ) from None
        except sdk.APIError as exc:
            raise RuntimeError(f"teacher (batch mode): {what} failed: {self.redact(str(exc))[:500]}") from None

    def _log(self, ledger: JsonlAppender, event: str, part: Part, **fields: Any) -> None:
        ledger.append({"event": event, "part": part.id, **fields, "at": utc_now()})
        ledger.sync()  # before the next API call: the ledger always knows what was sent

    # ---- submitting --------------------------------------------------------------------

    def _cut(self, requests: list[Request]) -> list[list[Request]]:
        """Split into parts within the provider's request and size limits."""
        limit = int(self.api.batch_max_mb * 1_000_000)
        chunks: list[list[Request]] = [[]]
        size = 0
        for req in requests:
            n = len(self._request_line(req))
            if chunks[-1] and (len(chunks[-1]) >= self.api.batch_max_requests or size + n > limit):
                chunks.append([])
                size = 0
            chunks[-1].append(req)
            size += n
        return [c for c in chunks if c]

    def _submit(self, ledger: JsonlAppender, part: Part, requests: dict[str, Request], known: set[str],
                fresh: bool) -> None:
        """Create the part's batch; a part left by a killed run is first looked up."""
        part.batch_id = None if fresh else self._find_unconfirmed(part, known)
        if part.batch_id is None:
            batch = [requests[r] for r in part.requests]
            self._prepare_batch(ledger, part, batch, fresh)
            part.creating = time.time()
            self._log(ledger, "creating", part, time=part.creating)
            part.batch_id = self._create_batch(ledger, part, batch, fresh)
        self._log(ledger, "submitted", part, batch_id=part.batch_id, **({"file_id": part.file_id} if part.file_id else {}))
        known.add(part.batch_id)
        self.summary["submitted"].append(part.batch_id)
        logger.info("batch %s submitted: %d requests", part.batch_id, len(part.requests))

    def _find_unconfirmed(self, part: Part, known: set[str]) -> str | None:
        """The batch a killed run created for `part` without recording it. When that run had
        asked for the batch (`creating`), the provider may still be creating it: look again
        until the grace period after the request has passed, so it is never paid for twice."""
        found = self._find_batch(part, known)
        if found is not None or part.creating is None:
            return found
        deadline = part.creating + self.api.batch_create_grace_s
        if time.time() < deadline:
            logger.info("batch part %s: the run that asked for its batch at %s never heard back and no such batch is "
                        "listed yet; looking again every %g s until %s (teacher.*.batch_create_grace_s) before creating "
                        "it anew, so that it is not paid for twice", part.id, _clock(part.creating),
                        self.api.batch_poll_s, _clock(deadline))
        while found is None and time.time() < deadline:
            time.sleep(min(self.api.batch_poll_s, max(0.0, deadline - time.time())))
            found = self._find_batch(part, known)
        if found is None:
            logger.info("batch part %s: no batch appeared within the grace period; creating it", part.id)
        return found

    def _prepare_batch(self, ledger: JsonlAppender, part: Part, requests: list[Request], fresh: bool) -> None:
        """What the provider needs before a batch is created (OpenAI: the uploaded file)."""

    # ---- collecting --------------------------------------------------------------------

    @staticmethod
    def _row_id(row: dict[str, Any]) -> str | None:
        return row.get("custom_id")

    def _answered(self, req: Request, body: Any, batch_id: str | None, status: int | None = None) -> Completion | Failure:
        """The Completion of an answer row's body, or a Failure when the body is none."""
        try:
            return self.completion(req, body, latency_s=None)
        except (MalformedResponse, FatalTeacherError) as exc:
            return Failure(req, type(exc).__name__, self.redact(str(exc))[:2000], status=status, extra={"batch_id": batch_id})

    def _results(self, part: Part, view: BatchView, todo: dict[str, Request], ok: list[str]) -> Iterator[Completion | Failure]:
        """One result per request of `part` still in `todo`; fills `ok` with the answered."""
        seen: set[str] = set()
        for row in self._rows(view):
            rid = self._row_id(row)
            if rid not in todo or rid in seen:
                if rid is not None and self._row_ok(row):
                    ok.append(rid)
                continue
            seen.add(rid)
            result = self._row_result(todo[rid], row, part.batch_id)
            if isinstance(result, Completion):
                result.batch_id = part.batch_id
                ok.append(rid)
            yield result
        if view.status in ("completed", "ended"):
            reason = f"batch {part.batch_id} {view.status} without a result for this request"
        else:
            reason = f"batch {part.batch_id} ended {view.status} before this request ran" + (f" ({view.errors})" if view.errors else "")
        for rid in part.requests:
            if rid in todo and rid not in seen:
                yield Failure(todo[rid], f"Batch{view.status.capitalize()}", self.redact(reason)[:2000],
                              extra={"batch_id": part.batch_id, "resubmitted": "by the next run"})

    def _collect(self, ledger: JsonlAppender, part: Part, view: BatchView, todo: dict[str, Request]) -> Iterator[Completion | Failure]:
        ok: list[str] = []
        yield from self._results(part, view, todo, ok)
        # The caller has written every result above before asking for the next one.
        part.status, part.ok = view.status, ok
        self._log(ledger, "collected", part, batch_id=part.batch_id, status=view.status, ok=ok)
        self.summary["collected"].append(part.batch_id)
        logger.info("batch %s %s: %d answered", part.batch_id, view.status, len(ok))

    # ---- the run -----------------------------------------------------------------------

    def generate(self, requests: Iterable[Request]) -> Iterator[Completion | Failure]:
        todo = {r.id: r for r in requests}
        parts = read_ledger(self.ledger_path)
        known = {p.batch_id for p in parts.values() if p.batch_id}
        with JsonlAppender(self.ledger_path, 1) as ledger:
            live = [p for p in parts.values() if p.live]
            taken = {rid for p in live for rid in p.requests}
            # A crash after collecting lost some of a batch's records: download them again.
            for p in parts.values():
                lost = [rid for rid in p.ok if rid in todo and rid not in taken]
                if p.status is not None and lost:
                    logger.info("batch %s: %d answers not in the raw log; downloading them again", p.batch_id, len(lost))
                    for result in self._results(p, self._view(p.batch_id), {rid: todo[rid] for rid in lost}, []):
                        if isinstance(result, Completion):
                            taken.add(result.request.id)
                            yield result
            # Parts recorded but not submitted (a kill in between): finish them if they still fit.
            for p in parts.values():
                if p.batch_id is None and not p.abandoned:
                    if all(rid in todo and rid not in taken for rid in p.requests):
                        self._submit(ledger, p, todo, known, fresh=False)
                        live.append(p)
                        taken.update(p.requests)
                    else:
                        p.abandoned = True
                        self._log(ledger, "abandoned", p, reason="its requests changed before it was submitted")
            for chunk in self._cut([r for rid, r in todo.items() if rid not in taken]):
                ids = [r.id for r in chunk]
                p = Part(part_id(ids), ids, time.time())
                p.filename = self._part_filename(p)
                self._log(ledger, "part", p, requests=ids, created=p.created,
                          **({"filename": p.filename} if p.filename else {}))
                self._submit(ledger, p, todo, known, fresh=True)
                live.append(p)
                taken.update(ids)
            yield from self._poll(ledger, live, todo)

    def _part_filename(self, part: Part) -> str | None:
        return None

    def _poll(self, ledger: JsonlAppender, live: list[Part], todo: dict[str, Request]) -> Iterator[Completion | Failure]:
        try:
            last: dict[str, str] = {}
            while live:
                for p in list(live):
                    view = self._view(p.batch_id)
                    if last.get(p.id) != view.progress:
                        logger.info("batch %s: %s", p.batch_id, view.progress)
                        last[p.id] = view.progress
                    if view.ended:
                        live.remove(p)
                        yield from self._collect(ledger, p, view, todo)
                if live and not self.wait:
                    break
                if live:
                    time.sleep(self.api.batch_poll_s)
        finally:  # also when interrupted: the manifest names what is still running
            self.summary["running"] = [p.batch_id for p in live]
            self.summary["in_flight_requests"] = sum(len(p.requests) for p in live)
            self.in_flight = {rid for p in live for rid in p.requests}

    def progress_fields(self) -> dict[str, Any]:
        return {"batches": len(self.summary["submitted"]), "collected": len(self.summary["collected"])}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
