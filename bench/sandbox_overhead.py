"""Benchmark: what the sandbox costs per run of model-written code.

A trivial passing test (`def f(): return 1` with `assert f() == 1`) run N times three ways, in
one process, one after the other: a bare subprocess of the same Python on the same harness
files (no isolation, no limits), through `synth.sandbox.run` (bubblewrap namespaces, prlimit,
a fresh directory per run), and through `synth.codeexec.run_tests` (the sandbox plus the test
harness and its report). Prints runs per second of each and the ratio bare / sandboxed.

    python bench/sandbox_overhead.py [--runs 200]

Last line: RESULT sandbox_overhead bare_per_s=<..> sandbox_per_s=<..> run_tests_per_s=<..> ratio=<bare/sandbox>
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    from synth import sandbox
    from synth.codeexec import run_tests

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    code = "def f():\n    return 1\nassert f() == 1\nprint('ok')\n"
    print(f"isolation: {sandbox.isolation() or 'bubblewrap'}")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "main.py").write_text(code)
        started = time.perf_counter()
        for _ in range(args.runs):
            res = subprocess.run([sandbox.PYTHON, "main.py"], cwd=tmp, capture_output=True, text=True)
            assert res.stdout == "ok\n"
        bare = args.runs / (time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(args.runs):
        assert sandbox.run([sandbox.PYTHON, "main.py"], {"main.py": code}).stdout == "ok\n"
    boxed = args.runs / (time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(args.runs):
        assert run_tests("def f():\n    return 1\n", ["assert f() == 1"]).passed == 1
    tested = args.runs / (time.perf_counter() - started)
    print(f"bare subprocess {bare:.1f} runs/s, sandboxed {boxed:.1f} runs/s, with the test harness {tested:.1f} runs/s")
    print(f"RESULT sandbox_overhead bare_per_s={bare:.1f} sandbox_per_s={boxed:.1f} run_tests_per_s={tested:.1f} "
          f"ratio={bare / boxed:.2f}")


if __name__ == "__main__":
    main()
