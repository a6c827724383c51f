"""The CPU coding task (synth.examples.code): its tests tell the right code from the wrong
code the teacher is taught to write, its repair turns are what the `repair:` section sends,
and its sets do not overlap."""

import json
import random
import re

from synth.codeexec import extract_code, run_tests
from synth.examples import code


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
