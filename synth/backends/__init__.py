"""Teacher backends: one module each, chosen by name from BACKENDS.

The dict maps a backend name (synth.config.BACKEND_NAMES) to "module:Class"; the module is
imported only when the backend is used, so naming a backend never pulls in vllm or torch.
`teacher_identity` is the one place a teacher's identity (what goes into request ids) is
computed; synth.plan calls it once per command and hands the result to the backend.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from synth.backends.base import Backend, Completion, Failure
from synth.config import BACKEND_NAMES, TeacherConfig

BACKENDS: dict[str, str] = {
    "vllm": "synth.backends.vllm_engine:VllmBackend",
    "openai": "synth.backends.openai_api:OpenAIBackend",
    "anthropic": "synth.backends.anthropic_api:AnthropicBackend",
}
assert tuple(BACKENDS) == BACKEND_NAMES, "synth.config.BACKEND_NAMES names every backend"

# Batch mode (teacher.<backend>.batch) of the API backends that have it.
BATCH_BACKENDS: dict[str, str] = {
    "openai": "synth.backends.openai_batch:OpenAIBatchBackend",
    "anthropic": "synth.backends.anthropic_api:AnthropicBatchBackend",
}
RAY_BACKEND = "synth.backends.ray_workers:RayBackend"  # vllm with teacher.vllm.ray.workers > 0


def _load(target: str) -> type:
    module_name, cls_name = target.split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def load_backend_class(name: str) -> type:
    """The backend class registered under `name` (imports its module now)."""
    if name not in BACKENDS:
        raise ValueError(f"teacher.backend: unknown '{name}'; valid backends: {', '.join(sorted(BACKENDS))}")
    return _load(BACKENDS[name])


def teacher_identity(teacher: TeacherConfig) -> dict[str, Any]:
    """What identifies a teacher (backend, model, revision, endpoint, a local model's weights
    fingerprint, ...), without starting it: the identity that goes into request ids."""
    return load_backend_class(teacher.backend).identity_for(teacher)


def make_backend(teacher: TeacherConfig, identity: dict[str, Any] | None = None) -> Backend:
    """The teacher's backend, started: `teacher.backend`'s class, or for a vllm teacher with
    `teacher.vllm.ray.workers > 0` its engines on a Ray cluster (the same identity).
    `identity`: the teacher's identity when the caller has it already."""
    if teacher.backend == "vllm" and teacher.vllm.ray.workers > 0:
        return _load(RAY_BACKEND)(teacher, identity=identity)
    return load_backend_class(teacher.backend)(teacher, identity=identity)


def make_batch_backend(teacher: TeacherConfig, ledger: Path, wait: bool = True,
                       identity: dict[str, Any] | None = None) -> Backend:
    """The batch-mode backend of an API teacher, its ledger at `ledger` (synth/backends/batch.py)."""
    return _load(BATCH_BACKENDS[teacher.backend])(teacher, ledger, wait=wait, identity=identity)


__all__ = ["BACKENDS", "BATCH_BACKENDS", "Backend", "Completion", "Failure", "load_backend_class", "make_backend",
           "make_batch_backend", "teacher_identity"]
