"""Best-of-n selection in curation, preference pairs (`synth pairs`) and DPO (`sft dpo`)."""


import pytest

from synth.backends import Completion
from synth.card import write_card
from synth.config import PairsConfig
from synth.curate import run_curate
from synth.plan import load_plan
from synth.records import make_record

from conftest import make_recipe, read_jsonl, write_jsonl

ANSWERS = {  # three samples of each prompt
    "How many apples?": ["I cannot say.", "7 apples", "12 pears"],
    "Name a colour.": ["blue", "red", "green"],
    "What is 2 plus 2?": ["four", "It is 4.", "fourish"],
}


def samples_raw(tmp_path, tiny_model, filters, **recipe_extra):
    """A raw log of three teacher samples per prompt, as a generate run with n=3 writes it."""
    path = make_recipe(tmp_path, tiny_model, seeds=[{"question": q} for q in ANSWERS], sampling={"n": 3},
                       extra={"curate": {"filters": filters, "eval_fraction": 0.0}, **recipe_extra})
    plan = load_plan(path)
    records = [make_record(Completion(req, ANSWERS[req.seed["fields"]["question"]][req.sample_index], "stop", 10, 5, 0.1),
                           plan.teacher) for req in plan.requests.requests]
    (tmp_path / "out").mkdir(exist_ok=True)
    write_jsonl(tmp_path / "out" / "raw.jsonl", records)
    return plan


def test_best_of_n_keeps_the_best_passing_samples_and_reports_pass_rates(tmp_path, tiny_model):
    plan = samples_raw(tmp_path, tiny_model, [{"name": "best_of_n", "function": "curate_verifiers:number_count"}])
    stats = run_curate(plan, progress=False)
    kept = {r["messages"][-2]["content"]: r for r in read_jsonl(plan.layout.train)}
    # The most digits wins ("12 pears" over "7 apples"); no sample of "Name a colour." passes.
    assert {q: r["messages"][-1]["content"] for q, r in kept.items()} == {"How many apples?": "12 pears",
                                                                         "What is 2 plus 2?": "It is 4."}
    assert kept["How many apples?"]["scores"] == {"verifier": 2.0}
    assert stats["selection"] == {"by": "verifier", "k": 1, "min_score": 1.0, "prompts": 3, "samples": 9,
                                  "pass@1": round((2 / 3 + 0 + 1 / 3) / 3, 4), "pass@n": round(2 / 3, 4),
                                  "prompts_without_pass": 1}
    reasons = {r["messages"][-1]["content"]: r["rejection"]["reason"] for r in read_jsonl(plan.layout.rejected)}
    assert reasons["7 apples"] == "not among the best 1 of the 3 samples of its prompt (score 1, best 2)"
    assert reasons["blue"] == "score 0 below min_score 1 (no sample of its 3 passes)"
    assert "- pass@1: 0.3333, pass@n: 0.6667" in write_card(plan).read_text()


def test_ties_are_broken_by_sample_index_and_k_keeps_more(tmp_path, tiny_model):
    plan = samples_raw(tmp_path, tiny_model, [{"name": "best_of_n", "function": "curate_verifiers:mentions_a_number", "k": 2}])
    run_curate(plan, progress=False)
    kept = sorted((r["messages"][-2]["content"], r["sample_index"]) for r in read_jsonl(plan.layout.train))
    assert kept == [("How many apples?", 1), ("How many apples?", 2), ("What is 2 plus 2?", 1)]


@pytest.mark.parametrize("spec, message", [
    ({"name": "best_of_n"}, "function: by: verifier needs the function"),
    ({"name": "best_of_n", "by": "judge", "function": "curate_verifiers:number_count"}, "function: only with by: verifier"),
    ({"name": "best_of_n", "by": "votes"}, "by: verifier or judge"),
])
def test_a_bad_best_of_n_is_a_clear_error(tmp_path, tiny_model, spec, message):
    with pytest.raises(ValueError, match=message):
        samples_raw(tmp_path, tiny_model, [spec])


def test_best_of_n_by_judge_needs_a_judge_before_it(tmp_path, tiny_model):
    plan = samples_raw(tmp_path, tiny_model, [{"name": "best_of_n", "by": "judge"}])
    with pytest.raises(ValueError, match="put a judge filter before best_of_n"):
        run_curate(plan, progress=False)


def test_pairs_from_ranked_samples_and_their_provenance(tmp_path, tiny_model):
    from synth.pairs import pairs_key, run_pairs
    from synth.stage import read_stamp

    plan = samples_raw(tmp_path, tiny_model, [{"name": "best_of_n", "function": "curate_verifiers:number_count"}])
    run_curate(plan, progress=False)
    counts = run_pairs(plan)
    assert read_stamp(plan.layout.stamp("pairs")) == pairs_key(plan)  # synth run skips it next time
    pairs = {p["prompt"][-1]["content"]: p for p in read_jsonl(plan.layout.pairs)}
    # "Name a colour." kept nothing, so it has no pair; each other kept answer against the
    # lowest-scored sample of its prompt.
    assert counts == {"samples": 2, "pairs": 2, "duplicates": 0}
    apples = pairs["How many apples?"]
    assert apples["chosen"] == [{"role": "assistant", "content": "12 pears"}]
    assert apples["rejected"] == [{"role": "assistant", "content": "I cannot say."}]
    assert apples["scores"] == {"chosen": 2.0, "rejected": 0.0} and apples["source"] == "samples"
    assert apples["prompt"][-1] == {"role": "user", "content": "How many apples?"} and apples["prompt"][0]["role"] == "system"
    assert apples["reason"].startswith("score 0 below min_score 1")
    assert pairs["What is 2 plus 2?"]["rejected"][0]["content"] in ("four", "fourish")
    # A margin wider than every gap makes no pairs.
    plan.recipe.pairs = PairsConfig(min_margin=5.0)
    assert run_pairs(plan)["pairs"] == 0


def test_pairs_need_a_ranking(tmp_path, tiny_model):
    from synth.pairs import run_pairs

    plan = samples_raw(tmp_path, tiny_model, ["empty"])
    run_curate(plan, progress=False)
    with pytest.raises(ValueError, match="curate.filters has none; add e.g. {name: best_of_n"):
        run_pairs(plan)


@pytest.mark.parametrize("row, message", [
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}]}, "'rejected' must be a non-empty list"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
      "rejected": [{"role": "assistant", "content": "a"}]}, "'chosen' and 'rejected' are the same answer"),
    ({"prompt": [{"role": "assistant", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
      "rejected": [{"role": "assistant", "content": "b"}]}, "'prompt' must end with a user turn"),
])
def test_a_bad_pair_file_names_the_line_and_the_field(tmp_path, row, message):
    from sft.data import read_pairs

    good = {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}]}
    path = write_jsonl(tmp_path / "pairs.jsonl", [good, row])
    with pytest.raises(ValueError, match=f"sft.dpo.pairs: {path} line 2: {message}"):
        read_pairs(path)


@pytest.mark.slow
def test_real_samples_to_pairs_to_a_dpo_student_that_resumes(tmp_path, tiny_model):
    """One `synth run` (as docs/distillation.md's DPO command): the teacher's samples ranked
    by best_of_n, the SFT student trained and answering, pairs from both sources, DPO on them;
    then a DPO run killed after its first checkpoint resumes from it."""
    import json
    import os
    import subprocess
    import sys

    from sft.dpo import run_dpo
    from synth.pairs import run_pairs

    from conftest import HANG_S, REPO

    sft = {"model": str(tiny_model), "max_steps": 2, "batch_size": 4, "learning_rate": 1e-3, "save_steps": 2,
           "max_length": 256, "warmup_ratio": 0.0, "logging_steps": 1, "eval_engine": "transformers",
           "dpo": {"max_steps": 4}}
    path = make_recipe(tmp_path, tiny_model, seeds=[{"question": f"Tell me about item {i}."} for i in range(6)],
                       sampling={"n": 3, "max_tokens": 16, "temperature": 1.0},
                       extra={"curate": {"filters": [{"name": "best_of_n", "function": "curate_verifiers:answer_chars"}],
                                         "eval_fraction": 0.0},
                              "pairs": {"sources": ["samples", "student"], "student_max_tokens": 16}, "sft": sft})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "synth.cli", "run", str(path), "--no-progress"], env=env,
                         capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-3000:]
    plan = load_plan(path)
    report = {s["stage"]: s for s in json.loads((plan.layout.root / "report.json").read_text())["stages"]}
    assert all(report[s]["status"] == "done" for s in ("generate", "curate", "train", "pairs", "dpo")), report
    pairs = read_jsonl(plan.layout.pairs)
    train = {r["id"]: r for r in read_jsonl(plan.layout.train)}
    sources = [p["source"] for p in pairs]
    assert sources.count("samples") >= 1 and set(sources) <= {"samples", "student"}
    assert len(read_jsonl(plan.layout.student_answers)) == len(train) == 6
    assert f"{len(pairs)} pairs (" in report["pairs"]["summary"], report["pairs"]
    for p in pairs:
        chosen = train[p["chosen_id"]]
        assert p["prompt"] == chosen["messages"][:-1] and p["chosen"][0]["content"] == chosen["messages"][-1]["content"]
        assert p["scores"]["chosen"] > p["scores"]["rejected"]
        assert p["scores"]["chosen"] == len(p["chosen"][0]["content"].strip())
        assert p["scores"]["rejected"] == len(p["rejected"][0]["content"].strip())
    answers = plan.layout.student_answers.read_bytes()
    run_pairs(plan)
    assert plan.layout.student_answers.read_bytes() == answers  # cached: the student answered once

    first = json.loads((plan.layout.root / "student" / "dpo" / "metrics.json").read_text())
    dpo = plan.layout.root / "student" / "dpo"
    assert first["global_step"] == 4 and (dpo / "adapter" / "adapter_config.json").is_file()
    sft_weights = (plan.layout.root / "student" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert (dpo / "adapter" / "adapter_model.safetensors").read_bytes() != sft_weights
    assert any("rewards/margins" in h for h in first["log_history"])  # DPO's own metrics were logged
    import shutil

    shutil.rmtree(dpo / "checkpoints" / "checkpoint-4")  # as if killed after step 2's checkpoint
    second = run_dpo(plan, progress=False)
    assert second["resumed_from"].endswith("checkpoint-2") and second["global_step"] == 4


@pytest.mark.slow
def test_pairs_ranked_by_a_judge_score_the_students_answers_with_the_same_judge(tmp_path, tiny_model, vllm_server, monkeypatch):
    from synth.pairs import run_pairs

    from conftest import SERVED_MODEL, SERVER_KEY

    monkeypatch.setenv("STILLHOUSE_TEST_KEY", SERVER_KEY)
    judge = {"name": "judge", "threshold": 1, "max_tokens": 8, "temperature": 1.0, "seed": None, "teacher": {
        "backend": "openai", "model": SERVED_MODEL, "openai": {
            "base_url": vllm_server.url, "api_key_env": "STILLHOUSE_TEST_KEY",
            "extra_body": {"structured_outputs": {"regex": "Score: [1-9]"}}}}}  # a score from the random model
    plan = samples_raw(tmp_path, tiny_model, [judge, {"name": "best_of_n", "by": "judge", "min_score": 1}],
                         pairs={"sources": ["samples", "student"]})
    run_curate(plan, progress=False)
    calls = len(read_jsonl(plan.layout.judge))
    assert calls == 9  # one per sample
    students = []

    def student(prompts):
        students.extend(prompts)
        return [f"a student's answer {i}" for i in range(len(prompts))]

    counts = run_pairs(plan, answer=student)
    pairs = read_jsonl(plan.layout.pairs)
    kept = {r["id"]: r for r in read_jsonl(plan.layout.train)}
    assert len(students) == len(kept) == 3 and len(read_jsonl(plan.layout.judge)) == calls + 3  # the student's judged
    assert counts["student_answers"] == 3 and counts["pairs"] == len(pairs) == counts["samples"] + counts["student"]
    # The judge samples its scores (seed None), so which pairs exist varies; the counts follow
    # from the files: a kept answer pairs with its prompt's lowest-scored sample when that is lower.
    worst = {}
    for r in read_jsonl(plan.layout.rejected):
        if r["rejection"]["filter"] != "best_of_n":
            continue
        q = r["messages"][-2]["content"]
        worst[q] = min(worst.get(q, 99), r["scores"]["judge"])
    expected = sum(1 for r in kept.values() if worst.get(r["messages"][-2]["content"], 99) < r["scores"]["judge"])
    assert counts["samples"] == expected >= 1  # (three prompts all tied on three samples: about 1e-4)
    for p in pairs:
        assert p["by"] == "judge" and 1 <= p["scores"]["rejected"] < p["scores"]["chosen"] <= 9
        assert p["chosen"][0]["content"] == kept[p["chosen_id"]]["messages"][-1]["content"]
        assert p["source"] == "samples" or p["rejected"][0]["content"].startswith("a student's answer")
    run_pairs(plan, answer=student)
    assert len(read_jsonl(plan.layout.judge)) == calls + 3  # the student's answers were judged once
