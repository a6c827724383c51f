"""`synth compare`: students of several versions on one held-out set, with paired error bars."""

import json
import shutil

import pytest
import yaml

from sft.stats import paired_difference, verdict, verdict_line
from synth.cli import main as synth_main

from conftest import REPO, make_recipe, read_jsonl, write_jsonl

# ---- the statistics ---------------------------------------------------------------------


def test_a_clear_gain_is_better_a_clear_loss_worse_and_identical_students_no_difference():
    a = [1.0] * 60 + [0.0] * 40
    b = [1.0] * 90 + [0.0] * 10  # 30 prompts newly right
    gain = paired_difference(a, b)
    assert gain["mean"] == pytest.approx(0.30) and gain["discordant"] == 30
    assert 0.15 < gain["ci95"][0] < 0.30 < gain["ci95"][1] < 0.45
    # the percentile interval is close to the normal one for a sample this size
    assert gain["ci95"][0] == pytest.approx(0.30 - 1.96 * gain["se"], abs=0.03)
    assert verdict(gain) == "better"
    assert verdict(paired_difference(b, a)) == "worse"
    same = paired_difference(a, list(a))
    assert same["ci95"] == [0.0, 0.0] and same["prompts_needed"] is None
    assert verdict(same).startswith("no detectable difference")
    assert "score the same on every one of the prompts" in verdict_line("B", "A", same)


def test_a_small_difference_is_not_detected_and_says_how_many_prompts_it_would_need():
    a = [1.0] * 70 + [0.0] * 30
    b = list(a)
    b[80], b[81] = 1.0, 1.0  # two newly right, one newly wrong: +0.01
    b[0] = 0.0
    small = paired_difference(a, b)
    assert small["mean"] == pytest.approx(0.01) and small["ci95"][0] < 0 < small["ci95"][1]
    var = sum((x - 0.01) ** 2 for x in (1, 1, -1, *[0] * 97)) / 99
    assert small["prompts_needed"] == pytest.approx((1.959964 + 0.841621) ** 2 * var / 0.01**2, abs=1)
    line = verdict_line("B", "A", small)
    assert "no detectable difference at this sample size" in line and f"{small['prompts_needed']:,} prompts" in line


# ---- the command on real students ---------------------------------------------------------

EVAL_PROMPTS = [f"What is {i} plus {i}?" for i in range(100, 124)]
TRAIN_PROMPTS = [f"What is {i} plus {i}?" for i in range(40)]


def _version(root, tiny_model, name, answer, *, student_from=None, eval_prompts=EVAL_PROMPTS, verifier=None):
    """An output dir as `synth run` leaves it: config.yaml (the recipe), teacher.json, a curated
    split whose every answer is `answer` (this version's teacher), and a fully fine-tuned
    student trained on it (or, with `student_from`, the student of another version)."""
    from sft.train import run_train
    from synth.plan import load_plan

    work = root / name
    work.mkdir()
    out = work / "out"
    out.mkdir()
    rows = lambda prompts: [{"id": f"{name}-{i}", "messages": [{"role": "system", "content": "You are a terse assistant."},  # noqa: E731
                                                            {"role": "user", "content": p},
                                                            {"role": "assistant", "content": answer}]}
                            for i, p in enumerate(prompts)]
    write_jsonl(out / "train.jsonl", rows(TRAIN_PROMPTS))
    write_jsonl(out / "eval.jsonl", rows(eval_prompts))
    sft = {"model": str(tiny_model), "full_finetune": True, "max_steps": 30, "batch_size": 8, "learning_rate": 3e-3,
           "warmup_ratio": 0.0, "logging_steps": 10, "save_steps": 100, "max_length": 128, "eval_engine": "transformers",
           "eval_max_new_tokens": 6, "eval_verifier": verifier or "curate_verifiers:mentions_a_number"}
    if student_from is not None:
        sft["output_dir"] = str(student_from / "student")
    recipe = make_recipe(work, tiny_model, extra={"sft": sft})
    (out / "config.yaml").write_text(recipe.read_text())
    if student_from is None:
        run_train(load_plan(recipe), progress=False)
    (out / "teacher.json").write_text(json.dumps({"backend": "vllm", "model": f"teacher-{name}"}))
    return out


@pytest.fixture(scope="module")
def versions(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("versions")
    numbers = _version(root, tiny_model, "numbers", "42")  # a teacher the check accepts
    words = _version(root, tiny_model, "words", "none")  # one it rejects
    return root, numbers, words


@pytest.mark.slow
def test_the_student_of_the_worse_teacher_is_worse_with_its_interval_and_a_rerun_generates_nothing(versions, capsys):
    _, numbers, words = versions
    assert synth_main(["compare", str(numbers), str(words)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((words / "compare.json").read_text())
    assert report["prompts"] == len(EVAL_PROMPTS) and report["excluded_as_trained"] == 0
    by_dir = {v["dir"]: v for v in report["versions"]}
    assert by_dir[str(numbers)]["teacher"]["mean"] == 1.0 and by_dir[str(words)]["teacher"]["mean"] == 0.0
    # each student learnt its teacher's one answer: the check passes one and fails the other
    assert by_dir[str(numbers)]["student"]["mean"] >= 0.9, report["per_prompt"]
    assert by_dir[str(words)]["student"]["mean"] <= 0.1, report["per_prompt"]
    (comparison,) = report["comparisons"]
    assert comparison["verdict"] == "worse" and comparison["student"]["ci95"][1] < 0
    assert f"{words} vs {numbers}: worse: student -1.000 (95% CI -1.000 to -1.000" in printed and "95% CI" in printed
    assert "| version | teacher | teacher pass rate |" in (words / "compare.md").read_text()
    answers = (words / "compare_answers.jsonl").read_text()
    assert len(answers.splitlines()) == 2 * len(EVAL_PROMPTS)

    assert synth_main(["compare", str(numbers), str(words)]) == 0
    again = capsys.readouterr().out
    assert "skipped (inputs unchanged" in again and "worse" in again
    assert (words / "compare_answers.jsonl").read_text() == answers, "a rerun generated nothing"


@pytest.mark.slow
def test_two_versions_with_the_same_student_show_no_detectable_difference(versions, tiny_model, capsys):
    root, numbers, _ = versions
    twin = _version(root, tiny_model, "twin", "42", student_from=numbers)
    assert synth_main(["compare", str(numbers), str(twin), "--out", str(root / "report")]) == 0
    report = json.loads((root / "report" / "compare.json").read_text())
    (comparison,) = report["comparisons"]
    assert comparison["student"]["discordant"] == 0
    assert comparison["verdict"] == "no detectable difference at this sample size"
    assert "score the same on every one of the prompts" in capsys.readouterr().out


@pytest.mark.slow
def test_bad_input_is_one_line_naming_the_version_and_the_fix(versions, tiny_model, tmp_path, capsys):
    root, numbers, words = versions

    def error(*args):
        assert synth_main(["compare", *map(str, args)]) == 2
        return capsys.readouterr().err

    other = _version(tmp_path, tiny_model, "other", "7", student_from=numbers,
                     eval_prompts=[f"Name colour {i}." for i in range(5)])
    assert "have no held-out prompt in common" in error(numbers, other) and "--eval FILE" in error(numbers, other)
    untrained = tmp_path / "untrained"
    shutil.copytree(words, untrained, ignore=shutil.ignore_patterns("student"))
    err = error(numbers, untrained)
    assert f"{untrained}: its student is not trained yet" in err and "sft train" in err
    err = error(numbers, words, "--verifier", "curate_verifiers:explodes", "--force")
    assert "the check curate_verifiers:explodes raised RuntimeError: verifier bug" in err and "fix the check" in err
    assert "is not a directory" in error(numbers, tmp_path / "nowhere")
    assert "--eval" in error(numbers, words, "--eval", tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "1"}]}\nnot json\n')
    err = error(numbers, words, "--eval", bad)
    assert str(bad) in err and "line 2" in err


@pytest.mark.slow
def test_a_judge_compares_the_students_prompt_by_prompt_through_its_seeded_order(versions, tmp_path, vllm_server,
                                                                                monkeypatch, capsys):
    """--judge: the real server judges, its verdict forced (a structured-output choice of
    "Winner: 1": it prefers whichever answer it is shown first), so each outcome must follow
    the order the judge saw, mapped back to the two students; identical answers are ties with
    no call; a rerun calls nothing."""
    import re

    from conftest import SERVED_MODEL, SERVER_KEY
    from faultproxy import FaultProxy

    _, numbers, words = versions
    monkeypatch.setenv("STILLHOUSE_TEST_KEY", SERVER_KEY)
    with FaultProxy(vllm_server.url) as proxy:
        judge = tmp_path / "judge.yaml"
        judge.write_text(json.dumps({"max_tokens": 8, "teacher": {"backend": "openai", "model": SERVED_MODEL, "openai": {
            "base_url": proxy.url, "api_key_env": "STILLHOUSE_TEST_KEY",
            "extra_body": {"structured_outputs": {"choice": ["Winner: 1"]}}}}}))
        out = tmp_path / "report"
        assert synth_main(["compare", str(numbers), str(words), "--judge", str(judge), "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        report = json.loads((out / "compare.json").read_text())
        (c,) = report["judge"]["comparisons"]
        answers = {}
        for row in read_jsonl(out / "compare_answers.jsonl"):
            answers.setdefault(row["dir"], []).append(row["answer"])
        base, mine = answers[str(numbers)], answers[str(words)]
        differ = sum(a != b for a, b in zip(base, mine, strict=True))
        assert differ > 0 and c["identical"] == len(EVAL_PROMPTS) - differ
        assert c["judged"] == differ == len(proxy.hits) == c["a_wins"] + c["b_wins"]
        # Each call: the answer shown first won; which student's it was decides the outcome.
        shown_first = {}
        for call in read_jsonl(out / "compare_judge.jsonl"):
            text = call["messages"][-2]["content"]
            request = re.search(r"\[Request\]\n(.*?)\n\n\[Answer 1\]", text, re.S).group(1)
            first = re.search(r"\[Answer 1\]\n(.*?)\n\n\[Answer 2\]", text, re.S).group(1)
            i = report["prompt_texts"].index(request)  # the held-out order, of answers and outcomes
            shown_first[i] = "a" if first.strip() == base[i].strip() else "b"
        for i, outcome in enumerate(c["per_prompt"]):
            assert outcome == ("tie" if base[i] == mine[i] else shown_first[i])
        assert 0 < c["b_wins"] < differ, "the seeded order shows each student first on some prompts"
        p = c["preference"]
        assert p["mean"] == pytest.approx((c["b_wins"] - c["a_wins"]) / len(EVAL_PROMPTS))
        assert f"{words} vs {numbers}: {c['verdict']}: judge preference {p['mean']:+.3f}" in printed
        assert f"judge: {words} preferred on {c['b_wins']}, {numbers} on {c['a_wins']}" in printed
        assert "The judge's preference" in (out / "compare.md").read_text()
        # the task check ran too (the versions' sft.eval_verifier), as without --judge
        assert report["verifier"] and len(report["verdicts"]) == 2

        assert synth_main(["compare", str(numbers), str(words), "--judge", str(judge), "--out", str(out)]) == 0
        assert "skipped (inputs unchanged" in capsys.readouterr().out and len(proxy.hits) == differ

        # The same student twice: every answer identical, a tie without a call.
        twin = tmp_path / "twin"
        shutil.copytree(numbers, twin)
        assert synth_main(["compare", str(numbers), str(twin), "--judge", str(judge), "--out", str(out)]) == 0
        (c,) = json.loads((out / "compare.json").read_text())["judge"]["comparisons"]
        assert c["identical"] == len(EVAL_PROMPTS) and c["judged"] == 0 and len(proxy.hits) == differ
        assert c["verdict"] == "no detectable difference at this sample size"

        # Judge calls that fail (every attempt a 500) are counted, and the next run asks them again.
        failing = tmp_path / "failing.j2"
        packaged = (REPO / "synth" / "prompts" / "judge" / "pairwise.j2").read_text()
        failing.write_text(packaged.replace("[Request]", "[always500] [Request]"))
        flaky = tmp_path / "flaky.yaml"
        spec = json.loads(judge.read_text())
        spec["template"], spec["teacher"]["openai"]["max_retries"] = str(failing), 0
        flaky.write_text(json.dumps(spec))
        again = tmp_path / "again"
        assert synth_main(["compare", str(numbers), str(words), "--judge", str(flaky), "--out", str(again)]) == 0
        (c,) = json.loads((again / "compare.json").read_text())["judge"]["comparisons"]
        assert c["failed"] == differ and c["a_wins"] + c["b_wins"] == 0 and c["verdict"].startswith("no verdict")
        assert "a rerun asks the failed calls again" in capsys.readouterr().out
        proxy.faults_enabled = False
        assert synth_main(["compare", str(numbers), str(words), "--judge", str(flaky), "--out", str(again)]) == 0
        (c,) = json.loads((again / "compare.json").read_text())["judge"]["comparisons"]
        assert c["failed"] == 0 and c["a_wins"] + c["b_wins"] == differ
        capsys.readouterr()
        sent = len(proxy.hits)

        # Versions with no task check: the judge alone (its answers from the cache), or one clear error.
        unchecked = []
        for version in (numbers, words):
            copy = tmp_path / f"unchecked-{version.parent.name}"
            shutil.copytree(version, copy)
            config = yaml.safe_load((copy / "config.yaml").read_text())
            del config["sft"]["eval_verifier"]
            (copy / "config.yaml").write_text(yaml.safe_dump(config))
            unchecked.append(str(copy))
        assert synth_main(["compare", *unchecked]) == 2
        err = capsys.readouterr().err
        assert "no version has sft.eval_verifier or sft.eval_judge" in err and "--judge JUDGE.yaml" in err
        assert synth_main(["compare", *unchecked, "--judge", str(judge), "--out", str(out)]) == 0
        report = json.loads((out / "compare.json").read_text())
        assert report["verifier"] is None and report["per_prompt"] == {} and len(report["verdicts"]) == 1
        assert "judge preference" in report["verdicts"][0] and len(proxy.hits) == sent
