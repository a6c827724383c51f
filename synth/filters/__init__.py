"""Curation filters: one module per family, chosen by name from FILTERS.

Each filter is a `Filter` subclass (synth/filters/base.py) whose `check(record)` returns
None to keep a record or a short reason to reject it (its options are in `self.options`). Filters run in the recipe's order and
the first rejection wins. Stateful filters (dedup) see records in a fixed order, so
curation is deterministic.
"""

from __future__ import annotations

import importlib
from typing import Any

from synth.filters.base import Filter, answer_text, field_text, parse_options, prompt_text

FILTERS: dict[str, str] = {
    "truncated": "synth.filters.quality:Truncated",
    "empty": "synth.filters.quality:Empty",
    "reasoning": "synth.filters.reasoning:Reasoning",
    "tools": "synth.filters.tools:Tools",
    "length": "synth.filters.quality:Length",
    "refusal": "synth.filters.quality:Refusal",
    "regex": "synth.filters.patterns:Regex",
    "exact_dedup": "synth.filters.dedup:ExactDedup",
    "near_dedup": "synth.filters.dedup:NearDedup",
    "decontam": "synth.filters.decontam:Decontam",
    "semantic_decontam": "synth.filters.decontam:SemanticDecontam",
    "grounded": "synth.filters.grounded:Grounded",
    "pii": "synth.filters.pii:Pii",
    "json": "synth.filters.structured:JsonOutput",
    "verifier": "synth.filters.verifier:Verifier",
    "code_exec": "synth.filters.code:CodeExec",
    "judge": "synth.filters.judge:Judge",
    "best_of_n": "synth.filters.best_of_n:BestOfN",
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
    return name, options


def filter_class(name: str) -> type[Filter]:
    module_name, cls_name = FILTERS[name].split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def validate_spec(spec: Any, index: int) -> Any:
    """Check a filter entry and its options (unknown keys, bad values, missing files) without
    building the filter: nothing is loaded, nothing is called. Returns the options."""
    name, opts = parse_spec(spec, index)
    return parse_options(filter_class(name).Options, opts, f"curate.filters[{index}]")


def build_filter(spec: Any, index: int) -> Filter:
    """The filter of one curate.filters entry (synth.plan builds them from checked entries)."""
    name, options = parse_spec(spec, index)
    return filter_class(name)(options, f"curate.filters[{index}]")


__all__ = ["FILTERS", "Filter", "answer_text", "build_filter", "field_text", "filter_class", "parse_spec",
           "prompt_text", "validate_spec"]
