"""Batch mode (teacher.openai.batch) with the official openai client against a local Files +
Batch API server (tests/batchserver.py) whose batch lines are answered by the session's real
vLLM server. What the server executed per request is what a provider bills: every test checks
that no request ran twice."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from synth.backends.batch import read_ledger
from synth.generate import dry_run, run_generate
from synth.plan import load_plan

from conftest import HANG_S, SERVER_KEY, make_api_recipe, read_jsonl
from killing import sigkill_when

pytestmark = pytest.mark.slow

SYNTH = [sys.executable, "-m", "synth.cli"]
PRICES = {"price_input_per_mtok": 2.0, "price_output_per_mtok": 8.0}


@pytest.fixture(autouse=True)
def server(batch_server, monkeypatch):
    monkeypatch.setenv("STILLHOUSE_TEST_KEY", SERVER_KEY)
    return batch_server


def _recipe(tmp_path, server, questions=None, **openai):
    seeds = [{"question": q} for q in (questions or [f"What is {i} times {i}?" for i in range(7)])]
    return make_api_recipe(tmp_path, server.url, seeds=seeds, sampling={"n": 1, "temperature": 0.0},
                           openai={"batch": True, "batch_poll_s": 0.05, **PRICES, **openai})


def _set_batch(path, on: bool) -> None:
    recipe = yaml.safe_load(path.read_text())
    recipe["teacher"]["openai"]["batch"] = on
    path.write_text(yaml.safe_dump(recipe))


def _no_request_ran_twice(server) -> None:
    assert server.executed and max(server.executed.values()) == 1, server.executed


def _counts_add_up(manifest) -> None:
    c = manifest["counts"]
    assert c["requests"] == c["kept"] + c["failed"] + c["pending"]


def test_batch_mode_answers_as_sync_mode_does_and_switches_with_one_key(tmp_path, server):
    path = _recipe(tmp_path, server, batch_max_requests=3)
    plan = load_plan(path)
    manifest = run_generate(plan, progress=False)
    raw = read_jsonl(plan.layout.raw)
    assert len(raw) == 7 and manifest["status"] == "complete" and manifest["counts"]["failed"] == 0
    assert server.uploads == 3 and server.creates == 3  # 3 + 3 + 1 requests
    assert len({r["batch_id"] for r in raw}) == 3
    assert all(r["messages"][-1]["role"] == "assistant" and r["usage"]["completion_tokens"] > 0 for r in raw)
    _no_request_ran_twice(server)
    _counts_add_up(manifest)
    # The batch price: half the synchronous one, on the same tokens.
    assert manifest["cost_usd"] == pytest.approx(0.5 * manifest["cost_usd_sync"], abs=1e-6) and manifest["cost_usd"] > 0
    assert manifest["batches"]["running"] == [] and len(manifest["batches"]["collected"]) == 3

    # The same requests and ids in synchronous mode: switching keeps the finished work ...
    _set_batch(path, False)
    sync = load_plan(path)
    assert [r.id for r in sync.requests.requests] == [r.id for r in plan.requests.requests]
    again = run_generate(sync, progress=False)
    assert again["counts"]["cached"] == 7 and again["counts"]["generated"] == 0 and server.sync_calls == 0
    # ... and the answers are the ones synchronous calls give (greedy, same server).
    fresh = yaml.safe_load(path.read_text())
    fresh["output"]["dir"] = str(tmp_path / "sync-out")
    (tmp_path / "sync.yaml").write_text(yaml.safe_dump(fresh))
    sync_fresh = load_plan(tmp_path / "sync.yaml")
    run_generate(sync_fresh, progress=False)
    assert server.sync_calls == 7
    by_id = {r["id"]: r["messages"][-1]["content"] for r in read_jsonl(sync_fresh.layout.raw)}
    assert {r["id"]: r["messages"][-1]["content"] for r in raw} == by_id
    # A rerun in batch mode sends nothing.
    _set_batch(path, True)
    run_generate(load_plan(path), progress=False)
    assert server.uploads == 3 and server.creates == 3
    # Records lost after their batch was collected (a machine crash before the fsync): the
    # next run downloads that batch's output again, and submits nothing.
    lines = plan.layout.raw.read_text().splitlines(keepends=True)
    plan.layout.raw.write_text("".join(lines[:4]))
    manifest = run_generate(load_plan(path), progress=False)
    assert manifest["counts"]["generated"] == 3 and manifest["counts"]["kept"] == 7
    assert server.uploads == 3 and server.creates == 3
    assert {r["id"]: r["messages"][-1]["content"] for r in read_jsonl(plan.layout.raw)} == by_id
    _no_request_ran_twice(server)


def test_error_lines_and_missing_results_are_failures_that_the_next_run_resends(tmp_path, server):
    questions = ["What is 1 plus 1? [bad-request]", "What is 2 plus 2? [server-error]", "What is 3 plus 3? [no-result]",
                 "What is 4 plus 4?", "What is 5 plus 5?"]
    plan = load_plan(_recipe(tmp_path, server, questions))
    manifest = run_generate(plan, progress=False)
    _counts_add_up(manifest)
    assert manifest["counts"]["kept"] == 2 and manifest["counts"]["failed"] == 3
    failures = {row["seed"]["fields"]["question"]: row["error"] for row in read_jsonl(plan.layout.failures)}
    batch_id = next(iter(server.batches))
    assert failures[questions[0]]["type"] == "BatchRequest400" and failures[questions[0]]["status"] == 400
    assert "max_tokens" in failures[questions[0]]["message"]
    assert failures[questions[1]]["type"] == "BatchRequest500" and failures[questions[1]]["status"] == 500
    assert failures[questions[2]]["type"] == "BatchCompleted" and "without a result" in failures[questions[2]]["message"]
    assert all(e["batch_id"] == batch_id for e in failures.values())

    # The next run resends the three (and only them), in a batch of their own.
    again = run_generate(plan, progress=False)
    assert server.creates == 2
    second = server.batches[sorted(server.batches)[-1]]
    assert second["request_counts"]["total"] == 3
    assert again["counts"]["failed"] == 3 and again["counts"]["kept"] == 2
    _no_request_ran_twice(server)


def test_a_batch_that_expires_half_done_keeps_its_half_and_the_rest_is_resent_once(tmp_path, server):
    plan = load_plan(_recipe(tmp_path, server, [f"Name the number {i}." for i in range(6)]))
    server.expire_after = 3
    manifest = run_generate(plan, progress=False)
    assert manifest["counts"]["kept"] == 3 and manifest["counts"]["failed"] == 3
    failures = read_jsonl(plan.layout.failures)
    assert {f["error"]["type"] for f in failures} == {"BatchExpired"}
    assert "ended expired before this request ran" in failures[0]["error"]["message"]
    manifest = run_generate(plan, progress=False)
    assert manifest["counts"]["kept"] == 6 and manifest["counts"]["failed"] == 0 and manifest["status"] == "complete"
    assert server.creates == 2 and sorted(server.executed) == sorted(r["id"] for r in read_jsonl(plan.layout.raw))
    _no_request_ran_twice(server)
    assert not read_jsonl(plan.layout.failures)


@pytest.mark.parametrize("hang", ["upload", "create", "create-late"])
def test_a_kill_while_uploading_or_creating_never_submits_twice(tmp_path, server, hang):
    """The server does the work, then the client is killed before it hears back: the next run
    finds the file by its name and the batch by its metadata instead of sending them again.
    create-late: the server creates the batch only after the rerun's first listing; the rerun
    looks again within the grace period instead of creating a second one."""
    path = _recipe(tmp_path, server, batch_create_grace_s=120)
    plan = load_plan(path)
    {"upload": server.hang_upload, "create": server.hang_create, "create-late": server.create_late}[hang].set()
    env = {**os.environ, "STILLHOUSE_TEST_KEY": SERVER_KEY}
    sigkill_when([*SYNTH, "generate", str(path), "--no-progress"], server.hung.is_set, HANG_S, env=env)
    server.hang_upload.clear()
    server.hang_create.clear()
    server.create_late.clear()
    server.release()
    assert server.uploads == 1 and server.creates == (1 if hang == "create" else 0)
    manifest = run_generate(plan, progress=False)
    assert server.uploads == 1 and server.creates == 1
    assert manifest["counts"]["kept"] == 7 and len(read_jsonl(plan.layout.raw)) == 7
    _no_request_ran_twice(server)
    events = [e["event"] for e in read_jsonl(plan.layout.batches)]
    assert events.count("part") == 1 and events.count("submitted") == 1


def test_a_kill_while_polling_reattaches_and_no_wait_returns_at_once(tmp_path, server):
    path = _recipe(tmp_path, server, batch_max_requests=4)
    plan = load_plan(path)
    server.hold_batches.set()
    env = {**os.environ, "STILLHOUSE_TEST_KEY": SERVER_KEY}
    sigkill_when([*SYNTH, "generate", str(path), "--no-progress"],
                 lambda: sum(p.batch_id is not None for p in read_ledger(plan.layout.batches).values()) == 2, 120, env=env)
    assert server.creates == 2 and not read_jsonl(plan.layout.raw)

    # --no-wait re-attaches, finds both still running, and returns: nothing pending is a failure.
    out = subprocess.run([*SYNTH, "generate", str(path), "--no-progress", "--no-wait"], env=env, capture_output=True,
                         text=True, timeout=HANG_S)
    assert out.returncode == 0, out.stderr
    assert "pending 7" in out.stdout and "2 running batch(es)" in out.stdout
    manifest = json.loads(plan.layout.manifest.read_text())
    assert manifest["status"] == "pending" and manifest["counts"]["pending"] == 7 and manifest["counts"]["failed"] == 0
    assert sorted(manifest["batches"]["running"]) == sorted(server.batches)
    assert SERVER_KEY not in out.stdout + out.stderr

    server.hold_batches.clear()
    manifest = run_generate(plan, progress=False)
    assert server.creates == 2 and server.uploads == 2
    assert manifest["counts"]["kept"] == 7 and manifest["status"] == "complete"
    _no_request_ran_twice(server)


def test_a_wrong_key_stops_at_the_first_call_and_is_never_written(tmp_path, server):
    path = _recipe(tmp_path, server)
    env = {**os.environ, "STILLHOUSE_TEST_KEY": "sk-wrong-key-0123456789abcdef"}
    out = subprocess.run([*SYNTH, "generate", str(path), "--no-progress"], env=env, capture_output=True, text=True,
                         timeout=HANG_S)
    assert out.returncode != 0
    assert "401" in out.stderr and "STILLHOUSE_TEST_KEY" in out.stderr
    assert "sk-wrong-key" not in out.stdout + out.stderr
    assert server.uploads == 0 and server.creates == 0
    for f in (tmp_path / "out").rglob("*"):
        if f.is_file():
            assert "sk-wrong-key" not in f.read_text(errors="replace")


def test_dry_run_prices_batch_and_sync(tmp_path, server):
    plan = load_plan(_recipe(tmp_path, server))
    r = dry_run(plan)
    assert r["batch"] and r["to_send"] == 7
    assert r["cost_usd_max"] == pytest.approx(0.5 * r["cost_usd_max_sync"]) and r["cost_usd_max"] > 0
    assert server.uploads == 0
    _set_batch(tmp_path / "recipe.yaml", False)
    with pytest.raises(ValueError, match="--no-wait: only batch mode"):
        run_generate(load_plan(tmp_path / "recipe.yaml"), progress=False, wait=False)
