"""sft.eval_harness: lm-evaluation-harness on the student before and after training, for real."""

import json

import pytest
import yaml

from sft.config import HarnessOptions
from synth.configtools import from_dict

from conftest import REPO, make_recipe, write_jsonl

QUESTIONS = [f"What is {i} plus {i}?" for i in range(40)]

# Two local tasks: `learnt` asks for the answer the student is trained to give ("42"); `forgotten`
# asks for the answer its base was trained to give ("43"). The student must get better at the
# first and worse at the second: a regression the check reports.
TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices.split('|')}}}}"
doc_to_target: answer
target_delimiter: ""
metric_list:
  - metric: acc
metadata:
  version: 1.0
"""


def _tasks(folder):
    folder.mkdir()
    for name, right in (("learnt", "42"), ("forgotten", "43")):
        rows = []
        for i in range(30):
            choices = ["42", "43"] if i % 2 else ["43", "42"]
            rows.append({"question": f"What is {100 + i} plus {100 + i}?", "choices": "|".join(choices),
                         "answer": choices.index(right)})
        write_jsonl(folder / f"{name}.jsonl", rows)
        (folder / f"{name}.yaml").write_text(TASK.format(name=name, data=folder / f"{name}.jsonl"))


def _train(tmp, model, answer, sft):
    from sft.train import run_train
    from synth.plan import load_plan

    tmp.mkdir()
    out = tmp / "out"
    out.mkdir()
    write_jsonl(out / "train.jsonl", [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer}]}
                                      for q in QUESTIONS])
    recipe = make_recipe(tmp, model, extra={"sft": {
        "model": str(model), "max_steps": 30, "batch_size": 8, "learning_rate": 3e-3, "warmup_ratio": 0.0,
        "logging_steps": 10, "save_steps": 100, "max_length": 128, **sft}})
    run_train(load_plan(recipe), progress=False)
    return recipe


@pytest.fixture(scope="module")
def student(tmp_path_factory, tiny_model):
    """A base that answers "43" (the tiny model fully fine-tuned), and a LoRA student of it that answers "42"."""
    tmp = tmp_path_factory.mktemp("harness")
    _tasks(tmp / "tasks")
    _train(tmp / "base", tiny_model, "43", {"full_finetune": True})
    harness = {"tasks": ["learnt", "forgotten"], "include_path": str(tmp / "tasks")}
    recipe = _train(tmp / "lora", tmp / "base" / "out" / "student" / "model", "42",
                    {"learning_rate": 1e-2, "eval_harness": harness})
    return tmp / "lora", recipe


@pytest.mark.slow
def test_the_trained_student_gets_better_where_it_learnt_and_the_regression_is_reported(student, capsys):
    from sft.cli import main as sft_main
    from sft.harness import Harness
    from synth.plan import load_plan

    tmp, recipe = student
    result = Harness(load_plan(recipe), progress=False).run()
    report = result.details
    tasks = {t["task"]: t for t in report["tasks"]}
    assert tasks["learnt"]["before"] <= 0.7 and tasks["learnt"]["after"] == 1.0, tasks["learnt"]
    assert tasks["learnt"]["verdict"] == "better" and tasks["learnt"]["items"] == 30
    assert tasks["forgotten"]["after"] == 0.0 and tasks["forgotten"]["verdict"] == "worse", tasks["forgotten"]
    assert report["regressions"] == ["forgotten"] and "REGRESSED: forgotten" in result.summary
    student_dir = tmp / "out" / "student"
    assert "| learnt | acc | 30 |" in (student_dir / "harness.md").read_text()
    assert json.loads((student_dir / "harness.json").read_text())["regressions"] == ["forgotten"]
    # keyed: nothing changed, nothing run; a changed setting runs it again
    assert Harness(load_plan(recipe), progress=False).run().status == "skipped"
    again = Harness(load_plan(recipe, ["sft.eval_harness.limit=10"]), progress=False).run()
    assert again.status == "done" and "changed: sft.eval_harness" in again.why
    assert {t["items"] for t in again.details["tasks"]} == {10}
    # `sft eval` prints it after the evaluation
    assert sft_main(["eval", str(recipe), "--set", "sft.eval=" + str(tmp / "out" / "train.jsonl"), "--set",
                     "sft.eval_limit=2", "--set", "sft.eval_max_new_tokens=4", "--set", "sft.eval_engine=transformers"]) == 0
    assert "regressions: forgotten (the trained student is worse than its base)" in capsys.readouterr().out


@pytest.mark.slow
def test_the_shipped_dates_task_runs_on_a_student(student):
    """prompts/harness/dates_iso: loads from the repository's task folder, 20 items scored."""
    from sft.harness import Harness
    from synth.plan import load_plan

    _, recipe = student
    plan = load_plan(recipe, ['sft.eval_harness={tasks: [dates_iso], include_path: ' + str(REPO / "prompts" / "harness")
                              + ', limit: 20}'])
    (task,) = Harness(plan, progress=False).run().details["tasks"]
    assert task["task"] == "dates_iso" and task["metric"] == "acc" and task["items"] == 20


def test_the_shipped_dates_task_is_disjoint_from_the_demo_and_right():
    from synth.examples.dates import harness_items

    shipped = [json.loads(line) for line in (REPO / "prompts" / "harness" / "dates_iso.jsonl").read_text().splitlines()]
    assert shipped == harness_items(), "prompts/harness/dates_iso.jsonl is written by synth.examples.dates.harness_items"
    from synth.examples.dates import INSTRUCTION, expected

    for item in shipped:
        choices = item["choices"].split("|")
        assert len(set(choices)) == 4 and choices[item["answer"]] == expected(INSTRUCTION + item["date"])
    task = yaml.safe_load((REPO / "prompts" / "harness" / "dates_iso.yaml").read_text())
    assert task["task"] == "dates_iso" and task["dataset_kwargs"]["data_files"]["test"] == "prompts/harness/dates_iso.jsonl"


@pytest.mark.parametrize("change, error", [
    ({"tasks": []}, "tasks: give a list of lm-evaluation-harness task names"),
    ({"include_path": "nowhere/at/all"}, "include_path: nowhere/at/all is not a folder"),
    ({"limit": 0}, "limit: must be at least 1"),
])
def test_bad_harness_settings_name_the_key(change, error):
    with pytest.raises(ValueError, match=error):
        from_dict(HarnessOptions, {"tasks": ["dates_iso"], **change}, prefix="sft.eval_harness")


@pytest.mark.slow
def test_a_missing_or_malformed_task_is_one_line_naming_the_fix(student, tmp_path, capsys):
    from sft.cli import main as sft_main

    tmp, recipe = student
    assert sft_main(["eval", str(recipe), "--set", "sft.eval=" + str(tmp / "out" / "train.jsonl"), "--set", "sft.eval_limit=1",
                     "--set", "sft.eval_engine=transformers", "--set", "sft.eval_max_new_tokens=2",
                     "--set", f"sft.eval_harness={{tasks: [no_such_task], include_path: {tmp.parent / 'tasks'}}}"]) == 2
    err = capsys.readouterr().err
    assert "sft.eval_harness.tasks: no task named no_such_task" in err and str(tmp.parent / "tasks") in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.yaml").write_text("task: bad\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: "
                                     f"{broken / 'missing.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
                                     "doc_to_text: q\ndoc_to_choice: c\ndoc_to_target: a\n")
    assert sft_main(["eval", str(recipe), "--set", "sft.eval=" + str(tmp / "out" / "train.jsonl"), "--set", "sft.eval_limit=1",
                     "--set", "sft.eval_engine=transformers", "--set", "sft.eval_max_new_tokens=2",
                     "--set", f"sft.eval_harness={{tasks: [bad], include_path: {broken}}}"]) == 2
    err = capsys.readouterr().err
    assert "sft.eval_harness: lm-evaluation-harness could not run bad" in err and "check each task YAML" in err
