"""Multi-turn conversations (conversation.turns > 1) with the real in-process engine playing
both the teacher and the user simulator: rounds, caching by request id over the whole
history, a turn that fails mid-conversation, and a SIGKILL mid-conversation."""

import sys
from collections import Counter

import pytest
import yaml

from synth.conversation import next_user_message, transcript
from synth.generate import run_generate
from synth.plan import load_plan

from conftest import HANG_S, make_recipe, read_jsonl
from killing import lines, sigkill_when

SYNTH = [sys.executable, "-m", "synth.cli"]


def test_the_simulators_reply_and_the_transcript():
    assert next_user_message("  Can you give an example?  ", "[END]") == "Can you give an example?"
    assert next_user_message("User: and then?", "[END]") == "and then?"
    assert next_user_message("Thanks, that is all. [END]", "[END]") is None
    assert next_user_message("   ", "[END]") is None
    assert transcript([{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                       {"role": "assistant", "content": "a"}]) == "User: q\n\nAssistant: a"


def _recipe(tmp_path, tiny_model, turns=3, max_tokens=8, out="out", **conversation):
    return make_recipe(tmp_path, tiny_model, sampling={"n": 1, "max_tokens": max_tokens}, out=out,
                       extra={"conversation": {"turns": turns, "user_max_tokens": 8, **conversation}})


def _check_conversations(records, turns_log, turns):
    assert Counter(r["id"] for r in read_jsonl(turns_log)).most_common(1)[0][1] == 1  # no turn paid twice
    for r in records:
        roles = [m["role"] for m in r["messages"] if m["role"] != "system"]
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        conv = r["conversation"]
        assert conv["turns"] == roles.count("assistant") == len(conv["turn_ids"]) == len(set(conv["turn_ids"]))
        assert conv["ended"] in ("turns", "stop") and (conv["ended"] == "stop" or conv["turns"] == turns)


@pytest.mark.slow
def test_conversations_are_generated_in_rounds_and_reuse_every_cached_turn(tmp_path, tiny_model, vllm_backend):
    plan = load_plan(_recipe(tmp_path, tiny_model))
    manifest = run_generate(plan, backend=vllm_backend, progress=False)
    records = read_jsonl(plan.layout.raw)
    assert manifest["counts"]["kept"] == 6 and len(records) == 6
    _check_conversations(records, plan.layout.turns, 3)
    assert sum(r["conversation"]["turns"] for r in records) == manifest["conversations"]["turns_sent"]
    assert all(r["usage"]["completion_tokens"] > 0 for r in records)
    # A rerun sends nothing.
    again = run_generate(plan, backend=vllm_backend, progress=False)
    assert again["counts"]["cached"] == 6
    # One more turn: new conversations (new ids), but every turn they share is reused: only
    # the fourth turns (and the simulator's third follow-ups) are sent.
    longer = load_plan(_recipe(tmp_path, tiny_model, turns=4))
    assert {r.id for r in longer.requests.requests}.isdisjoint(r["id"] for r in records)
    manifest = run_generate(longer, backend=vllm_backend, progress=False)
    reached = sum(1 for r in records if r["conversation"]["ended"] == "turns")
    assert manifest["conversations"] == {"turns_sent": reached, "user_turns_sent": reached}
    new = {r.id for r in longer.requests.requests}
    _check_conversations([r for r in read_jsonl(longer.layout.raw) if r["id"] in new], longer.layout.turns, 4)


@pytest.mark.slow
def test_a_turn_that_fails_mid_conversation_is_a_failure_naming_the_turn(tmp_path, tiny_model, vllm_backend):
    """Long answers outgrow the engine's 512-token context by the third turn: those
    conversations fail at that turn (the turns before stay cached), the others are kept."""
    plan = load_plan(_recipe(tmp_path, tiny_model, turns=6, max_tokens=120, user_max_tokens=120))
    manifest = run_generate(plan, backend=vllm_backend, progress=False)
    failures = read_jsonl(plan.layout.failures)
    c = manifest["counts"]
    assert failures and c["requests"] == c["kept"] + c["failed"] + c["pending"]
    for f in failures:
        assert f["error"]["type"] == "ConversationTurnFailed" and f["error"]["turn"] >= 2
        assert f"turn {f['error']['turn']} (" in f["error"]["message"]
        assert f["error"]["turns_done"] >= 1
    _check_conversations(read_jsonl(plan.layout.raw), plan.layout.turns, 6)


@pytest.mark.slow
def test_sigkill_mid_conversation_resumes_without_paying_for_a_turn_twice(tmp_path, tiny_model, vllm_backend):
    path = _recipe(tmp_path, tiny_model, turns=4)
    data = yaml.safe_load(path.read_text())
    data["seeds"]["path"] = str(tmp_path / "many.jsonl")
    (tmp_path / "many.jsonl").write_text("".join(f'{{"question": "What is {i} times {i}?"}}\n' for i in range(60)))
    path.write_text(yaml.safe_dump(data))
    plan = load_plan(path)
    turns = plan.layout.turns
    # Killed once the second round of teacher turns is under way.
    sigkill_when([*SYNTH, "generate", str(path), "--no-progress"], lambda: lines(turns) >= 60 + 10, HANG_S)
    before = lines(turns)
    # Killed mid-way: no conversation had reached its fourth turn; the few the simulator ended
    # early (an empty reply: "stop") were finished, and are kept as they are.
    early = read_jsonl(plan.layout.raw)
    assert len(early) < 60 and all(r["conversation"]["ended"] == "stop" for r in early)
    # Resumed on the session's engine (the same teacher): a second in-process engine closed
    # here would take vLLM's process-wide state down with it.
    manifest = run_generate(plan, backend=vllm_backend, progress=False)
    assert manifest["counts"]["kept"] == 60
    assert manifest["conversations"]["turns_sent"] == lines(turns) - before
    records = read_jsonl(plan.layout.raw)
    assert len(records) == len({r["id"] for r in records}) == 60  # nothing finished before the kill twice
    _check_conversations(records, turns, 4)
    assert Counter(r["id"] for r in read_jsonl(plan.layout.user_turns)).most_common(1)[0][1] == 1


@pytest.mark.slow
def test_another_model_can_play_the_user(tmp_path, tiny_model, vllm_backend, vllm_server, monkeypatch):
    """conversation.user_teacher: the simulator is an API teacher (the vLLM server), the
    teacher the in-process engine; each keeps its own cache."""
    from conftest import SERVED_MODEL, SERVER_KEY

    monkeypatch.setenv("STILLHOUSE_TEST_KEY", SERVER_KEY)
    user = {"backend": "openai", "model": SERVED_MODEL,
            "openai": {"base_url": vllm_server.url, "api_key_env": "STILLHOUSE_TEST_KEY"}}
    plan = load_plan(_recipe(tmp_path, tiny_model, turns=2, user_teacher=user))
    manifest = run_generate(plan, backend=vllm_backend, progress=False)
    assert manifest["counts"]["kept"] == 6
    user_turns = read_jsonl(plan.layout.user_turns)
    assert user_turns and all(r["teacher"]["backend"] == "openai" for r in user_turns)
    assert all(r["teacher"]["backend"] == "vllm" for r in read_jsonl(plan.layout.turns))
    _check_conversations(read_jsonl(plan.layout.raw), plan.layout.turns, 2)
    assert SERVER_KEY not in plan.layout.config.read_text()
