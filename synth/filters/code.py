"""`code_exec`: run each answer's code with its seed's tests in the sandbox (synth.codeexec,
synth.sandbox) and keep the answers that pass; the share of tests passed goes on the record
as `scores.tests`. The reason of a rejection names the failing test and the end of its error.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.codeexec import Report, check_record
from synth.config import CodeCheck
from synth.configtools import help_field
from synth.filters.base import Filter
from synth.filters.verifier import function_source_sha


@dataclass
class CodeExecOptions(CodeCheck):
    min_pass: float = help_field(1.0, help="share of the tests that must pass to keep the record (1: all)")
    workers: int = help_field(0, help="sandboxed runs at a time (0: one per CPU)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.min_pass <= 1:
            raise ValueError(f"min_pass: must be between 0 and 1, got {self.min_pass}")
        if self.workers < 0:
            raise ValueError(f"workers: must be >= 0, got {self.workers}")


class CodeExec(Filter):
    """Keep the answers whose code passes the seed's tests, run in a sandbox."""

    name = "code_exec"
    Options = CodeExecOptions
    batch = True  # every record's code runs (in parallel) before any is decided

    @classmethod
    def inputs(cls, o: CodeExecOptions) -> dict[str, Any]:
        # the harness and the sandbox decide too: their code is an input of every decision
        return {"harness": function_source_sha("synth.codeexec:run_tests"), "sandbox": function_source_sha("synth.sandbox:run")}

    def setup(self) -> None:
        self.reports: dict[str, Report] = {}

    def _check(self, rec: dict[str, Any]) -> Report:
        o = self.options
        return check_record(rec, o.tests_field, o.language, o.block, o.limits)

    def prepare(self, records: Iterable[dict[str, Any]], out_dir: Path) -> None:
        records = list(records)
        with ThreadPoolExecutor(max_workers=self.options.workers or os.cpu_count() or 1) as pool:
            for rec, report in zip(records, pool.map(self._check, records), strict=True):
                self.reports[rec["id"]] = report

    def check(self, rec: dict[str, Any]) -> str | None:
        report = self.reports.get(rec["id"]) or self._check(rec)
        rec["scores"] = {**(rec.get("scores") or {}), "tests": round(report.score, 4)}
        if report.total and report.score >= self.options.min_pass:
            return None
        return report.reason() or f"{report.passed}/{report.total} tests passed, below min_pass {self.options.min_pass:g}"
