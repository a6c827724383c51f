"""Tool calls (tools:): the teacher's calls checked and run by Python functions in processes
of their own (a tool that raises, crashes, hangs or reaches for the network), results fed
back until it answers, on the real in-process engine and through a real vLLM server's
tool-call parser; cached so a rerun runs no tool and pays for no call twice; records that
load into TRL with their `tools` column and train on the calls, not on the results."""

import json
import shutil

import psutil
import pytest
import yaml

from synth.card import write_card
from synth.config import ToolsConfig, load_recipe
from synth.curate import curate_key, run_curate
from synth.filters.tools import Tools
from synth.generate import run_generate
from synth.plan import load_plan
from synth.tools import Call, Toolbox, check_tools, parse_calls, parse_required

from conftest import HANG_S, REPO, SERVED_MODEL, make_api_recipe, make_recipe, read_jsonl

IMPL = REPO / "tests" / "data" / "tools_impl.py"


def tool(name):
    return {"type": "function", "function": {"name": name, "parameters": {
        "type": "object", "properties": {"city": {"enum": ["Paris", "Lima"]}}, "required": ["city"]}}}


def tools_section(names, impl=IMPL, **kw):
    return {"definitions": [tool(n) for n in names], "functions": {n: f"{impl}:{n}" for n in names}, **kw}


def test_calls_are_checked_and_run_in_processes_of_their_own(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-tools")
    # timeout_s: what ends the hang; every other tool must finish well within it on a slow machine
    box = Toolbox(ToolsConfig(**tools_section(["weather", "broken", "crash", "hang", "fetch", "keys"], timeout_s=8)))
    city = '{"city": "Lima"}'
    results = box.run([Call("a", "weather", city), Call("b", "broken", city), Call("c", "crash", city),
                       Call("d", "hang", city), Call("e", "fetch", city), Call("f", "keys", city),
                       Call("g", "nope", "{}"), Call("h", "weather", '{"city": "Rome"}'), Call("i", "weather", '{"city": ')])
    assert json.loads(results[0].content) == {"city": "Lima", "temperature": 19, "unit": "celsius"}
    assert results[0].error is None
    assert results[1].error == "tool_error" and "RuntimeError: the weather service for Lima is down" in results[1].content
    assert results[2].error == "tool_error" and "crash crashed (exit status 3)" in results[2].content
    assert results[3].error == "timeout" and "did not finish within 8 s" in results[3].content
    assert results[4].error == "tool_error" and ("unreachable" in results[4].content or "without network" in results[4].content)
    assert json.loads(results[5].content) == []  # no teacher key reaches a tool
    assert [r.error for r in results[6:]] == ["unknown_tool", "invalid_arguments", "invalid_arguments"]
    assert "'Rome' is not one of ['Paris', 'Lima']" in results[7].content
    assert not [p for p in psutil.Process().children(recursive=True) if "synth.toolrun" in " ".join(p.cmdline())]
    # With the network allowed, the same call reaches loopback (where nothing listens on port 9).
    open_box = Toolbox(ToolsConfig(**tools_section(["fetch"], network=True)))
    assert "ConnectionRefusedError" in open_box.run([Call("e", "fetch", city)])[0].content


def test_calls_are_parsed_from_hermes_text_and_from_required_json():
    content, calls = parse_calls('Let me look.<tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call>', "r1")
    assert content == "Let me look." and [(c.name, json.loads(c.arguments)) for c in calls] == [("weather", {"city": "Paris"})]
    assert calls[0].id == parse_calls('<tool_call>{"name": "weather", "arguments": {}}</tool_call>', "r1")[1][0].id
    malformed = 'x <tool_call>{"name": "weather", "arguments": {"city": "Paris"}</tool_call>'
    assert parse_calls(malformed, "r1") == (malformed, [])  # left whole, as vLLM's hermes parser does
    assert [c.name for c in parse_required('[{"name": "weather", "arguments": {"city": "Lima"}}]', "r2")] == ["weather"]
    assert parse_required('[{"name": "weather", "argu', "r2") == []


@pytest.mark.parametrize("change, error", [
    ({"functions": {}}, "no function runs the tool(s) weather"),
    ({"functions": {"weather": f"{IMPL}:weather", "other": f"{IMPL}:hang"}}, "other is not among the tools"),
    ({"functions": {"weather": "tests/data/missing.py:weather"}}, "missing.py does not exist"),
    ({"definitions": [{"name": "weather"}]}, "a tool is {type: function"),
    ({"definitions": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": 3}}}]},
     "not a valid JSON schema"),
    ({"first_choice": "always"}, "first_choice: auto, required or none"),
])
def test_a_bad_tools_section_is_a_clear_error(change, error):
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)").replace("{", r"\{").replace("[", r"\[")):
        check_tools(ToolsConfig(**{**tools_section(["weather"]), **change}))


def test_the_filter_rejects_tool_errors_markup_and_unanswered_calls():
    f = Tools({}, "curate.filters[0]")

    def rec(answer="ok", **use):
        return {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}],
                "tool_use": {"calls": 1, "rounds": 2, "errors": [], "ended": "turns", **use}}

    assert f.check(rec()) is None
    error = {"round": 1, "turn": 1, "name": "hang", "kind": "timeout", "message": "did not finish"}
    assert f.check(rec(errors=[error])).startswith("tool timeout: hang (turn 1, round 1)")
    assert "max_rounds" in f.check(rec(ended="max_rounds"))
    assert f.check(rec('<tool_call>{"name": "x"')).startswith("malformed tool call")
    assert Tools({"require_call": True}, "f").check(rec(calls=0)) == "no tool call (require_call: true)"
    assert Tools({"reject": ["unknown_tool"]}, "f").check(rec(errors=[error])) is None


def test_tools_are_refused_where_they_cannot_work(tmp_path, tiny_model):
    recipe = yaml.safe_load(make_recipe(tmp_path, tiny_model, extra={"tools": tools_section(["weather"])}).read_text())
    recipe["sampling"]["logprobs"] = 5
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(ValueError, match="sampling.logprobs: not captured with tools"):
        load_recipe(tmp_path / "r.yaml")


def _engine_recipe(tmp_path, tiny_model, names, out="out", **tools):
    return load_plan(make_recipe(
        tmp_path, tiny_model, seeds=[{"question": f"Weather {i}?"} for i in range(4)], out=out,
        sampling={"n": 1, "max_tokens": 48},
        extra={"tools": tools_section(names, **{"first_choice": "required", "parallel": False, **tools}),
               "curate": {"filters": ["tools"], "eval_fraction": 0.0}}))


@pytest.mark.slow
def test_the_engine_calls_tools_gets_results_back_answers_and_resumes_without_rerunning(tmp_path, tiny_model, vllm_backend):
    impl = tmp_path / "my_tools.py"
    shutil.copy(IMPL, impl)
    plan = _engine_recipe(tmp_path, tiny_model, ["weather"], impl=impl)
    manifest = run_generate(plan, backend=vllm_backend, progress=False)
    records = read_jsonl(plan.layout.raw)
    assert manifest["counts"]["kept"] == 4 and manifest["conversations"]["tool_calls_run"] == 4
    for r in records:
        user, call, result, answer = [m for m in r["messages"] if m["role"] != "system"]
        (tc,) = call["tool_calls"]
        assert tc["function"]["name"] == "weather" and tc["function"]["arguments"]["city"] in ("Paris", "Lima")
        assert result == {"role": "tool", "tool_call_id": tc["id"], "name": "weather",
                          "content": json.dumps({"city": tc["function"]["arguments"]["city"],
                                                 "temperature": {"Paris": 11, "Lima": 19}[tc["function"]["arguments"]["city"]],
                                                 "unit": "celsius"})}
        assert answer["role"] == "assistant" and answer["content"] and "tool_calls" not in answer
        assert r["tool_use"] == {"calls": 1, "rounds": 2, "errors": [], "ended": "turns", "turn_ids": r["tool_use"]["turn_ids"]}
        assert json.loads(r["tools"]) == [tool("weather")]
    # Records lost (a crash before they were written): the rerun runs no tool, sends no call.
    plan.layout.raw.unlink()
    again = run_generate(plan, backend=vllm_backend, progress=False)
    assert again["conversations"] == {"turns_sent": 0, "user_turns_sent": 0, "tool_calls_run": 0}
    assert [r["messages"] for r in read_jsonl(plan.layout.raw)] == [r["messages"] for r in records]

    # Curated, the records load into datasets with their tools, and the student trains on the
    # call and the answer, never on the tool's result.
    import datasets
    from transformers import AutoTokenizer

    from sft.data import read_conversations, tool_arguments_as_text

    run_curate(plan, progress=False)
    card = write_card(plan).read_text()
    assert "- kept records that call a tool: 4 of 4" in card and "by tool: weather 4" in card
    rows = datasets.load_dataset("json", data_files=str(plan.layout.train), split="train")
    assert json.loads(rows[0]["tools"]) == [tool("weather")]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    (chat, *_) = tool_arguments_as_text(read_conversations(plan.layout.train), tokenizer)
    enc = tokenizer.apply_chat_template(chat, tools=chat.tools, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    trained = tokenizer.decode([t for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m])
    shown = tokenizer.decode(enc["input_ids"])
    assert '<tool_call>{"name": "weather", "arguments": {"city": ' in trained and chat[-1]["content"] in trained
    assert "<tool_response>" in shown and "temperature" in shown and "temperature" not in trained
    assert '"name": "weather"' in shown.split("<|im_start|>user")[0]  # the tools, in the system turn
    # A changed tool function is a changed input: new records (the first calls stay cached).
    curated_with = curate_key(plan)
    impl.write_text(impl.read_text() + "\n# fixed a bug\n")
    changed = load_plan(tmp_path / "recipe.yaml")  # the next command resolves the recipe again
    assert {r.id for r in changed.requests.requests}.isdisjoint(r["id"] for r in records)
    assert curate_key(changed) != curated_with  # `synth run` curates again, not the old records


@pytest.mark.slow
def test_a_hanging_or_crashing_tool_is_an_error_curation_rejects(tmp_path, tiny_model, vllm_backend):
    # A hang always times out, so 1 s; the crash must be seen as a crash however slowly the
    # tool's process starts, so a limit it never reaches.
    for name, kind, limit in (("hang", "timeout", 1), ("crash", "tool_error", 120)):
        plan = _engine_recipe(tmp_path, tiny_model, [name], out=name, timeout_s=limit)
        manifest = run_generate(plan, backend=vllm_backend, progress=False)
        assert manifest["counts"]["kept"] == 4
        records = read_jsonl(plan.layout.raw)
        assert all(r["tool_use"]["errors"][0]["kind"] == kind for r in records)
        assert all(json.loads(r["messages"][-2]["content"])["error"] for r in records)  # fed back to the teacher
        stats = run_curate(plan, progress=False)
        rejected = read_jsonl(plan.layout.rejected)
        assert stats["kept"] == 0 and len(rejected) == 4
        assert all(r["rejection"]["reason"].startswith(f"tool {kind}: {name}") for r in rejected)


@pytest.mark.slow
def test_through_a_vllm_server_calls_are_parsed_answered_and_bad_ones_rejected(tmp_path, vllm_server, monkeypatch):
    monkeypatch.setenv("STILLHOUSE_TEST_KEY", vllm_server.key)
    seeds = [{"question": f"Weather {i}?"} for i in range(3)]
    path = make_api_recipe(tmp_path, vllm_server.url, seeds=seeds, sampling={"n": 1, "max_tokens": 48}, out="good",
                           extra={"tools": tools_section(["weather"], first_choice="required", parallel=False)})
    plan = load_plan(path)
    assert plan.recipe.teacher.model == SERVED_MODEL
    manifest = run_generate(plan, progress=False)
    assert manifest["counts"]["kept"] == 3 and manifest["conversations"]["tool_calls_run"] == 3
    for r in read_jsonl(plan.layout.raw):
        roles = [m["role"] for m in r["messages"] if m["role"] != "system"]
        assert roles == ["user", "assistant", "tool", "assistant"] and r["tool_use"]["errors"] == []
        assert r["messages"][-3]["tool_calls"][0]["function"]["arguments"]["city"] in ("Paris", "Lima")
    # A teacher made to write a malformed call, and one calling a tool that does not exist.
    regexes = {"malformed": r'<tool_call>\{"name": "weather", "arguments": \{"city": "Lima"\}</tool_call>',
               "unknown": r'<tool_call>\{"name": "nope", "arguments": \{\}\}</tool_call>'}
    for out, regex in regexes.items():
        path = make_api_recipe(tmp_path, vllm_server.url, seeds=seeds, sampling={"n": 1, "max_tokens": 64}, out=out,
                               openai={"extra_body": {"structured_outputs": {"regex": regex}}},
                               extra={"tools": tools_section(["weather"], max_rounds=2),
                                      "curate": {"filters": ["tools"], "eval_fraction": 0.0}})
        plan = load_plan(path)
        run_generate(plan, progress=False)
        run_curate(plan, progress=False)
        reasons = {r["rejection"]["reason"].split(":")[0] for r in read_jsonl(plan.layout.rejected)}
        assert reasons == {"malformed tool call" if out == "malformed" else "tool unknown_tool"}, reasons


@pytest.mark.slow
def test_sigkill_while_tools_run_resumes_without_running_a_recorded_call_again(tmp_path, tiny_model, vllm_backend):
    import sys
    from collections import Counter

    from killing import lines, sigkill_when

    plan = _engine_recipe(tmp_path, tiny_model, ["slow"], workers=1)
    data = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    data["seeds"]["path"] = str(tmp_path / "many.jsonl")
    (tmp_path / "many.jsonl").write_text("".join(f'{{"question": "Weather {i}?"}}\n' for i in range(8)))
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(data))
    plan = load_plan(tmp_path / "recipe.yaml")
    results = plan.layout.tool_results
    # Killed while the tools of the first round run, one at a time (two of eight recorded).
    sigkill_when([sys.executable, "-m", "synth.cli", "generate", str(tmp_path / "recipe.yaml"), "--no-progress"],
                 lambda: lines(results) >= 2, HANG_S)
    recorded = lines(results)
    assert 2 <= recorded < 8 and not read_jsonl(plan.layout.raw)
    manifest = run_generate(plan, backend=vllm_backend, progress=False)
    assert manifest["counts"]["kept"] == 8
    assert manifest["conversations"]["tool_calls_run"] == 8 - recorded  # the recorded ones were not run again
    assert manifest["conversations"]["turns_sent"] == 8  # the first round's calls came from the cache
    assert Counter(r["id"] for r in read_jsonl(results)).most_common(1)[0][1] == 1
    assert all(r["tool_use"]["calls"] == 1 and not r["tool_use"]["errors"] for r in read_jsonl(plan.layout.raw))


def test_tiny_model_rebuilds_a_model_whose_template_predates_tools(tmp_path, capsys):
    from synth.cli import main
    from synth.tiny_model import CHATML_TEMPLATE

    out = tmp_path / "tiny"
    assert main(["tiny-model", str(out)]) == 0
    assert main(["tiny-model", str(out)]) == 0
    assert "a model is already there" in capsys.readouterr().out
    template = out / "chat_template.jinja"
    template.write_text(CHATML_TEMPLATE.replace("{% if tools %}", "{% if false %}"))  # as built before tools
    assert main(["tiny-model", str(out)]) == 0
    assert "older chat template" in capsys.readouterr().out and template.read_text() == CHATML_TEMPLATE
