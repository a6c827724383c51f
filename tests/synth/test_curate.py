"""synth curate on real teacher text (Self-Instruct's text-davinci-003 answers) with planted
duplicates, near-duplicates, contamination, PII, refusals and truncations."""

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from synth.curate import run_curate
from synth.plan import load_plan

from conftest import HANG_S, make_recipe, read_jsonl, write_jsonl
from curate_data import build_raw, by_question, real_rows

LONG = " ".join(answer for _, answer in real_rows(2, offset=100))  # text not among the 30 items


def test_filters_decide_and_explain_on_real_text(tmp_path, tiny_model):
    items = real_rows(30)
    base_answer = items[5][1]
    long_words = LONG.split()
    near = list(long_words)
    near[len(near) // 2] = "CHANGED"
    items += [
        ("Planted exact duplicate?", base_answer.upper() + "!!"),  # same answer, normalised
        ("Planted near duplicate, original", " ".join(long_words)),
        ("Planted near duplicate, copy", " ".join(near)),
        ("Planted refusal", "As an AI language model, I cannot give financial advice."),
        ("Planted truncation", "This answer was cut off in the mid"),
        ("Planted empty", "   "),
        ("Contains PII", "Mail jane.doe@example.com or call +44 20 7946 0958; IBAN GB82 WEST 1234 5698 7654 32, "
                         "card 4111 1111 1111 1111 (not 4111 1111 1111 1112), SSN 123-45-6789, host 192.168.1.10."),
        ("Planted blocked word", "This mentions the forbidden codeword zebra42 in passing."),
    ]
    truncated_index = len(items) - 4
    contaminated_question = items[2][0]
    eval_file = write_jsonl(tmp_path / "heldout.jsonl", [{"question": contaminated_question, "answer": "x"}])
    curate = {"filters": [
        "truncated", "empty", "refusal",
        {"name": "regex", "block_keywords": ["zebra42"]},
        {"name": "exact_dedup", "field": "answer"},
        {"name": "near_dedup", "threshold": 0.8, "field": "answer"},
        {"name": "decontam", "eval_sets": [{"path": str(eval_file), "fields": ["question"]}], "field": "prompt"},
        {"name": "pii", "action": "redact"},
    ]}
    path, plan, _ = build_raw(tmp_path, tiny_model, items, curate, finish={truncated_index: "length"})
    stats = run_curate(plan, progress=False)
    out = tmp_path / "out"
    kept, rejected = read_jsonl(out / "train.jsonl"), read_jsonl(out / "rejected.jsonl")
    assert stats["records"] == len(items) == len(kept) + len(rejected)
    reasons = {r["messages"][-2]["content"]: (r["rejection"]["filter"], r["rejection"]["reason"]) for r in rejected}
    assert reasons["Planted truncation"][0] == "truncated"
    assert reasons["Planted empty"][0] == "empty"
    assert reasons["Planted refusal"] == ("refusal", "refusal or boilerplate: 'as an ai language model'")
    assert reasons["Planted blocked word"][0] == "regex" and "zebra42" in reasons["Planted blocked word"][1]
    # Exactly one of the two identical answers survives (the first in id order), naming the other.
    pair = [q for q in (items[5][0], "Planted exact duplicate?") if q in reasons]
    assert len(pair) == 1 and reasons[pair[0]][0] == "exact_dedup"
    near_pair = [q for q in ("Planted near duplicate, original", "Planted near duplicate, copy") if q in reasons]
    assert len(near_pair) == 1 and reasons[near_pair[0]][0] == "near_dedup"
    assert "Jaccard" in reasons[near_pair[0]][1]
    assert reasons[contaminated_question][0] == "decontam"
    assert "heldout.jsonl line 1" in reasons[contaminated_question][1]
    assert len(rejected) == 7  # PII is redacted, not rejected
    # PII: redacted in place, types and counts on the row, values nowhere.
    pii_row = by_question(kept)["Contains PII"]
    text = pii_row["messages"][-1]["content"]
    assert pii_row["pii"] == {"credit_card": 1, "email": 1, "iban": 1, "ip_address": 1, "phone": 1, "us_ssn": 1}
    for value in ("jane.doe@example.com", "GB82 WEST", "4111 1111 1111 1111 ", "123-45-6789", "192.168.1.10", "7946 0958"):
        assert value not in text
    assert "4111 1111 1111 1112" in text  # fails Luhn: not a card number
    assert "[EMAIL]" in text and "[IBAN]" in text
    for v in ("jane.doe@example.com", "123-45-6789"):
        assert v not in (out / "stats.json").read_text() and v not in (out / "train.jsonl").read_text()
    # Funnel and stats in the manifest.
    manifest = json.loads((out / "manifest.json").read_text())
    funnel = manifest["curate"]["funnel"]
    assert funnel[0] == {"stage": "raw", "count": len(items)}
    assert funnel[-1]["remaining"] == len(kept)
    assert stats["pii_redacted"]["email"] == 1


def test_rerun_is_byte_identical_and_loads_in_datasets(tmp_path, tiny_model):
    import datasets

    items = real_rows(40)
    curate = {"filters": ["empty", {"name": "near_dedup"}, {"name": "pii"}], "eval_fraction": 0.25}
    path, plan, _ = build_raw(tmp_path, tiny_model, items, curate)
    run_curate(plan, progress=False)
    out = tmp_path / "out"
    first = {name: (out / name).read_bytes() for name in ("train.jsonl", "eval.jsonl", "rejected.jsonl", "stats.json")}
    run_curate(load_plan(path), progress=False)
    assert {name: (out / name).read_bytes() for name in first} == first
    ds = datasets.load_dataset("json", data_files={"train": str(out / "train.jsonl"), "eval": str(out / "eval.jsonl")})
    assert len(ds["train"]) + len(ds["eval"]) == 40 and len(ds["eval"]) > 0
    assert ds["train"][0]["messages"][-1]["role"] == "assistant"


def test_near_duplicate_prompts_never_straddle_train_and_eval(tmp_path, tiny_model):
    base = real_rows(30)
    items = []
    for q, a in base:
        items.append((q, a))
        items.append((q + " Please answer briefly.", a + " (v2)"))  # a near-duplicate prompt
    path, plan, _ = build_raw(tmp_path, tiny_model, items, {"filters": [], "eval_fraction": 0.3, "split_threshold": 0.6})
    stats = run_curate(plan, progress=False)
    out = tmp_path / "out"
    train_q = {r["messages"][-2]["content"] for r in read_jsonl(out / "train.jsonl")}
    eval_q = {r["messages"][-2]["content"] for r in read_jsonl(out / "eval.jsonl")}
    assert stats["eval"] > 0 and stats["train"] > 0
    for q, _ in base:
        twin = q + " Please answer briefly."
        assert (q in train_q) == (twin in train_q), q[:60]
        assert (q in eval_q) == (twin in eval_q)


def test_the_eval_split_follows_the_prompts_not_where_the_teacher_lives(tmp_path, tiny_model):
    """The same seeds and answers, from the same model copied elsewhere (so other ids): the
    same prompts are held out, as on another machine."""
    items = real_rows(40)
    copy = tmp_path / "elsewhere" / "teacher"
    shutil.copytree(tiny_model, copy)
    held_out = []
    for name, model in (("a", tiny_model), ("b", copy)):
        (tmp_path / name).mkdir()
        _, plan, requests = build_raw(tmp_path / name, model, items, {"filters": [], "eval_fraction": 0.3})
        run_curate(plan, progress=False)
        held_out.append((sorted(r["messages"][-2]["content"] for r in read_jsonl(plan.layout.eval)),
                         {r.id for r in requests.requests}))
    (eval_a, ids_a), (eval_b, ids_b) = held_out
    assert ids_a.isdisjoint(ids_b), "the copy's ids differ (the teacher's fingerprint names its directory)"
    assert eval_a == eval_b and 0 < len(eval_a) < 40


def test_json_schema_and_verifier(tmp_path, tiny_model):
    schema = {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["yes", "no"]}}}
    items = [
        ("q1", '{"label": "yes", "n": 1}'),
        ("q2", '```json\n{"label": "no", "n": 2}\n```'),
        ("q3", '{"label": "maybe", "n": 3}'),
        ("q4", "not json at all 4"),
        ("q5", '{"label": "no"}'),
    ]
    curate = {"filters": [{"name": "json", "schema": schema}, {"name": "verifier", "function": "curate_verifiers:mentions_a_number"}]}
    _, plan, _ = build_raw(tmp_path, tiny_model, items, curate)
    run_curate(plan, progress=False)
    out = tmp_path / "out"
    kept = {r["messages"][-2]["content"] for r in read_jsonl(out / "train.jsonl")}
    rejected = {r["messages"][-2]["content"]: r["rejection"] for r in read_jsonl(out / "rejected.jsonl")}
    assert kept == {"q1", "q2"}
    assert rejected["q3"]["filter"] == "json" and "label" in rejected["q3"]["reason"]
    assert rejected["q4"]["filter"] == "json" and "not valid JSON" in rejected["q4"]["reason"]
    assert rejected["q5"] == {"filter": "verifier", "reason": "verifier curate_verifiers:mentions_a_number: no number in the answer"}


def test_token_length_bounds_use_the_students_tokenizer(tmp_path, tiny_model):
    items = [("short", "one two"), ("long", " ".join(["word"] * 300))]
    curate = {"filters": [{"name": "length", "min_tokens": 2, "max_tokens": 100, "tokenizer": str(tiny_model)}]}
    _, plan, _ = build_raw(tmp_path, tiny_model, items, curate)
    stats = run_curate(plan, progress=False)
    rejected = read_jsonl(tmp_path / "out" / "rejected.jsonl")
    assert stats["kept"] == 1 and "tokens, more than max_tokens 100" in rejected[0]["rejection"]["reason"]


@pytest.mark.parametrize(
    "filters, message",
    [
        (["dedupe"], "curate.filters[0]: unknown filter 'dedupe'; valid filters: best_of_n, code_exec, decontam, empty, exact_dedup"),
        ([{"name": "regex", "block": ["(unclosed"]}], "curate.filters[0].block[0]: invalid regex '(unclosed'"),
        ([{"name": "json", "schema": {"type": "nonsense"}}], "curate.filters[0].schema: invalid JSON Schema"),
        ([{"name": "decontam", "eval_sets": [{"path": "/nonexistent/eval.jsonl"}]}], "curate.filters[0].eval_sets[0].path: /nonexistent/eval.jsonl does not exist"),
        ([{"name": "near_dedup", "treshold": 0.5}], "curate.filters[0].treshold: unknown key. Did you mean 'threshold'?"),
        ([{"name": "pii", "action": "mask"}], "curate.filters[0].action: unknown 'mask'"),
        ([{"name": "verifier", "function": "no_such_module:f"}], "curate.filters[0].function: cannot import no_such_module"),
    ],
)
def test_bad_curation_config_is_one_clear_error(tmp_path, tiny_model, filters, message):
    path, _, _ = build_raw(tmp_path, tiny_model, real_rows(2), {"filters": []})
    data = yaml.safe_load(path.read_text())
    data["curate"]["filters"] = filters
    path.write_text(yaml.safe_dump(data))
    res = subprocess.run([sys.executable, "-m", "synth.cli", "curate", str(path)], capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 2, res.stderr
    err = [line for line in res.stderr.splitlines() if line.startswith("synth: error:")]
    assert len(err) == 1 and message in err[0], res.stderr
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_verifier_exceptions_reject_with_the_error(tmp_path, tiny_model):
    _, plan, _ = build_raw(tmp_path, tiny_model, real_rows(2), {"filters": [{"name": "verifier", "function": "curate_verifiers:explodes"}]})
    stats = run_curate(plan, progress=False)
    assert stats["kept"] == 0
    assert "raised RuntimeError: verifier bug" in read_jsonl(tmp_path / "out" / "rejected.jsonl")[0]["rejection"]["reason"]


@pytest.mark.slow
def test_generate_then_curate_through_the_real_engine(tmp_path, tiny_model, vllm_backend):
    from synth.generate import run_generate

    path = make_recipe(tmp_path, tiny_model, sampling={"max_tokens": 4},
                       extra={"curate": {"filters": ["truncated", "empty", {"name": "exact_dedup", "field": "both"}]}})
    plan = load_plan(path)
    manifest = run_generate(plan, vllm_backend, progress=False)
    stats = run_curate(plan, progress=False)
    reasons = manifest["finish_reasons"]
    assert stats["records"] == 12 == stats["kept"] + stats["rejected"]
    assert stats["rejected_by_filter"]["0:truncated"] == reasons.get("length", 0)
    res = subprocess.run([sys.executable, "-m", "synth.cli", "curate", str(path), "--no-progress"],
                         capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0 and f"synth curate: 12 records -> kept {stats['kept']}" in res.stdout


def test_semantic_dedup_with_the_packaged_minilm(tmp_path, tiny_model):
    items = [
        ("q1", "To reset your password, open Settings, choose Security and click Reset password."),
        ("q2", "Open Settings, pick Security, then click Reset password to reset your password."),
        ("q3", "The capital of France is Paris, a city on the Seine."),
        ("q4", "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen."),
    ]
    curate = {"filters": [{"name": "semantic_dedup", "threshold": 0.85}]}
    _, plan, _ = build_raw(tmp_path, tiny_model, items, curate)
    stats = run_curate(plan, progress=False)
    rejected = read_jsonl(tmp_path / "out" / "rejected.jsonl")
    assert stats["kept"] == 3 and len(rejected) == 1
    assert rejected[0]["messages"][-2]["content"] in ("q1", "q2")
    assert rejected[0]["rejection"]["reason"].startswith("semantic duplicate (cosine 0.")
