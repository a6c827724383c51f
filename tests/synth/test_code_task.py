"""The CPU coding task (synth.examples.code): its tests tell the right code from the wrong
code the teacher is taught to write, its repair turns are what the `repair:` section sends,
and its sets do not overlap."""

import json
import random
import re
import subprocess
import sys
from collections import Counter

import pytest

from synth.codeexec import extract_code, run_tests
from synth.examples import code

from conftest import HANG_S, REPO, read_jsonl


def test_every_seeds_tests_pass_the_right_code_and_fail_the_wrong_code_in_the_sandbox():
    rng = random.Random(3)
    seeds = code.sample_seeds(rng, 16, set())
    assert {s["kind"] for s in seeds} >= {"max", "min", "rminus", "plus"}
    for seed in seeds:
        right = code.answer(seed["name"], code.KINDS[seed["kind"]][1].format(k=seed["k"]))
        wrong = code.answer(seed["name"], code.KINDS[seed["kind"]][2].format(k=seed["k"], k1=seed["k"] + 1))
        assert run_tests(extract_code(right), seed["tests"]).passed == 3, seed
        report = run_tests(extract_code(wrong), seed["tests"])
        assert report.passed < 3, seed


def test_a_repair_turn_in_the_teachers_examples_is_what_the_repair_section_sends():
    rng = random.Random(1)
    seed = next(s for s in code.sample_seeds(rng, 50, set()) if s["kind"] == "rminus")
    wrong = code.KINDS["rminus"][2].format(k=seed["k"])
    report = run_tests(extract_code(code.answer(seed["name"], wrong)), seed["tests"])
    test, error = report.failures[0]
    message = code.repair_message(seed, wrong)
    # synth.conversation renders the packaged code/repair.j2 with these (its _repaired)
    assert f"fails {report.total - report.passed} of {report.total} tests" in message
    assert f"\n\n{test.strip()}\n\n" in message
    assert "\n".join(error.strip().splitlines()[-6:]) in message
    assert code.repair_message(seed, code.KINDS["rminus"][1].format(k=seed["k"])) is None  # right code: no repair


def test_prepare_writes_disjoint_sets_and_a_teacher_with_the_faults_it_should_have(tmp_path):
    paths = code.prepare(tmp_path, prompts=300, teacher_examples=3000)
    prompts = [json.loads(line) for line in paths["prompts"].read_text().splitlines()]
    examples = [json.loads(line) for line in paths["teacher_train"].read_text().splitlines()]
    assert len(prompts) == 300 and len(examples) == 3000
    assert set(prompts[0]) == {"name", "spec", "tests"}
    asked = {code.INSTRUCTION.format(**p) for p in prompts}
    taught = {e["messages"][0]["content"] for e in examples}
    assert not asked & taught and len(taught) == 3000
    repaired = {kind: [0, 0] for kind in code.KINDS}
    kind_of = {spec: kind for kind, (spec, *_) in code.KINDS.items()}
    for e in examples:
        kind = kind_of[re.sub(r"\d+", "{k}", e["messages"][0]["content"].split(" that ", 1)[1].removesuffix("."))]
        repaired[kind][0] += len(e["messages"]) == 4
        repaired[kind][1] += 1
    rates = {kind: wrong / total for kind, (wrong, total) in repaired.items()}
    assert all(0.5 < rates[k] < 0.7 for k in ("max", "min", "rminus")), rates
    assert all(0.05 < rates[k] < 0.15 for k in ("plus", "minus", "times")), rates
    assert (tmp_path / "teacher-init" / "config.json").exists() and (tmp_path / "student-init" / "config.json").exists()


# The tiny random model cannot write code: a regex makes every answer the one-line function
# the specifications ask for, with a digit the model samples, so about a third pass.
ONE_LINE = r"```python\ndef f\(x\):\n    return x \+ [1-3]\n```"


@pytest.mark.slow
def test_the_cpu_code_recipe_runs_the_loop_with_repair_and_scores_code_by_running_it(tmp_path, tiny_model):
    """prompts/code/cpu.yaml as its header runs it (the docs test resolves those commands here:
    training the demo's teacher takes minutes), the tiny model as teacher and student: every
    answer's code runs with its seed's tests in the sandbox, a failing one goes back with its
    failing test (repair), code_exec keeps the conversations that end passing, the student
    trains on their last answers, and the eval scores teacher and student by running code."""
    seeds = tmp_path / "specs.jsonl"
    seeds.write_text("".join(json.dumps({"name": "f", "spec": f"returns x plus 2 (case {i})",
                                         "tests": ["assert f(0) == 2", "assert f(5) == 7", "assert f(-3) == -1"]}) + "\n"
                             for i in range(30)))
    out = tmp_path / "out"
    sets = [f"seeds.path={seeds}", f"teacher.model={tiny_model}", f"output.dir={out}",
            f"teacher.vllm.structured_outputs={{regex: '{ONE_LINE}'}}", "teacher.vllm.max_model_len=512",
            "repair={rounds: 1, limits: {cpu_s: 5}}", "sft.repairs=final", "curate.eval_fraction=0.3",
            "curate.split_threshold=0.99",  # the specifications differ by their case number only
            f"sft.model={tiny_model}", "sft.max_steps=2", "sft.batch_size=4", "sft.max_length=512",
            "sft.eval_limit=6", "sft.eval_max_new_tokens=24", "sft.eval_engine=transformers"]
    res = subprocess.run([sys.executable, "-m", "synth.cli", "run", str(REPO / "prompts" / "code" / "cpu.yaml"),
                          "--no-progress", *(a for s in sets for a in ("--set", s))],
                         cwd=REPO, capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-3000:]
    raw = read_jsonl(out / "raw.jsonl")
    assert len(raw) == 30
    ended = Counter(r["conversation"]["ended"] for r in raw)
    assert ended["tests pass"] and sum(ended.values()) == 30
    repaired = [r for r in raw if r["conversation"]["turns"] == 2 and r["conversation"]["ended"] == "tests pass"]
    rejected = read_jsonl(out / "rejected.jsonl")
    kept = read_jsonl(out / "train.jsonl") + read_jsonl(out / "eval.jsonl")
    assert len(kept) == ended["tests pass"] and len(rejected) == ended["rounds"]
    assert all(r["rejection"]["filter"] == "code_exec" and "assert f(" in r["rejection"]["reason"] for r in rejected)
    if repaired:  # trained on the last answer only (sft.repairs: final)
        assert any(len(r["messages"]) == 4 for r in kept)
    # The check ran each answer's code with its seed's tests: every held-out teacher answer
    # passes (the split is made after code_exec kept them), the untrained student's text none.
    report = json.loads((out / "student" / "eval_report.json").read_text())
    assert report["examples"] == len(read_jsonl(out / "eval.jsonl")) > 0
    assert report["verifier"]["teacher"] == 1.0 and report["verifier"]["student_before"] == 0.0, report["verifier"]
    assert 0.0 <= report["verifier"]["student_after"] <= 1.0
