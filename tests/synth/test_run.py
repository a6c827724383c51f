"""synth run: the whole loop end to end on CPU, and a rerun that skips what is done."""

import json
import subprocess
import sys

import pytest
import yaml

from conftest import ENGINE, REPO, SEED_TASKS

pytestmark = pytest.mark.slow


def test_whole_loop_then_rerun_skips_done_work(tmp_path, tiny_model):
    recipe = {
        "name": "loop",
        "seeds": {"path": str(SEED_TASKS), "limit": 40},
        "template": {"path": str(REPO / "prompts" / "demo" / "answer.j2")},
        "teacher": {"backend": "vllm", "model": str(tiny_model), "vllm": ENGINE},
        "sampling": {"n": 1, "max_tokens": 16, "seed": 1},
        "output": {"dir": str(tmp_path / "out")},
        "curate": {"filters": ["empty", {"name": "exact_dedup", "field": "both"}], "eval_fraction": 0.25},
        "card": {"teacher_terms": "test model, no terms"},
        "sft": {"model": str(tiny_model), "max_steps": 4, "batch_size": 4, "logging_steps": 1, "save_steps": 2,
                "max_length": 512, "eval_limit": 4, "eval_max_new_tokens": 8, "eval_engine": "transformers"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cmd = [sys.executable, "-m", "synth.cli", "run", str(path), "--no-progress"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert [(s["stage"], s["status"]) for s in report["stages"]] == [
        ("generate", "done"), ("curate", "done"), ("train", "done"), ("eval", "done")]
    for name in ("raw.jsonl", "train.jsonl", "eval.jsonl", "README.md", "lengths.png", "funnel.png", "report.md",
                 "student/adapter/adapter_model.safetensors", "student/eval_report.md", "student/loss.png"):
        assert (out / name).exists(), name
    card = (out / "README.md").read_text()
    assert "test model, no terms" in card and "| requests | 40 |" in card and "load_dataset" in card

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert [(s["stage"], s["status"]) for s in report["stages"]] == [
        ("generate", "done"), ("curate", "done"), ("train", "skipped"), ("eval", "skipped")]
    assert "0 new" in report["stages"][0]["summary"]

    # Changing the data the student learns from retrains (resuming from its checkpoints).
    recipe["curate"]["filters"].append({"name": "length", "min_chars": 5})
    path.write_text(yaml.safe_dump(recipe))
    third = subprocess.run(cmd + ["--set", "sft.max_steps=6"], capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["stages"][2]["status"] == "done" and report["stages"][3]["status"] == "done"
