"""Batch mode of the `openai` teacher (`teacher.openai.batch: true`): OpenAI's Batch API.

The same requests as the synchronous backend (same bodies, same request ids, so a recipe
switches modes with one key and keeps its finished work), sent as batch input files:

1. The ledger OUTPUT/batches.jsonl is read first. Batches submitted and not yet collected
   are re-attached: their requests are in flight (paid for) and never sent again.
2. Requests with no answer and in no batch are cut into input files (`custom_id` = request
   id; at most `batch_max_requests` lines and `batch_max_mb` each). Each file is recorded
   in the ledger (`part`, with its request ids) before it is uploaded, its file id after
   the upload, its batch id after the batch is created. A kill between two of these steps
   is repaired by the next run, which finds the file by its name and the batch by its
   metadata (`stillhouse_part`) before uploading or creating anything: nothing is sent twice.
3. The running batches are polled every `batch_poll_s`; as each ends, its output and error
   files are downloaded and one result is yielded per request: a Completion for a 200
   answer, a Failure for an error line, and for a request the batch never ran (expired,
   cancelled, failed, or missing from a completed batch's files) a Failure that names the
   batch and its state. Failures are sent again by the next run, as in synchronous mode.
4. The ledger's `collected` entry lists the requests answered with 200; should a crash lose
   some of those records, the next run downloads that batch's output file again.

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
from synth.backends.openai_api import FatalTeacherError, MalformedResponse, OpenAIBackend
from synth.config import TeacherConfig
from synth.rawlog import JsonlAppender, repair_tail
from synth.requests import Request
from synth.runtime import utc_now

logger = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "expired", "cancelled", "failed")
PART_KEY = "stillhouse_part"  # batch metadata: which ledger part a batch belongs to


@dataclass
class Part:
    """One batch input file and what became of it, as the ledger records it."""

    id: str
    filename: str
    requests: list[str]
    created: float = 0.0  # unix time the part was recorded
    file_id: str | None = None
    batch_id: str | None = None
    status: str | None = None  # the batch's final status once collected
    ok: list[str] = field(default_factory=list)  # requests the collected batch answered with 200
    abandoned: bool = False

    @property
    def live(self) -> bool:
        return self.batch_id is not None and self.status is None and not self.abandoned


def part_id(request_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(request_ids).encode()).hexdigest()[:16]


def read_ledger(path: Path) -> dict[str, Part]:
    """The ledger's parts by id (later events update earlier ones)."""
    parts: dict[str, Part] = {}
    if not path.exists():
        return parts
    repair_tail(path)
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            event = json.loads(line)
            kind, pid = event["event"], event["part"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path} line {n} is not a batch ledger entry (an object with 'event' and 'part'); "
                             "it was not written by synth as is: restore it (the ledger says which batches were "
                             "paid for), or delete the file only if no batch of this output is still running") from None
        if kind == "part":
            parts[pid] = Part(pid, event["filename"], list(event["requests"]), float(event.get("created") or 0))
        elif pid in parts:
            p = parts[pid]
            if kind == "uploaded":
                p.file_id = event["file_id"]
            elif kind == "submitted":
                p.batch_id = event["batch_id"]
            elif kind == "collected":
                p.status, p.ok = event["status"], list(event.get("ok") or [])
            elif kind == "abandoned":
                p.abandoned = True
    return parts


class OpenAIBatchBackend(OpenAIBackend):
    """An OpenAI-compatible endpoint's Batch API (files + /v1/batches) as a teacher."""

    name = "openai-batch"

    def __init__(self, cfg: TeacherConfig, ledger: Path, wait: bool = True):
        super().__init__(cfg)
        self.ledger_path = ledger
        self.wait = wait
        self._client: Any = None
        self.in_flight: set[str] = set()  # requests in batches still running when generate returned
        self.summary: dict[str, Any] = {"submitted": [], "collected": [], "running": [], "in_flight_requests": 0}

    # ---- the provider's API ------------------------------------------------------------

    def _api(self) -> Any:
        if self._client is None:
            import openai

            o = self.cfg.openai
            self._client = openai.OpenAI(base_url=self.base_url, api_key=self._key, max_retries=o.max_retries,
                                         timeout=o.timeout_s)
        return self._client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One API call (the client retries 429, 5xx and connection errors itself); a refusal
        of the key or the endpoint stops the run with the key redacted."""
        import openai

        try:
            return fn(*args, **kwargs)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise FatalTeacherError(
                f"teacher (batch mode): {self.base_url} answered {exc.status_code} to {what} "
                f"({self.redact(str(exc.message))[:300]}); check the API key (${self.cfg.openai.api_key_env})"
            ) from None
        except openai.NotFoundError as exc:
            raise FatalTeacherError(
                f"teacher (batch mode): {self.base_url} answered 404 to {what} ({self.redact(str(exc.message))[:300]}); "
                "does the endpoint implement the Files and Batch APIs? (vLLM's server does not: use "
                "teacher.openai.batch: false there)"
            ) from None
        except openai.APIError as exc:
            raise RuntimeError(f"teacher (batch mode): {what} failed: {self.redact(str(exc))[:500]}") from None

    def _download(self, file_id: str) -> list[dict[str, Any]]:
        text = self._call(f"downloading file {file_id}", self._api().files.content, file_id).text
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    logger.warning("batch file %s line %d is not JSON; skipped", file_id, n)
        return rows

    # ---- ledger ------------------------------------------------------------------------

    def _log(self, ledger: JsonlAppender, event: str, part: Part, **fields: Any) -> None:
        ledger.append({"event": event, "part": part.id, **fields, "at": utc_now()})
        ledger.sync()  # before the next API call: the ledger always knows what was sent

    # ---- submitting --------------------------------------------------------------------

    def _input_lines(self, requests: list[Request]) -> Iterator[tuple[Request, bytes]]:
        for req in requests:
            line = {"custom_id": req.id, "method": "POST", "url": ENDPOINT, "body": self.body(req)}
            yield req, (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8")

    def _cut(self, requests: list[Request]) -> list[list[Request]]:
        """Split into input files within the request and size limits."""
        o = self.cfg.openai
        limit = int(o.batch_max_mb * 1_000_000)
        chunks: list[list[Request]] = [[]]
        size = 0
        for req, line in self._input_lines(requests):
            if chunks[-1] and (len(chunks[-1]) >= o.batch_max_requests or size + len(line) > limit):
                chunks.append([])
                size = 0
            chunks[-1].append(req)
            size += len(line)
        return [c for c in chunks if c]

    def _find_file(self, part: Part) -> str | None:
        """The id of an upload of this part that a killed run did not record."""
        for f in self._call("listing files", self._api().files.list, purpose="batch"):
            if f.filename == part.filename:
                return f.id
        return None

    def _find_batch(self, part: Part) -> str | None:
        """The id of a batch of this part that a killed run created but did not record."""
        for b in self._call("listing batches", self._api().batches.list, limit=100):
            if (b.metadata or {}).get(PART_KEY) == part.id:
                return b.id
            if part.created and b.created_at < part.created - 3600:
                break  # newest first: older than the part, no need to look further
        return None

    def _submit(self, ledger: JsonlAppender, part: Part, requests: dict[str, Request]) -> None:
        if part.file_id is None:
            part.file_id = self._find_file(part)
            if part.file_id is None:
                data = b"".join(line for _, line in self._input_lines([requests[r] for r in part.requests]))
                uploaded = self._call(f"uploading {part.filename}", self._api().files.create,
                                      file=(part.filename, data, "application/jsonl"), purpose="batch")
                part.file_id = uploaded.id
            self._log(ledger, "uploaded", part, file_id=part.file_id)
        part.batch_id = self._find_batch(part)
        if part.batch_id is None:
            batch = self._call(f"creating a batch of {part.filename}", self._api().batches.create,
                               input_file_id=part.file_id, endpoint=ENDPOINT,
                               completion_window=self.cfg.openai.batch_completion_window,
                               metadata={PART_KEY: part.id})
            part.batch_id = batch.id
        self._log(ledger, "submitted", part, batch_id=part.batch_id, file_id=part.file_id)
        self.summary["submitted"].append(part.batch_id)
        logger.info("batch %s submitted: %d requests (%s)", part.batch_id, len(part.requests), part.filename)

    # ---- collecting --------------------------------------------------------------------

    def _results(self, part: Part, batch: Any, todo: dict[str, Request], ok: list[str]) -> Iterator[Completion | Failure]:
        """One result per request of `part` still in `todo`; fills `ok` with the 200 answers."""
        seen: set[str] = set()
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            for row in self._download(file_id):
                rid = row.get("custom_id")
                if rid not in todo or rid in seen:
                    if rid is not None and (row.get("response") or {}).get("status_code") == 200:
                        ok.append(rid)
                    continue
                seen.add(rid)
                result = self._result(todo[rid], row, part.batch_id)
                if isinstance(result, Completion):
                    ok.append(rid)
                yield result
        if batch.status == "completed":
            reason = f"batch {part.batch_id} completed without a result for this request (in neither its output nor its error file)"
        else:
            errors = "; ".join(f"{e.code}: {e.message}" for e in ((batch.errors and batch.errors.data) or [])[:3])
            reason = f"batch {part.batch_id} ended {batch.status} before this request ran" + (f" ({errors})" if errors else "")
        for rid in part.requests:
            if rid in todo and rid not in seen:
                yield Failure(todo[rid], f"Batch{batch.status.capitalize()}", self.redact(reason)[:2000],
                              extra={"batch_id": part.batch_id, "resubmitted": "by the next run"})

    def _result(self, req: Request, row: dict[str, Any], batch_id: str | None) -> Completion | Failure:
        response, error = row.get("response") or {}, row.get("error")
        status = response.get("status_code")
        if status == 200 and not error:
            try:
                done = self.completion(req, response.get("body"), latency_s=None)
            except (MalformedResponse, FatalTeacherError) as exc:
                return Failure(req, type(exc).__name__, self.redact(str(exc))[:2000], status=status,
                               extra={"batch_id": batch_id})
            done.batch_id = batch_id
            return done
        body_error = (response.get("body") or {}).get("error") if isinstance(response.get("body"), dict) else None
        detail = error or body_error or {}
        message = detail.get("message") if isinstance(detail, dict) else str(detail)
        code = detail.get("code") if isinstance(detail, dict) else None
        return Failure(req, f"BatchRequest{status or 'Error'}", self.redact(str(message or row))[:2000], status=status,
                       extra={"batch_id": batch_id, **({"code": code} if code else {})})

    def _collect(self, ledger: JsonlAppender, part: Part, batch: Any, todo: dict[str, Request]) -> Iterator[Completion | Failure]:
        ok: list[str] = []
        yield from self._results(part, batch, todo, ok)
        # The caller has written every result above before asking for the next one.
        part.status, part.ok = batch.status, ok
        self._log(ledger, "collected", part, batch_id=part.batch_id, status=batch.status, ok=ok,
                  counts=batch.request_counts.model_dump() if batch.request_counts else None)
        self.summary["collected"].append(part.batch_id)
        logger.info("batch %s %s: %d answered", part.batch_id, batch.status, len(ok))

    # ---- the run -----------------------------------------------------------------------

    def generate(self, requests: Iterable[Request]) -> Iterator[Completion | Failure]:
        todo = {r.id: r for r in requests}
        parts = read_ledger(self.ledger_path)
        with JsonlAppender(self.ledger_path, 1) as ledger:
            live = [p for p in parts.values() if p.live]
            taken = {rid for p in live for rid in p.requests}
            # A crash after collecting lost some of a batch's records: download them again.
            for p in parts.values():
                lost = [rid for rid in p.ok if rid in todo and rid not in taken]
                if p.status is not None and lost:
                    logger.info("batch %s: %d answers not in the raw log; downloading them again", p.batch_id, len(lost))
                    batch = self._call(f"retrieving batch {p.batch_id}", self._api().batches.retrieve, p.batch_id)
                    for result in self._results(p, batch, {rid: todo[rid] for rid in lost}, []):
                        if isinstance(result, Completion):
                            taken.add(result.request.id)
                            yield result
            # Parts recorded but not submitted (a kill in between): finish them if they still fit.
            for p in parts.values():
                if p.batch_id is None and not p.abandoned:
                    if all(rid in todo and rid not in taken for rid in p.requests):
                        self._submit(ledger, p, todo)
                        live.append(p)
                        taken.update(p.requests)
                    else:
                        p.abandoned = True
                        self._log(ledger, "abandoned", p, reason="its requests changed before it was submitted")
            for chunk in self._cut([r for rid, r in todo.items() if rid not in taken]):
                ids = [r.id for r in chunk]
                pid = part_id(ids)
                p = Part(pid, f"stillhouse-{pid}.jsonl", ids, time.time())
                self._log(ledger, "part", p, filename=p.filename, requests=ids, created=p.created)
                self._submit(ledger, p, todo)
                live.append(p)
                taken.update(ids)
            yield from self._poll(ledger, live, todo)

    def _poll(self, ledger: JsonlAppender, live: list[Part], todo: dict[str, Request]) -> Iterator[Completion | Failure]:
        try:
            yield from self._poll_until_done(ledger, live, todo)
        finally:  # also when interrupted: the manifest names what is still running
            self.summary["running"] = [p.batch_id for p in live]
            self.summary["in_flight_requests"] = sum(len(p.requests) for p in live)
            self.in_flight = {rid for p in live for rid in p.requests}

    def _poll_until_done(self, ledger: JsonlAppender, live: list[Part], todo: dict[str, Request]) -> Iterator[Completion | Failure]:
        last: dict[str, str] = {}
        while live:
            for p in list(live):
                batch = self._call(f"retrieving batch {p.batch_id}", self._api().batches.retrieve, p.batch_id)
                counts = batch.request_counts
                state = f"{batch.status} {counts.completed + counts.failed}/{counts.total}" if counts else batch.status
                if last.get(p.id) != state:
                    logger.info("batch %s: %s", p.batch_id, state)
                    last[p.id] = state
                if batch.status in TERMINAL:
                    live.remove(p)
                    yield from self._collect(ledger, p, batch, todo)
            if live and not self.wait:
                break
            if live:
                time.sleep(self.cfg.openai.batch_poll_s)

    def progress_fields(self) -> dict[str, Any]:
        return {"batches": len(self.summary["submitted"]), "collected": len(self.summary["collected"])}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
