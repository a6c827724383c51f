"""Tool calls (docs/distillation.md): calls to unknown tools, arguments the tool's schema
refuses, tools that failed or timed out, calls left as unparsed markup in the answer, and
conversations still calling tools when tools.max_rounds ran out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from synth.configtools import help_field
from synth.filters.base import Filter, answer_text
from synth.tools import CALL_OPEN, ERROR_KINDS


@dataclass
class ToolsOptions:
    reject: list[str] = help_field(list(ERROR_KINDS), help="tool errors that reject a record: unknown_tool, invalid_arguments, tool_error (it raised or crashed), timeout")
    reject_malformed: bool = help_field(True, help=f"reject answers with tool-call markup ({CALL_OPEN}) that did not parse as a call")
    reject_unanswered: bool = help_field(True, help="reject conversations still calling tools when tools.max_rounds ran out")
    require_call: bool = help_field(False, help="reject records in which the teacher called no tool")
    max_calls: int | None = help_field(None, help="most tool calls in one record")

    def __post_init__(self) -> None:
        unknown = sorted(set(self.reject) - set(ERROR_KINDS))
        if unknown:
            raise ValueError(f"reject: unknown error kind(s) {', '.join(unknown)}; valid: {', '.join(ERROR_KINDS)}")
        if self.max_calls is not None and self.max_calls < 1:
            raise ValueError(f"max_calls: must be at least 1, got {self.max_calls}")


class Tools(Filter):
    """Reject records by their tool calls (the record's `tool_use`)."""

    name = "tools"
    Options = ToolsOptions

    def check(self, rec: dict[str, Any]) -> str | None:
        o = self.options
        use = rec.get("tool_use") or {}
        for error in use.get("errors") or []:
            if error.get("kind") in o.reject:
                return f"tool {error.get('kind')}: {error.get('name')} (turn {error.get('turn')}, round {error.get('round')}): {error.get('message')}"[:500]
        if o.reject_unanswered and use.get("ended") == "max_rounds":
            return f"still calling tools after tools.max_rounds ({use.get('rounds')} teacher calls), no answer"
        if o.reject_malformed and CALL_OPEN in answer_text(rec):
            return f"malformed tool call: {CALL_OPEN} markup in the answer that did not parse as a call"
        calls = int(use.get("calls") or 0)
        if o.require_call and not calls:
            return "no tool call (require_call: true)"
        if o.max_calls is not None and calls > o.max_calls:
            return f"{calls} tool calls, more than max_calls {o.max_calls}"
        return None
