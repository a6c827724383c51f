"""The openai backend against a real vLLM OpenAI-compatible server, directly and through a
fault-injecting proxy. Assertions come from the proxy's own log, not from sleeps."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synth.backends.openai_api import OpenAIBackend
from synth.generate import run_generate
from synth.plan import load_plan
from synth.requests import request_seed

from conftest import HANG_S, SERVER_KEY, make_api_recipe, read_jsonl
from faultproxy import FaultProxy
from killing import lines, sigkill_when

pytestmark = pytest.mark.slow

SYNTH = [sys.executable, "-m", "synth.cli"]


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("STILLHOUSE_TEST_KEY", SERVER_KEY)


def _env(key: str = SERVER_KEY) -> dict:
    return {**os.environ, "STILLHOUSE_TEST_KEY": key}


def _assert_key_nowhere(out_dir: Path, *texts: str, key: str = SERVER_KEY) -> None:
    for path in out_dir.rglob("*"):
        if path.is_file():
            assert key not in path.read_text(errors="replace"), f"API key leaked into {path}"
    for text in texts:
        assert key not in text, "API key leaked into console output"


def test_end_to_end_against_real_vllm_server(tmp_path, vllm_server, key_env):
    import datasets  # the data extra, installed by make setup
    plan = load_plan(make_api_recipe(tmp_path, vllm_server.url))
    manifest = run_generate(plan, progress=False)
    records = read_jsonl(tmp_path / "out" / "raw.jsonl")
    assert manifest["counts"]["kept"] == 12 and manifest["counts"]["failed"] == 0
    assert sorted(r["id"] for r in records) == sorted(r.id for r in plan.requests.requests)
    rec = records[0]
    assert rec["teacher"] == {
        "backend": "openai", "model": "tiny", "revision": None, "base_url": vllm_server.url, "fingerprint": None,
    }
    assert rec["messages"][-1]["role"] == "assistant" and rec["finish_reason"] in ("stop", "length")
    assert 0 < rec["usage"]["completion_tokens"] <= 8 and rec["usage"]["prompt_tokens"] > 5
    assert manifest["tokens"]["completion"] == sum(r["usage"]["completion_tokens"] for r in records)
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "out" / "raw.jsonl"), split="train")
    assert len(ds) == 12
    # Resume: nothing left to send.
    again = run_generate(plan, progress=False)
    assert again["counts"]["cached"] == 12 and again["counts"]["generated"] == 0
    _assert_key_nowhere(tmp_path / "out")


def test_base_url_is_part_of_the_request_id(tmp_path, vllm_server, key_env):
    a = load_plan(make_api_recipe(tmp_path, vllm_server.url))
    b = load_plan(make_api_recipe(tmp_path, vllm_server.url.replace("127.0.0.1", "localhost")))
    assert not {r.id for r in a.requests.requests} & {r.id for r in b.requests.requests}


FAULTS = ["429", "500", "503", "reset", "hang", "badjson", "always500"]


def test_faults_are_retried_bounded_and_accounted_for(tmp_path, vllm_server, key_env, monkeypatch):
    passed, pauses = [], []  # when requests left the client's gate; when a pause began, its length
    gate, pause = OpenAIBackend._gate, OpenAIBackend._pause

    async def timed_gate(self, req):
        charged = await gate(self, req)
        passed.append(time.monotonic())
        return charged

    def timed_pause(self, seconds):
        pauses.append((time.monotonic(), seconds))
        pause(self, seconds)

    monkeypatch.setattr(OpenAIBackend, "_gate", timed_gate)
    monkeypatch.setattr(OpenAIBackend, "_pause", timed_pause)
    seeds = [{"question": f"[{fault}] question {i}"} for fault in FAULTS for i in range(2)]
    seeds += [{"question": f"plain question {i}"} for i in range(4)]
    with FaultProxy(vllm_server.url) as proxy:
        plan = load_plan(make_api_recipe(
            tmp_path, proxy.url, seeds=seeds, sampling={"n": 1},
            # a [hang] is given up after timeout_s; a clean request must never be, however slow
            # the machine (it is then sent twice)
            openai={"max_retries": 3, "timeout_s": 10.0, "max_concurrency": 8},
        ))
        manifest = run_generate(plan, progress=False)
        by_key = proxy.attempts_by_key()

        c = manifest["counts"]
        assert c["requests"] == 18 and c["kept"] + c["failed"] == 18 and c["pending"] == 0
        assert c["failed"] == 2  # the [always500] ones, after their retries
        records = read_jsonl(tmp_path / "out" / "raw.jsonl")
        ids = [r["id"] for r in records]
        assert len(ids) == len(set(ids)) == 16, "no duplicates"
        failures = read_jsonl(tmp_path / "out" / "failures.jsonl")
        assert len(failures) == 2
        assert all(f["error"]["status"] == 500 and f["error"]["attempts"] == 4 for f in failures)
        assert all("[always500]" in f["seed"]["fields"]["question"] for f in failures)

        for attempts in by_key.values():
            marker = FaultProxy.marker_of(attempts[0].body)
            if marker is None:
                assert len(attempts) == 1, "a clean request is sent once"
            elif marker == "always500":
                assert len(attempts) == 4, "max_retries=3: four attempts, then a failure record"
            else:
                assert len(attempts) == 2, f"[{marker}]: one fault, one retry"
                assert attempts[1].status == 200
            if marker == "429":
                # Retry-After: 1 honoured: the retry came at least a second after the 429.
                assert attempts[1].received - attempts[0].answered >= 0.95
        # The 429's Retry-After paused every sender, not only the one that got it: no request
        # left the client's gate while the pause lasted. (Timed at the client, where the pause
        # is: a request that left just before it may reach the proxy any time later on a busy
        # machine, so the proxy's clock cannot tell those apart; a CI run failed that way.)
        start, seconds = pauses[0]
        assert seconds >= 0.95, pauses
        assert not [t for t in passed if start < t < start + seconds - 0.01], (start, seconds, passed)
        assert [t for t in passed if t >= start + seconds - 0.01], "requests went on after the pause"

        # The ledger can be retried on its own once the endpoint heals.
        proxy.faults_enabled = False
        before = len(proxy.hits)
        healed = run_generate(plan, progress=False, only_failed=True)
        assert len(proxy.hits) - before == 2
        assert healed["counts"]["failed"] == 0 and healed["counts"]["kept"] == 18
    assert read_jsonl(tmp_path / "out" / "failures.jsonl") == []


def test_requests_per_minute_limit_holds_in_every_window(tmp_path, vllm_server, key_env, monkeypatch):
    """The client's schedule (when its rpm bucket lets each request go) keeps the limit in every
    window. It is measured where it is decided: the proxy's receive times would add the
    scheduling delays of a busy machine (a late receipt makes the next gap look short)."""
    from synth.ratelimit import TokenBucket

    granted: list[float] = []
    acquire = TokenBucket.acquire

    async def recording(self, amount=1.0):
        await acquire(self, amount)
        granted.append(time.monotonic())

    monkeypatch.setattr(TokenBucket, "acquire", recording)
    rate, burst = 10.0, 2  # rpm 600
    seeds = [{"question": f"rate limited question {i}"} for i in range(30)]
    with FaultProxy(vllm_server.url) as proxy:
        plan = load_plan(make_api_recipe(
            tmp_path, proxy.url, seeds=seeds, sampling={"n": 1},
            openai={"rpm": rate * 60, "burst": burst, "max_concurrency": 16},
        ))
        run_generate(plan, progress=False)
        received = sorted(h.received for h in proxy.hits)
    assert len(received) == len(granted) == 30, "one grant per request, each request sent once"
    times = sorted(granted)
    worst = 0.0
    for i in range(len(times)):
        for j in range(i, len(times)):
            # j - i + 1 requests let go within times[j] - times[i] seconds.
            excess = (j - i + 1) - (burst + rate * (times[j] - times[i]))
            worst = max(worst, excess)
    assert worst <= 0.01, f"rpm limit exceeded by {worst:.2f} requests beyond the burst"
    # and it really was limiting, as the server saw it
    assert received[-1] - received[0] >= (30 - burst) / rate - 0.2


def test_401_stops_the_run_at_once_with_one_clear_message(tmp_path, vllm_server):
    wrong = "sk-wrong-KEY-for-this-test-987654321"
    seeds = [{"question": f"question {i}"} for i in range(50)]
    with FaultProxy(vllm_server.url) as proxy:
        recipe = make_api_recipe(tmp_path, proxy.url, seeds=seeds, openai={"max_concurrency": 4})
        res = subprocess.run([*SYNTH, "generate", str(recipe), "--no-progress"],
                             capture_output=True, text=True, env=_env(wrong), timeout=HANG_S)
        sent = len(proxy.hits)
    assert res.returncode == 2
    assert "Unclosed" not in res.stderr and "Traceback" not in res.stderr, res.stderr
    err = [line for line in res.stderr.splitlines() if line.startswith("synth: error:")]
    assert len(err) == 1 and err[0].startswith("synth: error: teacher:"), res.stderr
    assert "401" in err[0] and "check the API key ($STILLHOUSE_TEST_KEY)" in err[0]
    assert sent <= 4, f"{sent} requests sent after a 401; the run must stop at once"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["counts"]["failed"] == 0
    _assert_key_nowhere(tmp_path / "out", res.stdout, res.stderr, key=wrong)


def test_key_never_reaches_files_or_logs(tmp_path, vllm_server):
    seeds = [{"question": "[500] one"}, {"question": "[always500] two"}, {"question": "three"}]
    with FaultProxy(vllm_server.url) as proxy:
        recipe = make_api_recipe(tmp_path, proxy.url, seeds=seeds, openai={"max_retries": 1})
        res = subprocess.run([*SYNTH, "generate", str(recipe), "-v"], capture_output=True, text=True,
                             env=_env(), timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "failed 2" in res.stdout  # the [always500] request, both samples
    assert (tmp_path / "out" / "run.log").stat().st_size > 0
    _assert_key_nowhere(tmp_path / "out", res.stdout, res.stderr)


def test_dry_run_sends_nothing_and_prices(tmp_path, vllm_server):
    with FaultProxy(vllm_server.url) as proxy:
        recipe = make_api_recipe(tmp_path, proxy.url, openai={"price_input_per_mtok": 2.0, "price_output_per_mtok": 8.0})
        res = subprocess.run([*SYNTH, "generate", str(recipe), "--dry-run"], capture_output=True, text=True,
                             env=_env(), timeout=HANG_S)
        assert proxy.hits == []
    assert res.returncode == 0, res.stderr
    assert "12 requests to send (12 planned, 0 already done)" in res.stdout
    assert "completion tokens (at most, max_tokens each): 96" in res.stdout
    assert "cost: at most $" in res.stdout and "nothing was sent" in res.stdout
    assert not (tmp_path / "out" / "raw.jsonl").exists()


def test_sampling_and_pass_through_fields_reach_the_server(tmp_path, vllm_server, key_env):
    with FaultProxy(vllm_server.url) as proxy:
        plan = load_plan(make_api_recipe(
            tmp_path, proxy.url, sampling={"n": 1, "top_k": 5, "stop": ["\n\n"], "seed": 3},
            openai={"extra_body": {"repetition_penalty": 1.1}},
        ))
        manifest = run_generate(plan, progress=False)
        body = proxy.hits[0].body
        sent = sorted(h.body["seed"] for h in proxy.hits)
    assert manifest["counts"]["kept"] == 6
    assert body["model"] == "tiny" and body["max_tokens"] == 8 and body["temperature"] == 0.8
    assert body["top_k"] == 5 and body["stop"] == ["\n\n"] and body["repetition_penalty"] == 1.1
    assert "n" not in body
    # each request's own seed, drawn from the recipe's and its id: six prompts, six seeds
    records = read_jsonl(tmp_path / "out" / "raw.jsonl")
    assert sent == sorted(request_seed(3, r["id"]) for r in records) and len(set(sent)) == 6


def test_sigkill_and_resume_through_the_api(tmp_path, vllm_server):
    seeds = [{"question": f"Write about topic number {i}, please."} for i in range(300)]
    recipe_path = make_api_recipe(tmp_path, vllm_server.url, seeds=seeds, sampling={"n": 2, "max_tokens": 48},
                                  openai={"max_concurrency": 16})
    raw = tmp_path / "out" / "raw.jsonl"
    sigkill_when([*SYNTH, "generate", str(recipe_path), "--no-progress"], lambda: lines(raw) >= 60, HANG_S, env=_env())
    complete = lines(raw)
    assert 60 <= complete < 600
    res = subprocess.run([*SYNTH, "generate", str(recipe_path), "--no-progress"], env=_env(),
                         capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"({600 - complete} new, {complete} from earlier runs)" in res.stdout
    ids = [r["id"] for r in read_jsonl(raw)]
    assert len(ids) == len(set(ids)) == 600
    assert set(ids) == {r.id for r in load_plan(recipe_path).requests.requests}


def test_400_is_a_failure_record_without_retries(tmp_path, vllm_server, key_env):
    seeds = [{"question": "short"}, {"question": "word " * 2000}]  # beyond the server's 512 tokens
    with FaultProxy(vllm_server.url) as proxy:
        plan = load_plan(make_api_recipe(tmp_path, proxy.url, seeds=seeds, sampling={"n": 1}))
        manifest = run_generate(plan, progress=False)
        attempts = proxy.attempts_by_key()
    assert manifest["counts"]["kept"] == 1 and manifest["counts"]["failed"] == 1
    (failure,) = read_jsonl(tmp_path / "out" / "failures.jsonl")
    assert failure["error"]["status"] == 400 and failure["error"]["attempts"] == 1
    assert sorted(len(a) for a in attempts.values()) == [1, 1], "a 400 is not retried"
    assert manifest["teacher_stats"]["retries"] == 0
