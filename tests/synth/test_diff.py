"""Regenerate with a second (different) tiny teacher into a new version; synth diff compares."""

import json
import statistics
import subprocess
import sys

import pytest

from synth.generate import run_generate
from synth.plan import load_plan, resolve
from synth.tiny_model import build_tiny_model

from conftest import HANG_S, make_recipe, read_jsonl

pytestmark = pytest.mark.slow


def test_new_teacher_writes_a_new_version_and_diff_is_right(tmp_path, tiny_model, vllm_backend):
    seeds = [{"question": f"Describe topic {i} in one line."} for i in range(8)]
    path = make_recipe(tmp_path, tiny_model, seeds=seeds, sampling={"n": 1, "max_tokens": 12})
    run_generate(load_plan(path), vllm_backend, progress=False)  # version A: the first teacher
    a_before = (tmp_path / "out" / "raw.jsonl").read_bytes()

    teacher_b = build_tiny_model(tmp_path / "teacher-b", seed=1)  # other weights: other answers
    # The same recipe and output.dir with another teacher: a new version beside the old one.
    res = subprocess.run([sys.executable, "-m", "synth.cli", "generate", str(path), "--no-progress",
                          "--set", f"teacher.model={teacher_b}"], capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"uses the version {tmp_path / 'out.v2'}" in res.stderr
    assert (tmp_path / "out" / "raw.jsonl").read_bytes() == a_before, "the old version is never written over"
    assert json.loads((tmp_path / "out.v2" / "teacher.json").read_text())["model"] == str(teacher_b)

    # Every command resolves the same version: the first teacher keeps out, the second out.v2
    # (also when named by another path), a third gets out.v3; the switch turns it off.
    assert load_plan(path).recipe.output.dir == str(tmp_path / "out")
    assert load_plan(path, [f"teacher.model={teacher_b}"]).recipe.output.dir == str(tmp_path / "out.v2")
    relative = f"teacher.model={teacher_b.relative_to(tmp_path)}"
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert load_plan(path, [relative]).recipe.output.dir == str(tmp_path / "out.v2")
    finally:
        os.chdir(cwd)
    teacher_c = build_tiny_model(tmp_path / "teacher-c", seed=2)
    assert load_plan(path, [f"teacher.model={teacher_c}"]).recipe.output.dir == str(tmp_path / "out.v3")
    assert load_plan(path, [f"teacher.model={teacher_c}", "output.version_by_teacher=false"]).recipe.output.dir == str(tmp_path / "out")
    # A teacher that cannot be identified (its directory gone) never falls back to a guess.
    with pytest.raises(ValueError, match="versions for several teachers"):
        load_plan(path, [f"teacher.model={tmp_path / 'deleted-teacher'}"])
    # A recipe resolved without versions cannot write one teacher's data into another's dir.
    from synth.config import Recipe
    from synth.configtools import from_dict, to_dict

    data = to_dict(load_plan(path, ["output.version_by_teacher=false"]).recipe)
    data["teacher"]["model"], data["output"]["version_by_teacher"] = str(teacher_c), True
    with pytest.raises(ValueError, match="holds the data of teacher"):
        run_generate(resolve(from_dict(Recipe, data), versioned=False), progress=False)
    assert (tmp_path / "out" / "raw.jsonl").read_bytes() == a_before

    res = subprocess.run([sys.executable, "-m", "synth.cli", "diff", str(tmp_path / "out"), str(tmp_path / "out.v2")],
                         capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "out.v2" / "diff.json").read_text())
    a, b = read_jsonl(tmp_path / "out" / "raw.jsonl"), read_jsonl(tmp_path / "out.v2" / "raw.jsonl")
    assert report["prompts_in_both"] == 8 and report["only_in_a"] == report["only_in_b"] == 0
    assert report["a"]["teacher"]["fingerprint"] != report["b"]["teacher"]["fingerprint"]
    assert report["a"]["answer_chars_mean"] == round(statistics.mean(len(r["messages"][-1]["content"]) for r in a), 1)
    assert report["b"]["answer_chars_mean"] == round(statistics.mean(len(r["messages"][-1]["content"]) for r in b), 1)
    sims = [c["similarity"] for c in report["changed_most"]]
    assert sims == sorted(sims) and report["mean_answer_similarity"] < 1.0
    assert "# Dataset diff" in (tmp_path / "out.v2" / "diff.md").read_text()

    # The card of a version lists every version with its teacher.
    from synth.card import write_card

    card = write_card(load_plan(path, [f"teacher.model={teacher_b}"])).read_text()
    section = card.split("## Versions", 1)[1].split("## Load it", 1)[0]
    assert f"| `{tmp_path / 'out'}` | `{tiny_model}` | not curated |" in section
    assert f"| `{tmp_path / 'out.v2'}` (this one) | `{teacher_b}` | not curated |" in section
    assert f"synth diff {tmp_path / 'out'} {tmp_path / 'out.v2'}" in section


@pytest.mark.parametrize("text, expected", [
    ("Answer 2 is more precise.\nWinner: 2", "2"),
    ("winner: TIE", "tie"),
    ("Winner: [1]", "1"),
    ("Winner: 1 ... on reflection Winner: 2", "2"),
    ("Both are fine.", None),
])
def test_parse_winner(text, expected):
    from synth.judging import parse_winner

    assert parse_winner(text) == expected


def test_diff_judge_through_a_real_server_is_cached_and_counted(tmp_path, tiny_model, vllm_server, monkeypatch):
    from synth.diff import run_diff

    from conftest import SERVED_MODEL, SERVER_KEY, write_jsonl
    from faultproxy import FaultProxy

    monkeypatch.setenv("STILLHOUSE_TEST_KEY", SERVER_KEY)
    for name, suffix in (("a", "first"), ("b", "second")):
        d = tmp_path / name
        d.mkdir()
        write_jsonl(d / "raw.jsonl", [{"id": f"{name}{i}", "messages": [
            {"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}, {suffix} teacher."}]}
            for i in range(5)])
    with FaultProxy(vllm_server.url) as proxy:
        judge = tmp_path / "judge.yaml"
        judge.write_text(json.dumps({"teacher": {"backend": "openai", "model": SERVED_MODEL, "openai": {
            "base_url": proxy.url, "api_key_env": "STILLHOUSE_TEST_KEY"}}, "max_tokens": 8}))
        report = run_diff(tmp_path / "a", tmp_path / "b", judge=judge)
        j = report["judge"]
        assert j["judged"] == 5 and j["calls_sent"] == 5 and len(proxy.hits) == 5
        assert j["a"] + j["b"] + j["tie"] + j["unparseable"] + j["failed"] == 5
        again = run_diff(tmp_path / "a", tmp_path / "b", judge=judge)
        assert again["judge"]["calls_sent"] == 0 and len(proxy.hits) == 5, "judge calls are cached"
    assert "Judge preference over 5 prompts" in (tmp_path / "b" / "diff.md").read_text()
