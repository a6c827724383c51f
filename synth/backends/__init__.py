"""Teacher backends: one module each, chosen by name from BACKENDS.

The dict maps a backend name to "module:Class"; the module is imported only when the
backend is used, so naming a backend never pulls in vllm or torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from synth.backends.base import Backend, Completion, Failure

BACKENDS: dict[str, str] = {
    "vllm": "synth.backends.vllm_engine:VllmBackend",
    "openai": "synth.backends.openai_api:OpenAIBackend",
    "anthropic": "synth.backends.anthropic_api:AnthropicBackend",
}


# Batch mode (teacher.<backend>.batch) of the API backends that have it.
BATCH_BACKENDS: dict[str, str] = {
    "openai": "synth.backends.openai_batch:OpenAIBatchBackend",
    "anthropic": "synth.backends.anthropic_api:AnthropicBatchBackend",
}


def _load(registry: dict[str, str], name: str) -> type:
    module_name, cls_name = registry[name].split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def load_backend_class(name: str) -> type:
    """The backend class registered under `name` (imports its module now)."""
    if name not in BACKENDS:
        raise ValueError(f"teacher.backend: unknown '{name}'; valid backends: {', '.join(sorted(BACKENDS))}")
    return _load(BACKENDS, name)


def make_batch_backend(teacher: Any, ledger: Any, wait: bool = True) -> Backend:
    """The batch-mode backend of an API teacher, its ledger at `ledger` (synth/backends/batch.py)."""
    return _load(BATCH_BACKENDS, teacher.backend)(teacher, ledger, wait=wait)


def make_backend(teacher: Any) -> Backend:
    """The teacher's backend, started: `teacher.backend`'s class, or for a vllm teacher with
    `teacher.vllm.ray.workers > 0` its engines on a Ray cluster (the same identity)."""
    if teacher.backend == "vllm" and teacher.vllm.ray.workers > 0:
        from synth.backends.ray_workers import RayBackend

        return RayBackend(teacher)
    return load_backend_class(teacher.backend)(teacher)


__all__ = ["BACKENDS", "BATCH_BACKENDS", "Backend", "Completion", "Failure", "load_backend_class", "make_backend",
           "make_batch_backend"]
