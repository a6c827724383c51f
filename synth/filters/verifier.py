"""A user's own check, e.g. that a math answer is right: `module:function`.

The function gets the record and returns True/False, or (ok, reason).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from synth.configtools import help_field
from synth.filters.base import options


@dataclass
class VerifierOptions:
    function: str = help_field(help="'package.module:function', called with the record; returns bool or (bool, reason)")


class Verifier:
    """Keep the records a user-supplied function accepts."""

    name = "verifier"

    def __init__(self, opts: dict[str, Any], where: str):
        self.o = options(VerifierOptions, opts, where)
        module_name, _, func_name = self.o.function.partition(":")
        if not module_name or not func_name:
            raise ValueError(f"{where}.function: expected 'module:function', got {self.o.function!r}")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"{where}.function: cannot import {module_name}: {exc}") from None
        self.func = getattr(module, func_name, None)
        if not callable(self.func):
            raise ValueError(f"{where}.function: {module_name} has no function '{func_name}'")

    def __call__(self, rec: dict[str, Any]) -> str | None:
        try:
            result = self.func(rec)
        except Exception as exc:  # a verifier's bug rejects the record, with the error as reason
            return f"verifier {self.o.function} raised {type(exc).__name__}: {exc}"
        ok, reason = (result if isinstance(result, tuple) else (result, None))
        if ok:
            return None
        return f"verifier {self.o.function}: {reason or 'rejected'}"
