"""The LLM-as-judge filter: score parsing, and the plumbing through a real vLLM server
(the tiny model's scores are noise: what is tested is caching, counting and failures)."""

import pytest

from synth.curate import run_curate
from synth.filters.judge import parse_score
from synth.plan import load_plan

from conftest import HANG_S, SERVED_MODEL, SERVER_KEY, read_jsonl, write_jsonl
from curate_data import build_raw, real_rows
from faultproxy import FaultProxy


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Clear and correct.\nScore: 8", 8.0),
        ("score=7.5", 7.5),
        ('{"reason": "ok", "score": 9}', 9.0),
        ("Verdict: [[6]]", 6.0),
        ("I would give it 4/10.", 4.0),
        ("Score: 3\nOn reflection, Score: 5", 5.0),  # the last one counts
        ("Score: 11", None),  # out of range
        ("Score: 0", None),
        ("This is great!", None),
        ("", None),
    ],
)
def test_parse_score(text, expected):
    assert parse_score(text, 1, 10) == expected


@pytest.mark.slow
def test_judge_calls_are_cached_and_malformed_answers_are_recorded(tmp_path, tiny_model, vllm_server, monkeypatch):
    monkeypatch.setenv("STILLHOUSE_TEST_KEY", SERVER_KEY)
    items = real_rows(6) + [("Planted empty", " ")]
    with FaultProxy(vllm_server.url) as proxy:
        judge = {"name": "judge", "threshold": 5, "max_tokens": 12, "teacher": {
            "backend": "openai", "model": SERVED_MODEL,
            "openai": {"base_url": proxy.url, "api_key_env": "STILLHOUSE_TEST_KEY"}}}
        path, plan, _ = build_raw(tmp_path, tiny_model, items, {"filters": ["empty", judge]})
        stats = run_curate(plan, progress=False)
        out = tmp_path / "out"
        assert len(proxy.hits) == 6, "one judge call per record that reached the judge"
        first = {n: (out / n).read_bytes() for n in ("train.jsonl", "rejected.jsonl", "stats.json")}
        calls = stats["judge_calls"]
        assert calls["sent"] == 6 and calls["judged"] == 6 and calls["cached"] == 0
        assert len(read_jsonl(out / "judge.jsonl")) == 6

        # Rerun: every judge call comes from judge.jsonl; nothing is sent, outputs are identical.
        again = run_curate(load_plan(path), progress=False)
        assert len(proxy.hits) == 6 and again["judge_calls"]["cached"] == 6 and again["judge_calls"]["sent"] == 0
        assert {n: (out / n).read_bytes() for n in first} == first

    assert stats["records"] == 7 == stats["kept"] + stats["rejected"]
    assert stats["rejected_by_filter"]["0:empty"] == 1
    rejected = read_jsonl(out / "rejected.jsonl")
    for row in rejected:
        if row["rejection"]["filter"] == "judge":
            reason = row["rejection"]["reason"]
            assert reason.startswith("judge answer has no score in [1, 10]") or "below threshold 5" in reason
    kept = read_jsonl(out / "train.jsonl")
    assert all(5 <= r["scores"]["judge"] <= 10 for r in kept)
    assert calls["unparseable"] == sum(1 for r in rejected if "has no score" in r["rejection"]["reason"])


def test_judge_config_errors(tmp_path):
    from synth.filters import build_filter

    with pytest.raises(ValueError, match=r"curate.filters\[0\].teacher: required key is missing"):
        build_filter({"name": "judge"}, 0)
    with pytest.raises(ValueError, match=r"curate.filters\[0\].threshold: must be between"):
        build_filter({"name": "judge", "threshold": 11, "teacher": {"backend": "openai", "model": "m"}}, 0)
    with pytest.raises(ValueError, match=r"curate.filters\[0\].template: .*missing.j2 does not exist"):
        build_filter({"name": "judge", "template": str(tmp_path / "missing.j2"), "teacher": {"backend": "openai", "model": "m"}}, 0)


@pytest.mark.slow
def test_judge_with_the_in_process_vllm_engine(tmp_path, tiny_model):
    """The judge as a `vllm` teacher, in a real `synth curate` process (its own engine)."""
    import json
    import subprocess
    import sys

    from conftest import ENGINE

    judge = {"name": "judge", "threshold": 5, "max_tokens": 8,
             "teacher": {"backend": "vllm", "model": str(tiny_model), "vllm": ENGINE}}
    path, _, _ = build_raw(tmp_path, tiny_model, real_rows(5), {"filters": [judge]})
    res = subprocess.run([sys.executable, "-m", "synth.cli", "curate", str(path), "--no-progress"],
                         capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["curate"]["judge_calls"]["sent"] == 5
    judged = read_jsonl(tmp_path / "out" / "judge.jsonl")
    assert len(judged) == 5 and all(r["teacher"]["backend"] == "vllm" for r in judged)
    assert manifest["curate"]["stats"]["records"] == 5


@pytest.mark.slow
def test_semantic_decontam_asks_a_judge_about_flagged_records_only(tmp_path, tiny_model, vllm_server, monkeypatch):
    # The tiny model's verdict is forced per run (a structured-output choice): what is tested is
    # that only flagged records reach the judge, its verdict decides, and calls are cached.
    monkeypatch.setenv("STILLHOUSE_TEST_KEY", SERVER_KEY)
    evals = write_jsonl(tmp_path / "evals.jsonl", [{"q": "Write a short poem about autumn leaves falling in a city park, "
                                                         "in exactly three stanzas of four lines."}])
    items = [("Can you write a little poem about leaves coming down in an urban park in autumn? Three stanzas, four lines each.",
              "Leaves fall..."),
             ("Explain how a bank reconciles its ledger at the end of the day.", "It compares...")]
    with FaultProxy(vllm_server.url) as proxy:
        outcomes = {}
        for verdict in ("[[YES]]", "[[NO]]"):
            spec = {"name": "semantic_decontam", "threshold": 0.6, "eval_sets": [{"path": str(evals)}], "judge": {
                "max_tokens": 8, "teacher": {"backend": "openai", "model": SERVED_MODEL, "openai": {
                    "base_url": proxy.url, "api_key_env": "STILLHOUSE_TEST_KEY",
                    "extra_body": {"structured_outputs": {"choice": [verdict]}}}}}}
            path, plan, _ = build_raw(tmp_path, tiny_model, items, {"filters": ["empty", spec]})
            stats = run_curate(plan, progress=False)
            calls = stats["semantic_decontam_calls"]
            assert calls["flagged"] == 1 and calls["sent"] == 1 and calls[verdict.strip("[]").lower()] == 1
            outcomes[verdict] = read_jsonl(tmp_path / "out" / "rejected.jsonl")
            again = run_curate(load_plan(path), progress=False)
            assert again["semantic_decontam_calls"]["cached"] == 1 and again["semantic_decontam_calls"]["sent"] == 0
        assert len(proxy.hits) == 2, "one judge call per verdict run, none for the unrelated record, none on reruns"
    judged = read_jsonl(tmp_path / "out" / "decontam_judge.jsonl")
    assert len(judged) == 2 and "autumn leaves" in judged[0]["messages"][-2]["content"]
    assert "leaves coming down" in judged[0]["messages"][-2]["content"]
    (rejected,) = outcomes["[[YES]]"]
    assert rejected["rejection"]["reason"].startswith("rephrases eval item evals.jsonl line 1 (cosine ")
    assert rejected["rejection"]["reason"].endswith("; the judge says it is a rephrasing")
    assert outcomes["[[NO]]"] == []


@pytest.mark.slow
def test_a_failed_judge_call_leaves_curation_unfinished_and_the_next_run_asks_it_again(tmp_path, tiny_model, vllm_server,
                                                                                        monkeypatch):
    """A judge call that fails after its retries rejects its record for now, but the curate
    stage is left without its stamp: the next `synth run` curates again, sends only that call
    (the others come from judge.jsonl), and only then is the stage skipped."""
    from synth.curate import Curate

    monkeypatch.setenv("STILLHOUSE_TEST_KEY", SERVER_KEY)
    items = real_rows(3) + [("[always500] What is the capital of France?", "Paris.")]
    with FaultProxy(vllm_server.url) as proxy:
        judge = {"name": "judge", "threshold": 1, "max_tokens": 8, "teacher": {
            "backend": "openai", "model": SERVED_MODEL,
            "openai": {"base_url": proxy.url, "api_key_env": "STILLHOUSE_TEST_KEY", "max_retries": 0,
                       "extra_body": {"structured_outputs": {"choice": ["Score: 7"]}}}}}
        path, plan, _ = build_raw(tmp_path, tiny_model, items, {"filters": [judge]})
        first = Curate(plan, progress=False).run()
        assert first.status == "done" and not first.complete
        assert first.details["judge_calls"]["failed"] == 1 and len(proxy.hits) == 4
        assert any("1 judge calls failed" in line and "the next run asks those calls again" in line for line in first.lines)
        (failed,) = read_jsonl(tmp_path / "out" / "rejected.jsonl")
        assert "[always500]" in failed["messages"][-2]["content"] and "judge call failed" in failed["rejection"]["reason"]
        assert not plan.layout.stamp("curate").exists()

        proxy.faults_enabled = False
        hits = len(proxy.hits)
        second = Curate(load_plan(path), progress=False).run()
        assert second.status == "done" and second.complete
        assert second.details["judge_calls"] == {**second.details["judge_calls"], "sent": 1, "cached": 3, "failed": 0}
        assert len(proxy.hits) == hits + 1 and read_jsonl(tmp_path / "out" / "rejected.jsonl") == []
        assert len(read_jsonl(tmp_path / "out" / "train.jsonl")) == 4
        assert Curate(load_plan(path), progress=False).run().status == "skipped"
