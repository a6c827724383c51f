"""The teacher's top-k logprobs beside the raw log: the sidecar's guarantees, capture through
the real in-process engine and a real vLLM server, and a SIGKILL mid-run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from synth.generate import run_generate
from synth.logprobs import LogprobAppender, LogprobStore, TopK, chat_digest, scan
from synth.plan import load_plan

from conftest import HANG_S, SERVER_KEY, make_api_recipe, make_recipe, read_jsonl
from killing import lines, sigkill_when

RID = "0123456789abcdef0123456789abcdef"


def _topk(n=3, k=2, shift=0):
    return TopK.from_lists([10 + i + shift for i in range(n)], [[(10 + i + shift, -0.1), (99, -2.5)] for i in range(n)], k)


def _chat(answer):
    return [{"role": "user", "content": "Question?"}, {"role": "assistant", "content": answer}]


def test_sidecar_round_trip_last_entry_wins_and_text_ties(tmp_path):
    path = tmp_path / "logprobs.bin"
    with LogprobAppender(path) as out:
        out.append(RID, _chat("first answer"), _topk(), b"v" * 8)
        out.append(RID, _chat("second answer"), _topk(n=4, shift=1), b"v" * 8)  # a rerun's answer supersedes
        out.append("f" * 32, _chat("other"), _topk(n=1), b"v" * 8)
    store = LogprobStore(path)
    assert len(store) == 2
    topk, entry = store.get(RID)
    assert topk.token_ids.tolist() == [11, 12, 13, 14] and topk.ids[0].tolist() == [11, 99]
    assert np.allclose(topk.logprobs[0].astype(float), [-0.1, -2.5], atol=1e-3)
    assert store.status(RID, _chat("second answer")) == "ok"
    assert store.status(RID, _chat("second answer, redacted")) == "changed"
    redacted_prompt = [{"role": "user", "content": "[EMAIL]?"}, _chat("second answer")[1]]
    assert store.status(RID, redacted_prompt) == "changed", "a prompt edited by curation breaks the tie too"
    assert store.status("e" * 32, _chat("x")) == "missing"
    assert entry.text == chat_digest(_chat("second answer"))
    store.close()


def test_a_torn_last_entry_is_cut_and_a_damaged_middle_is_an_error(tmp_path):
    path = tmp_path / "logprobs.bin"
    with LogprobAppender(path) as out:
        out.append(RID, _chat("a"), _topk(), b"v" * 8)
        out.append("f" * 32, _chat("b"), _topk(), b"v" * 8)
    whole = path.read_bytes()
    path.write_bytes(whole[:-7])  # the second entry cut short by a kill
    index, end = scan(path)
    assert list(index) == [RID] and end == len(whole) // 2
    with LogprobAppender(path) as out:  # reopening repairs the tail, then appends
        out.append("f" * 32, _chat("b"), _topk(), b"v" * 8)
    assert path.read_bytes() == whole
    damaged = bytearray(whole)
    damaged[60] ^= 0xFF  # inside the first entry's data, with an entry after it
    path.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=r"logprobs.bin: the entry at byte 0 is damaged and data follows it"):
        scan(path)


@pytest.mark.slow
def test_capture_through_the_real_engine(tmp_path, tiny_model, vllm_backend):
    from synth.logprobs import vocab_digest

    plan = load_plan(make_recipe(tmp_path, tiny_model, sampling={"logprobs": 4, "max_tokens": 6, "temperature": 0.0}))
    manifest = run_generate(plan, vllm_backend, progress=False)
    records = read_jsonl(tmp_path / "out" / "raw.jsonl")
    store = LogprobStore(tmp_path / "out" / "logprobs.bin")
    tokenizer = vllm_backend.llm.get_tokenizer()
    assert len(records) == len(store) == 12
    for rec in records:
        answer = rec["messages"][-1]["content"]
        assert store.status(rec["id"], rec["messages"]) == "ok"
        topk, entry = store.get(rec["id"])
        assert entry.vocab == vocab_digest(tokenizer) and topk.k == 4
        assert rec["logprobs"] == {"k": 4, "tokens": len(topk.token_ids)} == {"k": 4, "tokens": rec["usage"]["completion_tokens"]}
        # The tokens spell the answer (vLLM holds back a last token that is half a UTF-8 character).
        assert tokenizer.decode(topk.token_ids.tolist(), skip_special_tokens=True).rstrip("\ufffd") == answer
        assert np.all(np.diff(topk.logprobs.astype(float), axis=1) <= 1e-6), "best first"
    assert manifest["logprobs"]["bytes_per_1k_answer_tokens"] > 0
    # Asking for logprobs is another request: the ids of the same recipe without them differ,
    # and the answers are the same text (with logprobs the answer is decoded from its tokens).
    plain = load_plan(make_recipe(tmp_path, tiny_model, sampling={"max_tokens": 6, "temperature": 0.0}, out="plain"))
    assert not {r.id for r in plain.requests.requests} & {r["id"] for r in records}
    run_generate(plain, vllm_backend, progress=False)
    answers = {json.dumps(r["messages"][:-1]): r["messages"][-1]["content"] for r in records}
    plain_answers = {json.dumps(r["messages"][:-1]): r["messages"][-1]["content"] for r in read_jsonl(tmp_path / "plain" / "raw.jsonl")}
    assert answers == plain_answers
    store.close()


@pytest.mark.slow
def test_sigkill_mid_run_loses_no_logprobs(tmp_path, tiny_model):
    seeds = [{"question": f"Write about topic number {i}, please."} for i in range(300)]
    path = make_recipe(tmp_path, tiny_model, seeds=seeds, sampling={"n": 2, "max_tokens": 48, "logprobs": 5})
    raw = tmp_path / "out" / "raw.jsonl"
    cmd = [sys.executable, "-m", "synth.cli", "generate", str(path), "--no-progress"]
    sigkill_when(cmd, lambda: lines(raw) >= 100, HANG_S)
    assert 100 <= lines(raw) < 600, "the kill must land mid-run"
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-3000:]
    records = read_jsonl(raw)
    assert len(records) == len({r["id"] for r in records}) == 600
    store = LogprobStore(tmp_path / "out" / "logprobs.bin")
    assert all(store.status(r["id"], r["messages"]) == "ok" for r in records), "every record has its logprobs"
    assert set(store.index) == {r["id"] for r in records}
    store.close()


@pytest.mark.slow
def test_capture_through_a_real_vllm_server_needs_token_ids(tmp_path, vllm_server, monkeypatch):
    monkeypatch.setenv("STILLHOUSE_TEST_KEY", SERVER_KEY)
    path = make_api_recipe(tmp_path, vllm_server.url, sampling={"logprobs": 3, "max_tokens": 6},
                           openai={"extra_body": {"return_tokens_as_token_ids": True}})
    run_generate(load_plan(path), progress=False)
    records = read_jsonl(tmp_path / "out" / "raw.jsonl")
    store = LogprobStore(tmp_path / "out" / "logprobs.bin")
    assert len(records) == len(store) == 12
    assert all(store.status(r["id"], r["messages"]) == "ok" for r in records)
    store.close()
    # Without token ids the logprobs cannot be lined up with tokens: one error, the run stops.
    other = make_api_recipe(tmp_path, vllm_server.url, out="strings", sampling={"logprobs": 3, "max_tokens": 6})
    res = subprocess.run([sys.executable, "-m", "synth.cli", "generate", str(other), "--no-progress"],
                         capture_output=True, text=True, timeout=HANG_S, env={**os.environ, "STILLHOUSE_TEST_KEY": SERVER_KEY})
    assert res.returncode == 2, res.stderr[-2000:]
    err = [line for line in res.stderr.splitlines() if line.startswith("synth: error:")]
    assert len(err) == 1 and "logprobs as token strings" in err[0] and "return_tokens_as_token_ids" in err[0]
    assert json.loads((tmp_path / "strings" / "manifest.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_synth_score_gives_existing_answers_the_logprobs_generation_would_have(tmp_path, tiny_model, vllm_backend):
    """Greedy answers written without logprobs, scored afterwards by `synth score` with the same
    model: the same top-k as capturing them during generation; a rerun scores nothing."""
    captured = load_plan(make_recipe(tmp_path, tiny_model, out="captured",
                                     sampling={"n": 1, "max_tokens": 8, "temperature": 0.0, "logprobs": 5}))
    run_generate(captured, vllm_backend, progress=False)
    path = make_recipe(tmp_path, tiny_model, out="scored", sampling={"n": 1, "max_tokens": 8, "temperature": 0.0})
    run_generate(load_plan(path), vllm_backend, progress=False)
    cmd = [sys.executable, "-m", "synth.cli", "score", str(path), "--top-k", "5", "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "synth score: 6 records scored" in res.stdout

    by_chat = {json.dumps(r["messages"]): r for r in read_jsonl(tmp_path / "captured" / "raw.jsonl")}
    scored = LogprobStore(tmp_path / "scored" / "logprobs.bin")
    reference = LogprobStore(tmp_path / "captured" / "logprobs.bin")
    compared = 0
    for rec in read_jsonl(tmp_path / "scored" / "raw.jsonl"):
        assert scored.status(rec["id"], rec["messages"]) == "ok"
        mine, entry = scored.get(rec["id"])
        theirs, their_entry = reference.get(by_chat[json.dumps(rec["messages"])]["id"])
        assert entry.vocab == their_entry.vocab
        n = min(len(mine.token_ids), len(theirs.token_ids))
        if mine.token_ids[:n].tolist() != theirs.token_ids[:n].tolist():
            continue  # the answer re-tokenises differently from how it was generated
        assert (mine.ids[:n, 0] == theirs.ids[:n, 0]).all()
        assert np.allclose(mine.logprobs[:n, 0].astype(float), theirs.logprobs[:n, 0].astype(float), atol=0.05)
        compared += 1
    assert compared >= 3
    scored.close()
    reference.close()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_S)
    assert again.returncode == 0 and "0 records scored" in again.stdout and "6 had logprobs already" in again.stdout
