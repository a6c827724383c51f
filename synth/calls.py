"""Teacher calls cached by request id in a JSONL log, the way generation caches answers.

Used by the curation judges, prompt expansion, the diff judge and the turns of
conversations: a rerun (or a run after a crash) sends only the calls whose ids are not in
the log yet.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from synth.backends import Completion, make_backend, teacher_identity
from synth.config import OutputConfig, TeacherConfig
from synth.rawlog import JsonlAppender, iter_records, repair_tail
from synth.records import make_record
from synth.requests import Request

logger = logging.getLogger(__name__)


class CachedCalls:
    """The answers of one teacher, cached in `log`. `backend`: a running teacher to send
    through (else one is started when there is something to send); `identity`: the
    teacher's identity when the caller has it (else the backend's, or computed)."""

    def __init__(self, teacher: TeacherConfig, log: Path, backend: Any = None, identity: dict[str, Any] | None = None):
        self.teacher = teacher
        self.backend = backend
        if identity is None:
            identity = backend.identity() if backend is not None else teacher_identity(teacher)
        self.identity = identity
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(log)
        self.records: dict[str, dict[str, Any]] = {r["id"]: r for r in iter_records(log)}
        self.answers: dict[str, str] = {rid: r["messages"][-1]["content"] for rid, r in self.records.items()}
        self.sent = 0
        self._own = False

    def answer(self, requests: list[Request]) -> tuple[dict[str, str], dict[str, str]]:
        """(answers by request id, failure reasons by request id) for `requests`."""
        todo = list({r.id: r for r in requests if r.id not in self.answers}.values())
        failed: dict[str, str] = {}
        if todo:
            logger.info("%d calls to send, %d cached in %s", len(todo), len(requests) - len(todo), self.log)
            if self.backend is None:
                self.backend, self._own = make_backend(self.teacher, self.identity), True
            out = OutputConfig(dir=str(self.log.parent))
            with JsonlAppender(self.log, out.sync_every, out.sync_interval_s) as sink:
                for result in self.backend.generate(iter(todo)):
                    if isinstance(result, Completion):
                        rec = make_record(result, self.identity)
                        sink.append(rec)
                        self.records[result.request.id] = rec
                        self.answers[result.request.id] = result.text
                        self.sent += 1
                    else:
                        failed[result.request.id] = f"{result.error_type}: {result.message}"[:300]
                        logger.warning("call %s failed: %s", result.request.id, failed[result.request.id])
        return {r.id: self.answers[r.id] for r in requests if r.id in self.answers}, failed

    def close(self) -> None:
        if self._own and self.backend is not None:
            self.backend.close()
            self.backend = None
