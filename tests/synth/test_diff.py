"""Regenerate with a second (different) tiny teacher into a new version; synth diff compares."""

import json
import statistics
import subprocess
import sys

import pytest

from synth.config import load_recipe
from synth.generate import run_generate
from synth.tiny_model import build_tiny_model

from conftest import make_recipe, read_jsonl

pytestmark = pytest.mark.slow


def test_new_teacher_writes_a_new_version_and_diff_is_right(tmp_path, tiny_model, vllm_backend):
    seeds = [{"question": f"Describe topic {i} in one line."} for i in range(8)]
    path = make_recipe(tmp_path, tiny_model, seeds=seeds, sampling={"n": 1, "max_tokens": 12})
    run_generate(load_recipe(path), vllm_backend, progress=False)  # version A: the first teacher
    a_before = (tmp_path / "out" / "raw.jsonl").read_bytes()

    teacher_b = build_tiny_model(tmp_path / "teacher-b", seed=1)  # other weights: other answers
    res = subprocess.run([sys.executable, "-m", "synth.cli", "generate", str(path), "--no-progress",
                          "--set", f"teacher.model={teacher_b}", "--set", f"output.dir={tmp_path / 'out-b'}"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "out" / "raw.jsonl").read_bytes() == a_before, "the old version is never written over"

    res = subprocess.run([sys.executable, "-m", "synth.cli", "diff", str(tmp_path / "out"), str(tmp_path / "out-b")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "out-b" / "diff.json").read_text())
    a, b = read_jsonl(tmp_path / "out" / "raw.jsonl"), read_jsonl(tmp_path / "out-b" / "raw.jsonl")
    assert report["prompts_in_both"] == 8 and report["only_in_a"] == report["only_in_b"] == 0
    assert report["a"]["teacher"]["fingerprint"] != report["b"]["teacher"]["fingerprint"]
    assert report["a"]["answer_chars_mean"] == round(statistics.mean(len(r["messages"][-1]["content"]) for r in a), 1)
    assert report["b"]["answer_chars_mean"] == round(statistics.mean(len(r["messages"][-1]["content"]) for r in b), 1)
    sims = [c["similarity"] for c in report["changed_most"]]
    assert sims == sorted(sims) and report["mean_answer_similarity"] < 1.0
    assert "# Dataset diff" in (tmp_path / "out-b" / "diff.md").read_text()
