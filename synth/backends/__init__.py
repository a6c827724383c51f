"""Teacher backends: one module each, chosen by name from BACKENDS.

The dict maps a backend name to "module:Class"; the module is imported only when the
backend is used, so naming a backend never pulls in vllm or torch.
"""

from __future__ import annotations

import importlib

from synth.backends.base import Backend, Completion, Failure

BACKENDS: dict[str, str] = {
    "vllm": "synth.backends.vllm_engine:VllmBackend",
    "openai": "synth.backends.openai_api:OpenAIBackend",
}


def load_backend_class(name: str) -> type:
    """The backend class registered under `name` (imports its module now)."""
    if name not in BACKENDS:
        raise ValueError(f"teacher.backend: unknown '{name}'; valid backends: {', '.join(sorted(BACKENDS))}")
    module_name, cls_name = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module_name), cls_name)


__all__ = ["BACKENDS", "Backend", "Completion", "Failure", "load_backend_class"]
