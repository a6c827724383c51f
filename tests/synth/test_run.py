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


def test_expand_stage_and_a_kill_inside_training_resume(tmp_path, tiny_model):
    from killing import sigkill_when

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"question": json.loads(line)["instruction"]}) + "\n"
                             for line in SEED_TASKS.read_text().splitlines()[:30]))
    recipe = {
        "name": "loop2",
        "seeds": {"path": str(seeds)},
        "template": {"path": str(tmp_path / "plain.j2")},
        "teacher": {"backend": "vllm", "model": str(tiny_model), "vllm": ENGINE},
        "sampling": {"n": 1, "max_tokens": 16, "seed": 1},
        "output": {"dir": str(tmp_path / "out")},
        "expand": {"method": "self_instruct", "field": "question", "rounds": 1, "requests_per_round": 2, "max_tokens": 16},
        "curate": {"filters": ["empty"], "eval_fraction": 0.2},
        "sft": {"model": str(tiny_model), "max_steps": 200, "batch_size": 2, "logging_steps": 5, "save_steps": 5,
                "max_length": 256, "eval_limit": 2, "eval_max_new_tokens": 4, "eval_engine": "transformers"},
    }
    (tmp_path / "plain.j2").write_text("{{ question }}")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cmd = [sys.executable, "-m", "synth.cli", "run", str(path), "--no-progress"]
    ckpts = tmp_path / "out" / "student" / "checkpoints"
    # Kill once a checkpoint is complete (the Trainer writes trainer_state.json last).
    sigkill_when(cmd, lambda: ckpts.is_dir() and any((p / "trainer_state.json").exists() for p in ckpts.iterdir()), 300)

    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == ["expand", "generate", "curate", "train", "eval"]
    assert "(0 calls sent)" in stages["expand"]["summary"], "expansion calls come from expand_raw.jsonl"
    assert "0 new" in stages["generate"]["summary"]
    metrics = json.loads((tmp_path / "out" / "student" / "metrics.json").read_text())
    assert metrics["resumed_from"] and "checkpoint-" in metrics["resumed_from"] and metrics["global_step"] == 200
