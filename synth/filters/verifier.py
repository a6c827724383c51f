"""A user's own check, e.g. that a math answer is right: `module:function`.

The function gets the record and returns True/False, or (ok, reason).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.configtools import help_field
from synth.filters.base import Filter
from synth.runtime import file_sha256


def load_function(spec: str, where: str) -> Callable[[dict[str, Any]], Any]:
    """The function named 'package.module:function' (importable from sys.path)."""
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise ValueError(f"{where}: expected 'module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{where}: cannot import {module_name}: {exc}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ValueError(f"{where}: {module_name} has no function '{func_name}'")
    return func


def function_source_sha(spec: str) -> str | None:
    """SHA-256 of the file that defines a 'module:function' (its code is an input of every
    decision it makes), or None when it has no file."""
    module = importlib.import_module(spec.partition(":")[0])
    source = getattr(module, "__file__", None)
    return file_sha256(Path(source)) if source else None


@dataclass
class VerifierOptions:
    function: str = help_field(help="'package.module:function', called with the record; returns bool or (bool, reason)")

    def __post_init__(self) -> None:
        load_function(self.function, "function")


class Verifier(Filter):
    """Keep the records a user-supplied function accepts."""

    name = "verifier"
    Options = VerifierOptions

    @classmethod
    def inputs(cls, o: VerifierOptions) -> dict[str, Any]:
        return {"source": function_source_sha(o.function)}

    def setup(self) -> None:
        self.func = load_function(self.options.function, f"{self.where}.function")

    def check(self, rec: dict[str, Any]) -> str | None:
        try:
            result = self.func(rec)
        except Exception as exc:  # a verifier's bug rejects the record, with the error as reason
            return f"verifier {self.options.function} raised {type(exc).__name__}: {exc}"
        ok, reason = (result if isinstance(result, tuple) else (result, None))
        if ok:
            return None
        return f"verifier {self.options.function}: {reason or 'rejected'}"
