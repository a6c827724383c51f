"""A real `synth generate` process killed with SIGKILL mid-run, then resumed."""

import subprocess
import sys

import pytest

from synth.plan import load_plan

from conftest import HANG_S, make_recipe, read_jsonl
from killing import lines, sigkill_when, tagged

pytestmark = pytest.mark.slow

SYNTH = [sys.executable, "-m", "synth.cli"]


def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path, tiny_model):
    seeds = [{"question": f"Write about topic number {i}, please."} for i in range(300)]
    recipe_path = make_recipe(tmp_path, tiny_model, seeds=seeds, sampling={"n": 2, "max_tokens": 64})
    plan = load_plan(recipe_path)
    planned = {r.id for r in plan.requests.requests}
    assert len(planned) == 600
    raw = tmp_path / "out" / "raw.jsonl"

    # SIGKILL mid-run; no engine outlives it: neither its children (checked by sigkill_when)
    # nor any process that carries the run's tag (re-parented ones too; not another test's).
    tag = sigkill_when([*SYNTH, "generate", str(recipe_path), "--no-progress"], lambda: lines(raw) >= 100, HANG_S)
    complete = lines(raw)  # a torn last line has no newline
    assert 100 <= complete < 600, "the kill must land mid-run"
    assert not tagged(tag)

    # Resume with the same command: only the rest is sent.
    res = subprocess.run([*SYNTH, "generate", str(recipe_path), "--no-progress"], capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "kept 600" in res.stdout
    records = read_jsonl(raw)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == 600, "no duplicates"
    assert set(ids) == planned, "no loss"
    assert f"({600 - complete} new, {complete} from earlier runs)" in res.stdout

