"""synth run: the whole loop end to end on CPU, and a rerun that skips what is done."""

import json
import subprocess
import sys

import pytest
import yaml

from conftest import ENGINE, HANG_S, REPO, SEED_TASKS, read_jsonl

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
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_S)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "out"

    def stages():
        report = json.loads((out / "report.json").read_text())
        return {s["stage"]: s for s in report["stages"]}

    assert [(name, s["status"]) for name, s in stages().items()] == [
        ("generate", "done"), ("curate", "done"), ("card", "done"), ("train", "done"), ("eval", "done")]
    assert stages()["train"]["why"] == "no earlier run finished"
    for name in ("raw.jsonl", "train.jsonl", "eval.jsonl", "README.md", "lengths.png", "funnel.png", "report.md",
                 "student/adapter/adapter_model.safetensors", "student/eval_report.md", "student/loss.png"):
        assert (out / name).exists(), name
    card = (out / "README.md").read_text()
    assert "test model, no terms" in card and "| requests | 40 |" in card and "load_dataset" in card

    def run(*overrides):
        res = subprocess.run(cmd + [x for o in overrides for x in ("--set", o)], capture_output=True, text=True, timeout=HANG_S)
        assert res.returncode == 0, res.stderr[-3000:]
        return stages()

    # Nothing changed: every keyed stage is skipped, generation sends nothing.
    second = run()
    assert {n: s["status"] for n, s in second.items()} == {
        "generate": "done", "curate": "skipped", "card": "done", "train": "skipped", "eval": "skipped"}
    assert "0 new" in second["generate"]["summary"]
    assert second["train"]["why"] == "inputs unchanged since it last finished"

    # Only an eval key changed: the evaluation reruns, the training does not.
    third = run("sft.eval_limit=2")
    assert third["train"]["status"] == "skipped" and third["eval"]["status"] == "done"
    assert third["eval"]["why"] == "changed: sft.eval_limit"
    assert json.loads((out / "student" / "eval_report.json").read_text())["examples"] == 2

    # Another train/eval split: curation reruns, the student retrains from scratch (never from
    # the checkpoints of the old data) and is evaluated again.
    fourth = run("sft.eval_limit=2", "curate.eval_seed=1")
    assert fourth["curate"]["why"] == "changed: curate.eval_seed"
    assert fourth["train"]["status"] == "done" and fourth["train"]["why"] == "changed: train_data"
    assert "resumed" not in fourth["train"]["summary"]
    assert fourth["eval"]["status"] == "done" and "weights" in fourth["eval"]["why"]
    assert (out / "student" / "checkpoints.previous").is_dir()


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

    res = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == ["expand", "generate", "curate", "card", "train", "eval"]
    assert "(0 calls sent)" in stages["expand"]["summary"], "expansion calls come from expand_raw.jsonl"
    assert "0 new" in stages["generate"]["summary"]
    metrics = json.loads((tmp_path / "out" / "student" / "metrics.json").read_text())
    assert metrics["resumed_from"] and "checkpoint-" in metrics["resumed_from"] and metrics["global_step"] == 200

    # synth curate on its own sees the same requests as synth run: the expanded prompts too.
    raw = read_jsonl(tmp_path / "out" / "raw.jsonl")
    before = {n: (tmp_path / "out" / n).read_bytes() for n in ("train.jsonl", "eval.jsonl", "rejected.jsonl")}
    res = subprocess.run([sys.executable, "-m", "synth.cli", "curate", str(path), "--no-progress"],
                         capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-3000:]
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["records"] == len(raw) and stats["records_of_other_configs"] == 0
    assert {n: (tmp_path / "out" / n).read_bytes() for n in before} == before
