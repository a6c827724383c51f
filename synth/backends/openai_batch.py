"""Batch mode of the `openai` teacher (`teacher.openai.batch: true`): OpenAI's Batch API.

Each part is a JSONL input file (`custom_id` = request id, the synchronous request body),
uploaded with the Files API (`purpose: batch`) and run by a batch on /v1/chat/completions
with `metadata.stillhouse_part` = the part's id. A part left by a killed run is repaired by
finding its file by name (`stillhouse-PART.jsonl`) and its batch by that metadata. Results:
the output file's 200 lines are answers, the error file's lines failures. The ledger and
the loop are synth/backends/batch.py's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from synth.backends.base import Completion, Failure
from synth.backends.batch import BatchMode, BatchView, Part
from synth.backends.openai_api import OpenAIBackend
from synth.config import TeacherConfig
from synth.rawlog import JsonlAppender
from synth.requests import Request

logger = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "expired", "cancelled", "failed")
PART_KEY = "stillhouse_part"  # batch metadata: which ledger part a batch belongs to


class OpenAIBatchBackend(BatchMode, OpenAIBackend):
    """An OpenAI-compatible endpoint's Batch API (files + /v1/batches) as a teacher."""

    name = "openai-batch"
    batch_api = "the Files and Batch APIs"

    def __init__(self, cfg: TeacherConfig, ledger: Path, wait: bool = True, identity: dict[str, Any] | None = None):
        OpenAIBackend.__init__(self, cfg, identity)
        self._init_batch(ledger, wait)

    def _make_api(self) -> Any:
        return self.sdk.OpenAI(base_url=self.base_url, api_key=self._key, max_retries=self.api.max_retries,
                               timeout=self.api.timeout_s)

    def _request_line(self, req: Request) -> bytes:
        line = {"custom_id": req.id, "method": "POST", "url": ENDPOINT, "body": self.body(req)}
        return (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8")

    def _part_filename(self, part: Part) -> str:
        return f"stillhouse-{part.id}.jsonl"

    # ---- submitting --------------------------------------------------------------------

    def _find_file(self, part: Part) -> str | None:
        """The id of an upload of this part that a killed run did not record."""
        for f in self._call("listing files", self._api().files.list, purpose="batch"):
            if f.filename == part.filename:
                return f.id
        return None

    def _find_batch(self, part: Part, known: set[str]) -> str | None:
        """The id of a batch of this part that a killed run created but did not record."""
        for b in self._call("listing batches", self._api().batches.list, limit=100):
            if (b.metadata or {}).get(PART_KEY) == part.id:
                return b.id
            if part.created and b.created_at < part.created - 3600:
                break  # newest first: older than the part, no need to look further
        return None

    def _prepare_batch(self, ledger: JsonlAppender, part: Part, requests: list[Request], fresh: bool) -> None:
        if part.file_id is None:
            part.file_id = None if fresh else self._find_file(part)
            if part.file_id is None:
                data = b"".join(self._request_line(r) for r in requests)
                uploaded = self._call(f"uploading {part.filename}", self._api().files.create,
                                      file=(part.filename, data, "application/jsonl"), purpose="batch")
                part.file_id = uploaded.id
            self._log(ledger, "uploaded", part, file_id=part.file_id)

    def _create_batch(self, ledger: JsonlAppender, part: Part, requests: list[Request], fresh: bool) -> str:
        batch = self._call(f"creating a batch of {part.filename}", self._api().batches.create,
                           input_file_id=part.file_id, endpoint=ENDPOINT,
                           completion_window=self.api.batch_completion_window, metadata={PART_KEY: part.id})
        return batch.id

    # ---- collecting --------------------------------------------------------------------

    def _view(self, batch_id: str) -> BatchView:
        b = self._call(f"retrieving batch {batch_id}", self._api().batches.retrieve, batch_id)
        c = b.request_counts
        progress = f"{b.status} {c.completed + c.failed}/{c.total}" if c else b.status
        errors = "; ".join(f"{e.code}: {e.message}" for e in ((b.errors and b.errors.data) or [])[:3])
        return BatchView(b.id, b.status in TERMINAL, b.status, progress, errors, b)

    def _rows(self, view: BatchView) -> Iterator[dict[str, Any]]:
        for file_id in (view.raw.output_file_id, view.raw.error_file_id):
            if not file_id:
                continue
            text = self._call(f"downloading file {file_id}", self._api().files.content, file_id).text
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError:
                        logger.warning("batch file %s line %d is not JSON; skipped", file_id, n)

    @staticmethod
    def _row_ok(row: dict[str, Any]) -> bool:
        return (row.get("response") or {}).get("status_code") == 200 and not row.get("error")

    def _row_result(self, req: Request, row: dict[str, Any], batch_id: str | None) -> Completion | Failure:
        response = row.get("response") or {}
        status = response.get("status_code")
        if self._row_ok(row):
            return self._answered(req, response.get("body"), batch_id, status)
        body = response.get("body")
        detail = row.get("error") or (body.get("error") if isinstance(body, dict) else None) or {}
        message = detail.get("message") if isinstance(detail, dict) else str(detail)
        code = detail.get("code") if isinstance(detail, dict) else None
        return Failure(req, f"BatchRequest{status or 'Error'}", self.redact(str(message or row))[:2000], status=status,
                       extra={"batch_id": batch_id, **({"code": code} if code else {})})
