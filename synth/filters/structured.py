"""Structured output: the answer must parse as JSON and, optionally, match a JSON Schema."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.configtools import help_field
from synth.filters.base import Filter, answer_text
from synth.runtime import file_sha256

_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n\s*```\s*$", re.DOTALL)


def _validator(schema: Any) -> Any:
    """A jsonschema validator for an inline schema or a schema file (None: no schema)."""
    if isinstance(schema, str):
        path = Path(schema)
        if not path.is_file():
            raise ValueError(f"schema: {schema} does not exist")
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"schema: {path} is not valid JSON: {exc}") from None
    if schema is None:
        return None
    try:
        import jsonschema
    except ImportError:
        raise ImportError("curate filter json: a schema needs jsonschema: pip install 'stillhouse[curate]'") from None
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"schema: invalid JSON Schema: {exc.message}") from None
    return cls(schema)


@dataclass
class JsonOptions:
    schema: Any = help_field(None, help="a JSON Schema (inline mapping) or the path of a .json schema file")
    strip_fences: bool = help_field(True, help="accept an answer wrapped in a ```json fence")

    def __post_init__(self) -> None:
        _validator(self.schema)


class JsonOutput(Filter):
    """Reject answers that are not valid JSON or do not match the schema."""

    name = "json"
    Options = JsonOptions

    @classmethod
    def inputs(cls, o: JsonOptions) -> dict[str, Any]:
        return {"schema_file": file_sha256(Path(o.schema))} if isinstance(o.schema, str) else {}

    def setup(self) -> None:
        self._validator = _validator(self.options.schema)

    def check(self, rec: dict[str, Any]) -> str | None:
        text = answer_text(rec)
        if self.options.strip_fences:
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
