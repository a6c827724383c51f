"""What identifies a model or a data file in request ids and stage keys.

A local model directory is known by a fingerprint of its files (new weights change it, in
practice always, without reading gigabytes), so the same directory named by another path is
the same model, and retrained weights in the same place are not. A hub model is known by
its id and revision.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from synth.runtime import file_sha256

_SMALL_FILE = 4 << 20  # files up to this size are hashed whole
_SAMPLES = 16  # larger files: this many 64 KiB blocks spread over the file, plus the tail
_BLOCK = 1 << 16


def looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or model.count("/") > 1 or model.endswith("/")


def fingerprint_dir(path: Path) -> str:
    """A fingerprint of a local directory: small files (config, tokenizer, chat template)
    whole, large ones (weights) by size and 17 sampled 64 KiB blocks."""
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if any(part.startswith(".") for part in Path(rel).parts):
            continue  # caches and lock files, not the model
        size = file.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        with file.open("rb") as fh:
            if size <= _SMALL_FILE:
                h.update(fh.read())
            else:
                for i in range(_SAMPLES):
                    fh.seek((size - _BLOCK) * i // _SAMPLES)
                    h.update(fh.read(_BLOCK))
                fh.seek(size - _BLOCK)
                h.update(fh.read(_BLOCK))
    return h.hexdigest()[:16]


def local_model(model: str, key: str) -> str:
    """The model to load: a local model directory (resolved, checked to hold a config.json)
    or an HF id as given. `key` (e.g. teacher.model) names the recipe key in errors."""
    path = Path(model).expanduser()
    if path.exists():
        if not (path.is_dir() and (path / "config.json").is_file()):
            raise ValueError(
                f"{key}: {path} is not a model directory (no config.json); "
                "give a directory saved with save_pretrained, or an HF model id"
            )
        return str(path.resolve())
    if looks_like_path(model):
        raise ValueError(
            f"{key}: {model} does not exist; give an existing model directory or an HF id such as Qwen/Qwen2.5-7B-Instruct"
        )
    return model


def resolve_model(model: str, key: str) -> tuple[str, str | None]:
    """(model to load, fingerprint) for a local directory or an HF id (fingerprint None)."""
    found = local_model(model, key)
    return found, fingerprint_dir(Path(found)) if Path(model).expanduser().exists() else None


def model_identity(model: str, revision: str | None = None) -> dict[str, Any]:
    """A model as a stage-key input: its fingerprint when it is a local directory (wherever
    it is), else its name and revision. Never raises: a missing model changes the key."""
    path = Path(model).expanduser()
    if path.is_dir():
        return {"fingerprint": fingerprint_dir(path)}
    return {"model": model, "revision": revision}


def path_digest(path: Path) -> str | None:
    """A file's SHA-256, a directory's fingerprint, or None when it does not exist."""
    if path.is_dir():
        return fingerprint_dir(path)
    return file_sha256(path)
