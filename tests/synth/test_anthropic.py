"""The anthropic teacher (Messages API, Message Batches) with the official `anthropic` SDK
against tests/batchserver.py, whose Messages calls are answered by the session's real vLLM
server (vLLM serves /v1/messages). Retries and batch integrity are checked from what the
server saw and executed."""

import logging
import os
import subprocess
import sys

import pytest
import yaml

from synth.config import load_recipe
from synth.generate import run_generate
from synth.plan import load_plan

from conftest import HANG_S, SERVED_MODEL, SERVER_KEY, make_recipe, read_jsonl
from killing import sigkill_when

pytestmark = pytest.mark.slow

SYNTH = [sys.executable, "-m", "synth.cli"]


@pytest.fixture(autouse=True)
def server(batch_server, monkeypatch):
    monkeypatch.setenv("STILLHOUSE_ANTHROPIC_KEY", SERVER_KEY)
    return batch_server


def _recipe(tmp_path, server, questions, out="out", **anthropic):
    path = make_recipe(tmp_path, SERVED_MODEL, seeds=[{"question": q} for q in questions], out=out,
                       sampling={"n": 1, "temperature": 0.0, "max_tokens": 8})
    recipe = yaml.safe_load(path.read_text())
    recipe["teacher"] = {"backend": "anthropic", "model": SERVED_MODEL, "anthropic": {
        "base_url": server.root, "api_key_env": "STILLHOUSE_ANTHROPIC_KEY", "backoff_s": 0.05, "batch_poll_s": 0.05,
        "price_input_per_mtok": 3.0, "price_output_per_mtok": 15.0, **anthropic}}
    target = tmp_path / f"{out}.yaml"
    target.write_text(yaml.safe_dump(recipe))
    return target


def _no_key_in(directory, *texts):
    for f in directory.rglob("*"):
        if f.is_file():
            assert SERVER_KEY not in f.read_text(errors="replace"), f"key leaked into {f}"
    for text in texts:
        assert SERVER_KEY not in text


def test_messages_api_with_system_prompt_429_and_529_retried(tmp_path, server):
    questions = ["What is 2 plus 2?", "Name a colour. [429]", "Name a fruit. [529]", "Say hello."]
    plan = load_plan(_recipe(tmp_path, server, questions))
    manifest = run_generate(plan, progress=False)
    raw = read_jsonl(plan.layout.raw)
    assert manifest["counts"]["kept"] == 4 and manifest["counts"]["failed"] == 0
    assert all(r["teacher"]["backend"] == "anthropic" and r["finish_reason"] in ("stop", "length") for r in raw)
    assert all(r["usage"]["prompt_tokens"] > 0 and r["usage"]["completion_tokens"] > 0 for r in raw)
    assert all(r["messages"][-1]["content"] for r in raw)
    stats = manifest["teacher_stats"]
    assert stats["retries"] == 2 and stats["rate_limited"] == 1
    # The Messages API's shape: the system prompt as `system`, no seed, no top_p at 1.0.
    body = server.sync_bodies[0]
    assert body["system"] == "You are a terse assistant." and [m["role"] for m in body["messages"]] == ["user"]
    assert "seed" not in body and "top_p" not in body and body["max_tokens"] == 8 and body["temperature"] == 0.0
    assert len(server.sync_bodies) == 6  # 4 requests + 2 retries
    _no_key_in(tmp_path)


def test_a_wrong_key_stops_the_run_with_one_message(tmp_path, server):
    path = _recipe(tmp_path, server, ["Say hello."])
    env = {**os.environ, "STILLHOUSE_ANTHROPIC_KEY": "sk-ant-wrong-0123456789abcdef"}
    out = subprocess.run([*SYNTH, "generate", str(path), "--no-progress"], env=env, capture_output=True, text=True,
                         timeout=HANG_S)
    assert out.returncode != 0 and "401" in out.stderr and "STILLHOUSE_ANTHROPIC_KEY" in out.stderr
    assert "sk-ant-wrong" not in out.stdout + out.stderr
    for f in (tmp_path / "out").rglob("*"):
        if f.is_file():
            assert "sk-ant-wrong" not in f.read_text(errors="replace")


def test_logprobs_are_refused_for_an_anthropic_teacher(tmp_path, server):
    path = _recipe(tmp_path, server, ["Say hello."])
    with pytest.raises(ValueError, match="sampling.logprobs: the anthropic teacher gives no logprobs"):
        load_recipe(path, ["sampling.logprobs=5"])


def test_message_batches_answer_as_sync_does_and_account_for_every_request(tmp_path, server):
    questions = [f"What is {i} times {i}?" for i in range(5)] + ["Count to three. [bad-request]", "Spell cat. [no-result]"]
    path = _recipe(tmp_path, server, questions, batch=True, batch_max_requests=4)
    plan = load_plan(path)
    manifest = run_generate(plan, progress=False)
    c = manifest["counts"]
    assert c["kept"] == 5 and c["failed"] == 2 and c["requests"] == c["kept"] + c["failed"] + c["pending"]
    assert server.creates == 2 and len(server.message_batches) == 2
    failures = {f["seed"]["fields"]["question"]: f["error"] for f in read_jsonl(plan.layout.failures)}
    assert failures[questions[5]]["type"] == "BatchRequestErrored" and "max_tokens" in failures[questions[5]]["message"]
    assert failures[questions[5]]["code"] == "invalid_request_error"
    assert failures[questions[6]]["type"] == "BatchEnded" and "without a result" in failures[questions[6]]["message"]
    assert manifest["cost_usd"] == pytest.approx(0.5 * manifest["cost_usd_sync"], abs=1e-6) and manifest["cost_usd"] > 0
    raw = read_jsonl(plan.layout.raw)
    assert all(r["batch_id"].startswith("msgbatch-") for r in raw)
    assert max(server.executed.values()) == 1

    # Synchronous mode plans the same ids and gives the same (greedy) answers.
    sync = load_plan(_recipe(tmp_path, server, questions[:5], out="sync"))
    assert {r.id for r in sync.requests.requests} <= {r["id"] for r in raw}
    run_generate(sync, progress=False)
    by_id = {r["id"]: r["messages"][-1]["content"] for r in raw}
    assert all(by_id[r["id"]] == r["messages"][-1]["content"] for r in read_jsonl(sync.layout.raw))
    _no_key_in(tmp_path)


def test_a_message_batch_that_expires_and_a_kill_while_creating_are_recovered(tmp_path, server, caplog):
    questions = [f"Name the number {i}." for i in range(6)]
    path = _recipe(tmp_path, server, questions, batch=True, batch_create_grace_s=120)
    plan = load_plan(path)
    # Killed while asking for the batch; the server creates it only after the rerun's first
    # listing (a provider finishing a request whose client is gone). Message batches have no
    # metadata, so the rerun finds it by elimination (new, unrecorded, 6 requests), looking
    # again within the grace period instead of paying for a second batch.
    server.expire_after = 3
    server.create_late.set()
    env = {**os.environ, "STILLHOUSE_ANTHROPIC_KEY": SERVER_KEY}
    sigkill_when([*SYNTH, "generate", str(path), "--no-progress"], server.hung.is_set, HANG_S, env=env)
    server.create_late.clear()
    assert server.creates == 0
    with caplog.at_level(logging.INFO, logger="synth.backends.batch"):
        manifest = run_generate(plan, progress=False)
    assert server.creates == 1
    assert "never heard back and no such batch is listed yet" in caplog.text
    assert manifest["counts"]["kept"] == 3 and manifest["counts"]["failed"] == 3
    assert {f["error"]["type"] for f in read_jsonl(plan.layout.failures)} == {"BatchExpired"}
    # The next run sends the expired three, once.
    manifest = run_generate(plan, progress=False)
    assert server.creates == 2 and manifest["counts"]["kept"] == 6 and manifest["status"] == "complete"
    assert sorted(server.executed) == sorted(r["id"] for r in read_jsonl(plan.layout.raw))
    assert max(server.executed.values()) == 1
