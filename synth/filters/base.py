"""Shared pieces of filters: option parsing with errors that name the filter entry."""

from __future__ import annotations

from typing import Any, TypeVar

from synth.configtools import from_dict

T = TypeVar("T")


def options(cls: type[T], values: dict[str, Any], where: str) -> T:
    """Validate a filter's options against its dataclass; errors name curate.filters[i].key."""
    return from_dict(cls, values, prefix=where)
