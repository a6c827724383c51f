"""llama.cpp's tools as `make setup` builds them (scripts/build_llama_cpp.sh), and the local
servers of an exported student: llama-server, and vLLM's for a compressed-tensors checkpoint.

`find_llama_cpp()` locates the converter, `llama-quantize` and `llama-server` (in
$STILLHOUSE_LLAMA_CPP, else .venv/llama.cpp); `LlamaServer` runs llama-server on a GGUF file
as a context manager: on 127.0.0.1 and a free port unless told otherwise, ready when its
/health answers, and stopped with its whole process group on exit (nothing is left behind).
`VllmServer` does the same with vLLM's OpenAI-compatible server.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

ENV = "STILLHOUSE_LLAMA_CPP"
LOOPBACK = "127.0.0.1"


class Crashed(RuntimeError):
    """The server died of SIGSEGV while loading (LlamaServer.__enter__ retries without repacking)."""


@dataclass(frozen=True)
class LlamaCpp:
    """A directory of llama.cpp tools: bin/llama-quantize, bin/llama-server, convert/."""

    root: Path

    quantize = property(lambda self: self.root / "bin" / "llama-quantize")
    server = property(lambda self: self.root / "bin" / "llama-server")
    convert_dir = property(lambda self: self.root / "convert")
    converter = property(lambda self: self.root / "convert" / "convert_hf_to_gguf.py")

    @property
    def version(self) -> str:
        """Where the tools came from (the first line of VERSION), e.g. 'llama.cpp 1 (abc123), from ...'."""
        path = self.root / "VERSION"
        return path.read_text(encoding="utf-8").splitlines()[0] if path.is_file() else "unknown"

    @property
    def build(self) -> str:
        """The llama.cpp build alone ('1 (abc123)'): what an export's key records."""
        return self.version.split(", from")[0].removeprefix("llama.cpp ")


def default_root() -> Path:
    """$STILLHOUSE_LLAMA_CPP, else llama.cpp/ in this Python's environment (.venv/llama.cpp)."""
    return Path(os.environ.get(ENV) or Path(sys.prefix) / "llama.cpp")


def find_llama_cpp(root: Path | None = None) -> LlamaCpp:
    """The llama.cpp tools, or an error saying how to get them."""
    tools = LlamaCpp(root or default_root())
    missing = [p.name for p in (tools.quantize, tools.server, tools.converter) if not p.is_file()]
    if missing:
        raise ValueError(
            f"llama.cpp: {', '.join(missing)} not found in {tools.root}. `make setup` builds them (scripts/"
            "build_llama_cpp.sh, about 7 minutes on 2 cores; `make llama-cpp` alone); or set "
            f"{ENV} to a directory holding bin/llama-server, bin/llama-quantize and convert/convert_hf_to_gguf.py")
    return tools


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """llama-server on one GGUF file, OpenAI-compatible at `base_url` (a context manager).

    `host` is 127.0.0.1 unless given; `parallel` slots serve that many requests at once
    (continuous batching); the server's output goes to `log` (else discarded)."""

    def __init__(self, gguf: Path, *, host: str = LOOPBACK, port: int | None = None, threads: int | None = None,
                 ctx_size: int = 2048, parallel: int = 1, alias: str = "student", log: Path | None = None,
                 tools: LlamaCpp | None = None, ready_timeout_s: float = 300.0):
        self.tools = tools or find_llama_cpp()
        if not Path(gguf).is_file():
            raise ValueError(f"llama-server: {gguf} does not exist; run `sft export RECIPE` first")
        self.gguf, self.host, self.alias, self.log = Path(gguf), host, alias, log
        self.port = port or free_port(host)
        self.ready_timeout_s = ready_timeout_s
        self.command = [str(self.tools.server), "-m", str(self.gguf), "--host", host, "--port", str(self.port),
                        "-c", str(ctx_size * parallel), "-np", str(parallel), "--jinja", "--no-webui", "-a", alias]
        if threads:
            self.command += ["-t", str(threads), "-tb", str(threads)]
        self.process: subprocess.Popen[bytes] | None = None
        self._log_fh: IO[bytes] | None = None

    label = "llama-server"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible endpoint (give it to openai.OpenAI(base_url=...))."""
        return f"http://{self.host}:{self.port}/v1"

    def __enter__(self) -> LlamaServer:
        self._log_fh = self.log.open("ab") if self.log else None
        try:
            self._start(self.command)
        except Crashed:
            if "--no-repack" in self.command:
                raise
            # llama.cpp repacks quantized weights for this CPU's fast kernels (AVX-512, AMX) at load;
            # on some tensor shapes that crashes the server (seen: q8_0 and q4_K_M of the demo's
            # hidden-128 student on an AMX Xeon). Served without repacking, the same file loads.
            logger.warning("llama-server crashed while loading %s (weight repacking for this CPU); started again "
                           "with --no-repack", self.gguf)
            self.command = [*self.command, "--no-repack"]
            self._start(self.command)
        return self

    def _start(self, command: list[str]) -> None:
        out = self._log_fh if self._log_fh else subprocess.DEVNULL
        logger.info("%s: %s", self.label, " ".join(command))
        self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.ready_timeout_s
        url = f"http://{self.host}:{self.port}/health"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = Crashed if self.process.returncode == -signal.SIGSEGV else RuntimeError
                raise error(f"{self.label} exited with code {self.process.returncode} while loading {self.gguf}"
                            f"{self._log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (our own server, http)
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.label}: not ready after {self.ready_timeout_s:.0f} s on {url}{self._log_tail()}")

    def _log_tail(self) -> str:
        if not self.log or not self.log.is_file():
            return ""
        tail = self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-8:]
        return "; its log (" + str(self.log) + ") ends:\n  " + "\n  ".join(tail)

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 10 s; waits for it."""
        p = self.process
        if p is not None and p.poll() is None:
            for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 30.0)):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log_fh:
            self._log_fh.close()
            self._log_fh = None


class VllmServer(LlamaServer):
    """vLLM's OpenAI-compatible server on a checkpoint directory (an exported compressed-tensors
    student), started and stopped as LlamaServer is: its own process group, /health polled,
    SIGTERM then SIGKILL to the group. bfloat16 (the quantized kernels' activation type), its
    KV cache sized explicitly on a CPU (`kv_cache_bytes`, as every vLLM engine of stillhouse;
    None: vLLM's own sizing, as on a GPU)."""

    label = "vLLM server"

    def __init__(self, checkpoint: Path, *, host: str = LOOPBACK, port: int | None = None, kv_cache_bytes: int | None = None,
                 max_model_len: int = 2048, alias: str = "student", log: Path | None = None,
                 enforce_eager: bool = False, ready_timeout_s: float = 1800.0):
        if not (Path(checkpoint) / "config.json").is_file():
            raise ValueError(f"vLLM server: {checkpoint} is not an exported checkpoint; run `sft export RECIPE` first")
        self.gguf, self.host, self.alias, self.log = Path(checkpoint), host, alias, log
        self.port = port or free_port(host)
        self.ready_timeout_s = ready_timeout_s
        self.command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint),
                        "--served-model-name", alias, "--host", host, "--port", str(self.port), "--dtype", "bfloat16",
                        "--max-model-len", str(max_model_len), "--disable-log-stats", "--uvicorn-log-level", "warning"]
        if kv_cache_bytes is not None:
            self.command += ["--kv-cache-memory-bytes", str(kv_cache_bytes)]
        if enforce_eager:  # on a CPU: no torch.compile of the model at start (minutes, for nothing at this size)
            self.command.append("--enforce-eager")
        self.process = None
        self._log_fh = None

    def __enter__(self) -> VllmServer:
        self._log_fh = self.log.open("ab") if self.log else None
        self._start(self.command)
        return self
