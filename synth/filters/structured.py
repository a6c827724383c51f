"""Structured output: the answer must parse as JSON and, optionally, match a JSON Schema."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.configtools import help_field
from synth.filters import answer_text
from synth.filters.base import options

_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n\s*```\s*$", re.DOTALL)


@dataclass
class JsonOptions:
    schema: Any = help_field(None, help="a JSON Schema (inline mapping) or the path of a .json schema file")
    strip_fences: bool = help_field(True, help="accept an answer wrapped in a ```json fence")


class JsonOutput:
    """Reject answers that are not valid JSON or do not match the schema."""

    name = "json"

    def __init__(self, opts: dict[str, Any], where: str):
        self.o = options(JsonOptions, opts, where)
        self._validator = None
        schema = self.o.schema
        if isinstance(schema, str):
            path = Path(schema)
            if not path.is_file():
                raise ValueError(f"{where}.schema: {schema} does not exist")
            try:
                schema = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise ValueError(f"{where}.schema: {schema} is not valid JSON: {exc}") from None
        if schema is not None:
            try:
                import jsonschema
            except ImportError:
                raise ImportError(f"{where}.schema needs jsonschema: pip install 'stillhouse[curate]'") from None
            cls = jsonschema.validators.validator_for(schema)
            try:
                cls.check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"{where}.schema: invalid JSON Schema: {exc.message}") from None
            self._validator = cls(schema)

    def __call__(self, rec: dict[str, Any]) -> str | None:
        text = answer_text(rec)
        if self.o.strip_fences:
            m = _FENCE.match(text)
            if m:
                text = m.group(1)
        try:
            value = json.loads(text)
        except ValueError as exc:
            return f"answer is not valid JSON: {exc}"
        if self._validator is not None:
            error = next(iter(self._validator.iter_errors(value)), None)
            if error is not None:
                path = "/".join(map(str, error.absolute_path)) or "(root)"
                return f"JSON does not match the schema at {path}: {error.message[:200]}"
        return None
