"""Curation filters: one module per family, chosen by name from FILTERS.

A filter is a callable on one record (a raw-log dict) that returns None to keep it or a
short reason string to reject it; it may edit the record (PII redaction). Filters run in
the recipe's order and the first rejection wins. Stateful filters (dedup) see records in
a fixed order, so curation is deterministic.
"""

from __future__ import annotations

import importlib
from typing import Any

FILTERS: dict[str, str] = {
    "truncated": "synth.filters.quality:Truncated",
    "empty": "synth.filters.quality:Empty",
    "length": "synth.filters.quality:Length",
    "refusal": "synth.filters.quality:Refusal",
    "regex": "synth.filters.patterns:Regex",
    "exact_dedup": "synth.filters.dedup:ExactDedup",
    "near_dedup": "synth.filters.dedup:NearDedup",
    "decontam": "synth.filters.decontam:Decontam",
    "pii": "synth.filters.pii:Pii",
    "json": "synth.filters.structured:JsonOutput",
    "verifier": "synth.filters.verifier:Verifier",
    "judge": "synth.filters.judge:Judge",
    "semantic_dedup": "synth.filters.semantic:SemanticDedup",
}


def parse_spec(spec: Any, index: int) -> tuple[str, dict[str, Any]]:
    """A filter entry of the recipe ("name" or {"name": ..., options}) as (name, options)."""
    where = f"curate.filters[{index}]"
    if isinstance(spec, str):
        name, options = spec, {}
    elif isinstance(spec, dict) and isinstance(spec.get("name"), str):
        options = {k: v for k, v in spec.items() if k != "name"}
        name = spec["name"]
    else:
        raise ValueError(f"{where}: give a filter name or a mapping with 'name', e.g. {{name: length, max_chars: 4000}}")
    if name not in FILTERS:
        raise ValueError(f"{where}: unknown filter '{name}'; valid filters: {', '.join(sorted(FILTERS))}")
    if not isinstance(options, dict):
        raise ValueError(f"{where}: options must be a mapping")
    return name, options


def build_filter(spec: Any, index: int) -> Any:
    name, options = parse_spec(spec, index)
    module_name, cls_name = FILTERS[name].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(options, f"curate.filters[{index}]")


def prompt_text(rec: dict[str, Any]) -> str:
    """The last user turn of a record's chat."""
    for message in reversed(rec["messages"]):
        if message["role"] == "user":
            return message["content"]
    return ""


def answer_text(rec: dict[str, Any]) -> str:
    """The teacher's answer: the last assistant turn."""
    message = rec["messages"][-1]
    return message["content"] if message["role"] == "assistant" else ""
