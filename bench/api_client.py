"""Benchmark: synth's openai backend vs a plain asyncio.gather over AsyncOpenAI.

Same requests, same concurrency, one process, alternating rounds. Two servers on
127.0.0.1, each in its own process:
- an instant OpenAI-compatible server (bench/instant_server.py): the client is the bottleneck;
- a real vLLM OpenAI server on the tiny local model (skip with --no-vllm).

The synth side is a whole `run_generate`, with the rpm/tpm limiter on (limits set far
above what is reached), retries armed and the fsynced raw log written. The plain side is
`asyncio.gather` over `client.chat.completions.create` with the openai client's default
transport, bounded by a semaphore. Client CPU is this process's CPU time per request.
Needs openai and aiohttp (`pip install 'stillhouse[api]'`), and vllm for the second server.

    python bench/api_client.py [--requests 2000] [--concurrency 64] [--no-vllm]

Last line: RESULT api_client ratio=<synth/plain req/s> cpu_ms_per_req=<synth, instant server>
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], port: int, log: Path, timeout: float) -> subprocess.Popen:
    fh = log.open("wb")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.3)
    sys.exit(f"server not up in {timeout} s: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def plain_round(base_url: str, model: str, requests, concurrency: int) -> tuple[float, float]:
    from openai import AsyncOpenAI

    async def run() -> None:
        client = AsyncOpenAI(base_url=base_url, api_key="EMPTY")
        sem = asyncio.Semaphore(concurrency)

        async def one(req) -> str:
            s = req.sampling
            async with sem:
                r = await client.chat.completions.create(
                    model=model, messages=req.messages, temperature=s["temperature"], top_p=s["top_p"],
                    max_tokens=s["max_tokens"], seed=s["seed"],
                )
                return r.choices[0].message.content

        await asyncio.gather(*(one(r) for r in requests))
        await client.close()

    t, c = time.perf_counter(), time.process_time()
    asyncio.run(run())
    return len(requests) / (time.perf_counter() - t), (time.process_time() - c) * 1000 / len(requests)


def synth_round(recipe, out_dir: Path, n: int) -> tuple[float, float]:
    from synth.generate import run_generate
    from synth.plan import resolve

    recipe.output.dir = str(out_dir)
    t, c = time.perf_counter(), time.process_time()
    manifest = run_generate(resolve(recipe), progress=False)
    assert manifest["counts"]["kept"] == n, manifest["counts"]
    return n / (time.perf_counter() - t), (time.process_time() - c) * 1000 / n


def compare(label: str, base_url: str, model: str, work: Path, n: int, concurrency: int, rounds: int, max_tokens: int):
    import yaml

    from synth.config import load_recipe
    from synth.plan import resolve

    seeds = work / f"seeds-{label}.txt"
    seeds.write_text("".join(f"Question {i}: explain item {i} of the list in one line.\n" for i in range(n)))
    recipe_path = work / f"recipe-{label}.yaml"
    recipe_path.write_text(yaml.safe_dump({
        "seeds": {"path": str(seeds)},
        "template": {"path": str(REPO / "prompts/demo/plain.j2")},
        "teacher": {"backend": "openai", "model": model, "openai": {
            "base_url": base_url, "max_concurrency": concurrency, "rpm": 1e9, "tpm": 1e12,
        }},
        "sampling": {"n": 1, "temperature": 0.8, "top_p": 0.95, "max_tokens": max_tokens, "seed": 0},
        "output": {"dir": str(work / "unused")},
    }))
    recipe = load_recipe(recipe_path)
    requests = resolve(recipe).requests.requests
    plain_round(base_url, model, requests[:100], concurrency)  # warm-up both paths
    synth_round(recipe, work / f"warm-{label}", n)
    plain, synth = [], []
    for i in range(rounds):
        plain.append(plain_round(base_url, model, requests, concurrency))
        synth.append(synth_round(recipe, work / f"{label}-{i}", n))
        print(f"[{label}] round {i}: plain {plain[-1][0]:,.0f} req/s {plain[-1][1]:.2f} ms CPU/req | "
              f"synth {synth[-1][0]:,.0f} req/s {synth[-1][1]:.2f} ms CPU/req", flush=True)
    p_rps, p_cpu = statistics.median(x[0] for x in plain), statistics.median(x[1] for x in plain)
    s_rps, s_cpu = statistics.median(x[0] for x in synth), statistics.median(x[1] for x in synth)
    print(f"[{label}] plain AsyncOpenAI: {p_rps:,.0f} req/s, {p_cpu:.2f} ms CPU/req")
    print(f"[{label}] synth openai:      {s_rps:,.0f} req/s, {s_cpu:.2f} ms CPU/req  (ratio {s_rps / p_rps:.2f})")
    return s_rps / p_rps, s_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-vllm", action="store_true", help="skip the real vLLM server")
    ap.add_argument("--vllm-requests", type=int, default=400)
    args = ap.parse_args()
    try:
        import aiohttp  # noqa: F401
        import openai  # noqa: F401
    except ImportError as exc:
        sys.exit(f"bench/api_client.py needs openai and aiohttp ({exc}): pip install 'stillhouse[api]'")

    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}")
    port = _free_port()
    server = _start([sys.executable, str(REPO / "bench/instant_server.py"), str(port)], port, work / "instant.log", 30)
    try:
        ratio, cpu = compare("instant", f"http://127.0.0.1:{port}/v1", "bench", work, args.requests,
                             args.concurrency, args.rounds, 16)
    finally:
        _stop(server)

    if not args.no_vllm:
        try:
            import vllm  # noqa: F401
        except ImportError:
            sys.exit("the vLLM half needs vllm (pip install 'stillhouse[cpu]'), or pass --no-vllm")
        from synth.runtime import CPU_KV_CACHE_GIB
        from synth.tiny_model import build_tiny_model

        model = build_tiny_model(work / "tiny-model")
        port = _free_port()
        server = _start([
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
            "--enforce-eager", "--kv-cache-memory-bytes", str(int(CPU_KV_CACHE_GIB * 2**30)), "--max-model-len", "512",
            "--no-enable-chunked-prefill", "--disable-log-stats", "--uvicorn-log-level", "warning",
        ], port, work / "vllm.log", 300)
        try:
            compare("vllm", f"http://127.0.0.1:{port}/v1", "tiny", work, args.vllm_requests,
                    args.concurrency, args.rounds, 16)
        finally:
            _stop(server)
    print(f"RESULT api_client ratio={ratio:.2f} cpu_ms_per_req={cpu:.2f}")


if __name__ == "__main__":
    main()
