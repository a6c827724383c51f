"""Benchmark: `synth generate` with one Ray worker vs the in-process engine, same requests.

Both sides run the whole `run_generate` (planning, the raw log) on the same recipe into fresh
output dirs; the Ray side with `teacher.vllm.ray.workers: 1` on a private local cluster
(127.0.0.1), its worker reserving every CPU of the machine as the in-process engine uses
them. Engine and cluster start-up are reported apart; rounds alternate and the median of
each side is reported. The only engine alive during a round is the one measured.

    python bench/ray_overhead.py [--model DIR] [--requests 1024] [--max-tokens 128] [--rounds 3] [--gpu]

Last line: RESULT ray_overhead ratio=<Ray output tok/s / in-process output tok/s>
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="teacher model dir or HF id (default: build the tiny model)")
    ap.add_argument("--requests", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gpu", action="store_true", help="GPU settings (bf16, one GPU per worker) instead of CPU ones")
    args = ap.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a loopback-only private cluster
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import yaml

    from synth.backends.ray_workers import RayBackend
    from synth.backends.vllm_engine import VllmBackend
    from synth.config import load_recipe
    from synth.generate import run_generate
    from synth.plan import resolve

    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    model = args.model
    if model is None:
        from synth.tiny_model import build_tiny_model

        model = str(build_tiny_model(work / "tiny-model"))
    seeds = work / "seeds.jsonl"
    seeds.write_text("".join(f'{{"question": "Tell me about item number {i}."}}\n' for i in range(args.requests)))
    (work / "answer.j2").write_text("{{ question }}")
    cpus = float(os.cpu_count() or 1)
    recipe_path = work / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump({
        "seeds": {"path": str(seeds)},
        "template": {"path": str(work / "answer.j2")},
        "teacher": {"backend": "vllm", "model": model, "vllm": {
            **({"dtype": "bfloat16"} if args.gpu else {"dtype": "float32", "enforce_eager": True}), "max_model_len": 1024,
            "ray": {"workers": 0, "cpus_per_worker": 1.0 if args.gpu else cpus}}},
        "sampling": {"n": 1, "temperature": 0.8, "top_p": 0.95, "max_tokens": args.max_tokens, "seed": 0},
        "output": {"dir": str(work / "out")},
    }))
    local = load_recipe(recipe_path)
    on_ray = load_recipe(recipe_path, ["teacher.vllm.ray.workers=1"])

    def one_round(recipe, backend, name: str) -> float:
        recipe.output.dir = str(work / name)
        t = time.perf_counter()
        manifest = run_generate(resolve(recipe, backend.identity()), backend, progress=False)
        return manifest["tokens"]["completion_this_run"] / (time.perf_counter() - t)

    speeds: dict[str, list[float]] = {"in-process": [], "ray": []}
    for i in range(args.rounds):
        # One engine at a time: the in-process engine is closed before the Ray worker starts.
        backend = VllmBackend(local.teacher)
        if i == 0:
            print(f"in-process engine start-up {backend.startup_s:.1f} s (excluded)", flush=True)
            one_round(local, backend, "warm-local")
        speeds["in-process"].append(one_round(local, backend, f"local-{i}"))
        backend.close()
        del backend
        t = time.perf_counter()
        backend = RayBackend(on_ray.teacher)
        if i == 0:
            print(f"Ray cluster + worker start-up {time.perf_counter() - t:.1f} s (excluded)", flush=True)
            one_round(on_ray, backend, "warm-ray")
        speeds["ray"].append(one_round(on_ray, backend, f"ray-{i}"))
        backend.close()
        print(f"round {i}: in-process {speeds['in-process'][-1]:,.0f} tok/s, one Ray worker {speeds['ray'][-1]:,.0f} tok/s",
              flush=True)
    local_s, ray_s = statistics.median(speeds["in-process"]), statistics.median(speeds["ray"])
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, {args.requests} requests x {args.max_tokens} tokens, model {model}")
    print(f"in-process engine: {local_s:,.0f} output tok/s (median of {args.rounds})")
    print(f"one Ray worker:    {ray_s:,.0f} output tok/s (median of {args.rounds})")
    print(f"RESULT ray_overhead ratio={ray_s / local_s:.3f}")


if __name__ == "__main__":
    main()
