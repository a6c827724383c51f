"""Reasoning traces: split from the answer (tags, an API's reasoning field, Anthropic's
thinking blocks), kept in the record as reasoning_content, curated, and trained on through
`synth run`. The tagged text comes from the real engine and the real vLLM server, made to
write `<think>...</think>answer` by vLLM's structured outputs (a regex)."""

import json
import subprocess
import sys

import pytest
import yaml

from synth.filters.reasoning import Reasoning
from synth.generate import run_generate
from synth.plan import load_plan
from synth.reasoning import split_reasoning

from conftest import (
    ENGINE,
    HANG_S,
    REASONING_TEMPLATE,
    REPO,
    SERVER_KEY,
    make_api_recipe,
    read_jsonl,
)

REGEX = r"<think>[a-z ]{8,30}</think>[a-z ]{2,12}"


def test_split_reasoning():
    assert split_reasoning("plain answer") == split_reasoning("plain answer", "<r>", "</r>")
    assert split_reasoning("plain answer").reasoning is None
    s = split_reasoning("<think> add them </think>\n\n42")
    assert (s.answer, s.reasoning, s.finished) == ("42", "add them", True)
    s = split_reasoning("add them</think>42")  # the template opened the tag in the prompt
    assert (s.answer, s.reasoning) == ("42", "add them")
    s = split_reasoning("<think>add them and then", )  # cut off while reasoning
    assert (s.answer, s.reasoning, s.finished) == ("", "add them and then", False)
    s = split_reasoning("[r]x[/r]y", "[r]", "[/r]")
    assert (s.answer, s.reasoning) == ("y", "x")


def test_reasoning_filter():
    def rec(content, thought=None, finished=True):
        message = {"role": "assistant", "content": content, **({"reasoning_content": thought} if thought is not None else {})}
        return {"messages": [{"role": "user", "content": "q"}, message],
                **({"reasoning": {"chars": len(thought), "finished": finished}} if thought is not None else {})}

    f = Reasoning({"require": True, "max_chars": 20, "min_chars": 3}, "curate.filters[0]")
    assert f.check(rec("42", "add them")) is None
    assert "no reasoning" in f.check(rec("42"))
    assert "never finished" in f.check(rec("", "add them and", finished=False))
    assert "no answer after it" in f.check(rec(" ", "add them"))
    assert "more than max_chars 20" in f.check(rec("42", "x" * 21))
    assert "fewer than min_chars 3" in f.check(rec("42", "ab"))
    assert Reasoning({}, "curate.filters[0]").check(rec("42")) is None


def test_anthropic_thinking_blocks_are_the_reasoning(monkeypatch):
    """A Messages API answer with extended thinking (the documented shape): thinking blocks
    are the reasoning, text blocks the answer."""
    from synth.backends.anthropic_api import AnthropicBackend
    from synth.config import TeacherConfig
    from synth.records import make_record
    from synth.requests import Request

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-0123456789")
    backend = AnthropicBackend(TeacherConfig(model="claude-test", backend="anthropic"))
    req = Request("r1", [{"role": "user", "content": "12 + 30?"}], {"max_tokens": 64}, 0, {}, {})
    answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test", "stop_reason": "end_turn",
              "content": [{"type": "thinking", "thinking": "12 + 30 is 42.", "signature": "EqQB..."},
                          {"type": "text", "text": "42"}],
              "usage": {"input_tokens": 12, "output_tokens": 20}}
    rec = make_record(backend.completion(req, answer, 0.5), backend.identity(), TeacherConfig(model="x").reasoning)
    assert rec["messages"][-1] == {"role": "assistant", "content": "42", "reasoning_content": "12 + 30 is 42."}
    assert rec["finish_reason"] == "stop" and rec["usage"] == {"prompt_tokens": 12, "completion_tokens": 20}
    assert rec["reasoning"] == {"chars": 14, "finished": True}


@pytest.mark.slow
def test_api_teachers_reasoning_from_tags_and_from_the_servers_field(tmp_path, batch_server, monkeypatch):
    monkeypatch.setenv("STILLHOUSE_TEST_KEY", SERVER_KEY)
    server = batch_server
    for sub in "ab":
        (tmp_path / sub).mkdir()
    seeds = [{"question": f"What is {i} plus {i}?"} for i in range(4)]
    opts = {"extra_body": {"structured_outputs": {"regex": REGEX}}}
    # A server without a reasoning parser: the tags stay in the text and synth splits them.
    plan = load_plan(make_api_recipe(tmp_path / "a", server.url, openai=opts, seeds=seeds,
                                     sampling={"n": 1, "max_tokens": 64, "temperature": 0.0}))
    run_generate(plan, progress=False)
    tagged = read_jsonl(plan.layout.raw)
    # A server with a reasoning parser: the reasoning comes in its own field.
    server.reasoning_parser = True
    plan = load_plan(make_api_recipe(tmp_path / "b", server.url, openai=opts, seeds=seeds, out="out-b",
                                     sampling={"n": 1, "max_tokens": 64, "temperature": 0.0}))
    run_generate(plan, progress=False)
    fielded = read_jsonl(plan.layout.raw)
    for records in (tagged, fielded):
        assert len(records) == 4
        for r in records:
            answer = r["messages"][-1]
            assert answer["reasoning_content"] and "<think>" not in answer["content"] and "</think>" not in answer["content"]
            assert "<think>" not in answer["reasoning_content"] and answer["content"].strip()
            assert r["reasoning"] == {"chars": len(answer["reasoning_content"]), "finished": True}
    # The same (greedy) text, however it reached us: split by synth or by the server.
    def by_prompt(records):  # answers arrive, and are logged, in whatever order they finish
        return {r["messages"][-2]["content"]: r["messages"][-1]["reasoning_content"] for r in records}

    assert by_prompt(tagged) == by_prompt(fielded)


@pytest.mark.slow
def test_a_reasoning_teacher_through_the_whole_loop(tmp_path, tiny_model):
    """synth run: the in-process engine writes tagged reasoning, curation keeps it, the card
    counts it, and the student trains on it through a template that renders reasoning_content."""
    template = tmp_path / "chat.jinja"
    template.write_text(REASONING_TEMPLATE)
    recipe = {
        "name": "reasoning",
        "seeds": {"path": str(REPO / "prompts" / "self-instruct" / "seed_tasks.jsonl"), "limit": 12},
        "template": {"path": str(REPO / "prompts" / "demo" / "answer.j2")},
        "teacher": {"backend": "vllm", "model": str(tiny_model), "vllm": {**ENGINE, "structured_outputs": {"regex": REGEX}}},
        "sampling": {"n": 1, "max_tokens": 64, "seed": 1},
        "output": {"dir": str(tmp_path / "out")},
        "curate": {"filters": [{"name": "reasoning", "require": True}, "empty"], "eval_fraction": 0.25},
        "card": {"teacher_terms": "test model, no terms"},
        "sft": {"model": str(tiny_model), "max_steps": 4, "batch_size": 4, "logging_steps": 1, "save_steps": 2,
                "max_length": 512, "eval_limit": 2, "eval_max_new_tokens": 8, "eval_engine": "transformers",
                "chat_template": str(template)},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    res = subprocess.run([sys.executable, "-m", "synth.cli", "run", str(path), "--no-progress"], capture_output=True,
                         text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "out"
    raw = read_jsonl(out / "raw.jsonl")
    assert len(raw) == 12 and all(r["messages"][-1]["reasoning_content"] for r in raw)
    kept = read_jsonl(out / "train.jsonl") + read_jsonl(out / "eval.jsonl")
    assert len(kept) == 12 and all("reasoning_content" in r["messages"][-1] for r in kept)
    assert "## Reasoning traces" in (out / "README.md").read_text()
    assert "sft.reasoning: keep: reasoning_content, rendered by the chat template" in (out / "run.log").read_text()
    report = {s["stage"]: s["status"] for s in json.loads((out / "report.json").read_text())["stages"]}
    assert report["train"] == "done" and (out / "student" / "adapter" / "adapter_model.safetensors").exists()
