"""A real `synth generate` process killed with SIGKILL mid-run, then resumed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from synth.config import load_recipe
from synth.generate import plan_requests, run_generate

from conftest import make_recipe, read_jsonl

pytestmark = pytest.mark.slow

SYNTH = [sys.executable, "-m", "synth.cli"]


def _lines(path: Path) -> int:
    try:
        with path.open("rb") as fh:
            return sum(1 for _ in fh)
    except FileNotFoundError:
        return 0


def _wait_for_lines(proc: subprocess.Popen, path: Path, n: int, timeout: float) -> int:
    """Poll the raw log until it holds n lines (the run is mid-way); fail if the run ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = _lines(path)
        if count >= n:
            return count
        if proc.poll() is not None:
            pytest.fail(f"synth generate exited ({proc.returncode}) before writing {n} records")
        time.sleep(0.02)  # polling interval of a condition wait, not a synchronisation sleep
    pytest.fail(f"no {n} records in {path} within {timeout} s")


def _vllm_processes_since(t0: float) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["name", "cmdline", "create_time"]):
        text = " ".join([p.info["name"] or "", *(p.info["cmdline"] or [])])
        if "VLLM" in text and (p.info["create_time"] or 0) >= t0 - 1:
            found.append(p)
    return found


def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path, tiny_model, vllm_backend):
    seeds = [{"question": f"Write about topic number {i}, please."} for i in range(600)]
    recipe_path = make_recipe(tmp_path, tiny_model, seeds=seeds, sampling={"n": 2, "max_tokens": 64})
    recipe = load_recipe(recipe_path)
    planned = {r.id for r in plan_requests(recipe).requests}
    assert len(planned) == 1200
    raw = tmp_path / "out" / "raw.jsonl"

    t0 = time.time()
    proc = subprocess.Popen(
        [*SYNTH, "generate", str(recipe_path), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _wait_for_lines(proc, raw, 100, timeout=240)
        tree = psutil.Process(proc.pid).children(recursive=True)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    complete = raw.read_bytes().count(b"\n")  # a torn last line has no newline
    assert 100 <= complete < 1200, "the kill must land mid-run"

    # No engine outlives the killed run: neither its children nor any VLLM:: process.
    gone, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, f"processes outlived the killed run: {alive}"
    assert not _vllm_processes_since(t0)

    # Resume with the same command: only the rest is sent.
    res = subprocess.run([*SYNTH, "generate", str(recipe_path), "--no-progress"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "kept 1200" in res.stdout
    records = read_jsonl(raw)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == 1200, "no duplicates"
    assert set(ids) == planned, "no loss"
    assert f"({1200 - complete} new, {complete} from earlier runs)" in res.stdout

    # The same ids as an uninterrupted run of the same recipe.
    fresh = load_recipe(recipe_path, [f"output.dir={tmp_path / 'fresh'}"])
    run_generate(fresh, vllm_backend, progress=False)
    assert {r["id"] for r in read_jsonl(tmp_path / "fresh" / "raw.jsonl")} == set(ids)
