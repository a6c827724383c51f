"""Self-repair of code answers (the recipe's `repair` section) with the real in-process engine:
each answer's tests run in the sandbox, a failure goes back to the teacher as the next user
turn, until the tests pass or the rounds run out; every teacher turn is cached, so a rerun pays
for none again; training can take the whole trajectory or only the final answer."""

import re
from collections import Counter

import pytest

from synth.generate import run_generate
from synth.plan import load_plan

from conftest import make_recipe, read_jsonl

# The tiny random model cannot write code; a regex makes every answer one line of Python,
# `x = <digit>`, so whether the tests pass depends on the digit it samples. The regex lets the
# model spell the answer with any of the tokenizer's pieces (one character each at worst: 20
# tokens), so max_tokens leaves room for the longest spelling: a cut answer has no code.
CODE = r"```python\nx = [0-9]\n```"
# Tests one digit passes, one that nine pass, and one that every answer passes, so the passing
# path is taken whatever digits the model favours (on a CPU its numerics, so its samples, follow
# the batch shapes, which follow timing).
TESTS = ["assert x == 3", "assert x == 5", "assert x == 7", "assert x == 9", "assert x != 9", "assert x >= 0"]


def _passes(test: str, answer: str) -> bool:
    """What the test says of an answer `x = <digit>`, computed here."""
    digit = int(re.fullmatch(r"```python\nx = ([0-9])\n```", answer.strip()).group(1))
    return eval(test.removeprefix("assert "), {"x": digit})


def _recipe(tmp_path, tiny_model, rounds=3, out="out"):
    seeds = [{"question": f"Make this pass: {t}", "tests": [t]} for t in TESTS]
    return make_recipe(tmp_path, tiny_model, seeds=seeds, out=out, sampling={"n": 1, "max_tokens": 32, "temperature": 1.0},
                       vllm={"structured_outputs": {"regex": CODE}},
                       extra={"repair": {"rounds": rounds, "limits": {"cpu_s": 2, "wall_s": 5}}})


@pytest.mark.slow
def test_failing_code_goes_back_with_its_failure_until_the_tests_pass_or_the_rounds_run_out(tmp_path, tiny_model, vllm_backend,
                                                                                          monkeypatch):
    plan = load_plan(_recipe(tmp_path, tiny_model))
    # the session's engine, constrained as the recipe says (the regex is applied per request)
    monkeypatch.setattr(vllm_backend, "cfg", plan.recipe.teacher)
    monkeypatch.setattr(vllm_backend, "identity", lambda: dict(plan.teacher))
    manifest = run_generate(plan, backend=vllm_backend, progress=False)
    records = read_jsonl(plan.layout.raw)
    assert len(records) == 6
    for r in records:
        conv, want = r["conversation"], r["seed"]["fields"]["tests"][0]
        answers = [m for m in r["messages"] if m["role"] == "assistant"]
        repairs = [m["content"] for m in r["messages"] if m["role"] == "user"][1:]
        assert conv["turns"] == len(answers) == len(conv["turn_ids"]) == len(repairs) + 1 <= 4
        assert all(want in text and "Fix the code" in text and "AssertionError" in text for text in repairs), repairs
        verdicts = [_passes(want, a["content"]) for a in answers]  # each answer whole, its code checked here
        if conv["ended"] == "tests pass":
            assert verdicts[-1] and conv["tests"] == {"passed": 1, "total": 1}
            assert not any(verdicts[:-1])  # it stopped at the first passing answer
        else:
            assert not any(verdicts)
            assert conv["ended"] == "rounds" and conv["turns"] == 4 and conv["tests"] == {"passed": 0, "total": 1}
    assert Counter(r["conversation"]["ended"] for r in records)["tests pass"] >= 1, "some answer passed"
    assert any(r["conversation"]["turns"] > 1 for r in records), "some answer was sent back"
    assert sum(r["conversation"]["turns"] for r in records) == manifest["conversations"]["turns_sent"]
    # A rerun from scratch (the raw log gone, as after a kill before it was written) pays for no turn again.
    plan.layout.raw.unlink()
    again = run_generate(load_plan(_recipe(tmp_path, tiny_model)), backend=vllm_backend, progress=False)
    assert again["conversations"]["turns_sent"] == 0
    assert {r["id"]: r["messages"] for r in read_jsonl(plan.layout.raw)} == {r["id"]: r["messages"] for r in records}
    # Other rounds: other records (the setting is part of their id), the cached first turns reused.
    fewer = run_generate(load_plan(_recipe(tmp_path, tiny_model, rounds=1, out="out1")), backend=vllm_backend, progress=False)
    assert fewer["conversations"]["turns_sent"] == 0 or fewer["conversations"]["turns_sent"] < manifest["conversations"]["turns_sent"]


def test_training_takes_the_trajectory_or_only_the_final_answer(tmp_path):
    import json

    from sft.data import read_conversations

    trajectory = [{"role": "user", "content": "Set x to 3."}, {"role": "assistant", "content": "```python\nx = 1\n```"},
                  {"role": "user", "content": "Your code fails ... Fix the code."}, {"role": "assistant", "content": "```python\nx = 3\n```"}]
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (
        {"messages": trajectory, "conversation": {"turns": 2, "ended": "tests pass", "tests": {"passed": 1, "total": 1}}},
        {"messages": plain})) + "\n")
    assert [list(c) for c in read_conversations(path)] == [trajectory, plain]
    assert [list(c) for c in read_conversations(path, repairs="final")] == [[trajectory[0], trajectory[-1]], plain]


def test_repair_options_are_checked(tmp_path, tiny_model):
    from synth.config import load_recipe

    path = _recipe(tmp_path, tiny_model)
    with pytest.raises(ValueError, match=r"repair.rounds: must be at least 1"):
        load_recipe(path, ["repair.rounds=0"])
    with pytest.raises(ValueError, match=r"repair: not with conversation.turns > 1 or tools"):
        load_recipe(path, ["conversation.turns=2"])
    with pytest.raises(ValueError, match=r"sampling.logprobs: not captured with repair"):
        load_recipe(path, ["sampling.logprobs=5"])
