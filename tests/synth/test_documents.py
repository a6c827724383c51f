"""Documents as seeds: ingest the AML example's real PDF, DOCX and HTML, expand with
document_qa and answer with the grounded template through the real vLLM server, curate with
the grounding check (lexical and judge), and trace every kept example back to its document.

The tiny model writes nonsense, so a per-request regex (structured outputs) makes each of its
answers a numbered question and each judge verdict a forced tag: what is tested is the data
flow and provenance, not the questions' quality."""

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from synth.card import write_card
from synth.curate import run_curate
from synth.expand import run_expand
from synth.filters import build_filter
from synth.generate import run_generate
from synth.ingest import IngestOptions, run_ingest
from synth.plan import load_plan

from conftest import SERVED_MODEL, SERVER_KEY, make_api_recipe, read_jsonl

REPO = Path(__file__).resolve().parents[2]
QUESTION = r"1\. [a-z ]{8,30}[?]"


def _documents(folder: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_documents", REPO / "prompts" / "aml" / "make_documents.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main([str(folder)])


def test_grounding_rejects_what_the_source_does_not_say():
    f = build_filter({"name": "grounded", "min_support": 0.6}, 2)
    source = "Report suspicious activity to the MLRO within 24 hours. Do not tell the customer."

    def rec(answer, context=source):
        return {"id": "r", "seed": {"fields": {"context": context} if context else {}},
                "messages": [{"role": "user", "content": "When?"}, {"role": "assistant", "content": answer}]}

    assert f.check(rec("Report it to the MLRO within 24 hours [aml-policy.pdf, page 5].")) is None
    reason = f.check(rec("Call the police and close the account immediately."))
    assert reason.startswith("answer not supported by its source: 0% of its content words occur in it")
    assert "police" in reason
    assert f.check(rec("Anything", context=None)).startswith("no source text: the record's seed has no 'context' field")


@pytest.mark.slow
def test_from_documents_to_examples_that_name_their_source(tmp_path, vllm_server, monkeypatch):
    monkeypatch.setenv("STILLHOUSE_TEST_KEY", SERVER_KEY)
    docs = tmp_path / "docs"
    _documents(docs)
    chunks = tmp_path / "chunks.jsonl"
    # short chunks: the test server's tiny model has a 512-token context
    assert run_ingest([str(docs)], chunks, IngestOptions(max_tokens=25, overlap=3), progress=False)["ingested"] == 3
    by_id = {c["id"]: c for c in read_jsonl(chunks)}
    opts = {"extra_body": {"structured_outputs": {"regex": QUESTION}}}
    path = make_api_recipe(tmp_path, vllm_server.url, openai=opts, sampling={"n": 1, "max_tokens": 24, "temperature": 0.0})
    recipe = yaml.safe_load(path.read_text())
    judge = {"teacher": {"backend": "openai", "model": SERVED_MODEL, "openai": {
        "base_url": vllm_server.url, "api_key_env": "STILLHOUSE_TEST_KEY",
        "extra_body": {"structured_outputs": {"choice": ["[[SUPPORTED]]"]}}}}, "max_tokens": 16}
    recipe.update({
        "seeds": {"path": str(chunks)},
        "template": {"path": str(REPO / "prompts" / "aml" / "answer.j2")},
        "expand": {"method": "document_qa", "field": "question", "questions_per_chunk": 2, "distractors": 1,
                   "max_tokens": 24, "target": 400},
        "curate": {"filters": ["empty", {"name": "grounded", "min_support": 0.0, "judge": judge}]},
    })
    path.write_text(yaml.safe_dump(recipe))

    expanded = run_expand(load_plan(path))
    rows = read_jsonl(tmp_path / "out" / "expanded.jsonl")
    assert expanded["new"] == len(rows) > 0 and expanded["calls_sent"] == len(by_id)  # one call per chunk
    for row in rows:
        chunk = by_id[row["source"]["chunk"]]
        assert row["context"] == chunk["text"] and row["source"]["file"] == chunk["source"]["file"]
        assert len(row["documents"]) == 2 and chunk["text"] in [d["text"] for d in row["documents"]]

    run_generate(load_plan(path), progress=False)
    stats = run_curate(load_plan(path), progress=False)
    calls = stats["grounded_calls"]
    assert calls["flagged"] == stats["records"] == len(rows) and calls["supported"] == len(rows)
    kept = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert len(kept) == len(rows)
    pages = set()
    for rec in kept:  # every training example names the document (and page or section) it came from
        source = rec["seed"]["fields"]["source"]
        assert Path(source["file"]).exists() and len(source["sha256"]) == 64
        assert source["page"] or source["section"] or source["format"] == "docx"
        user = rec["messages"][-2]["content"]
        assert f"[Document: {rec['seed']['fields']['citation']}]" in user and rec["seed"]["fields"]["context"] in user
        pages.add((Path(source["file"]).name, source["page"]))
    assert ("aml-policy.pdf", 5) in pages or len({p for p in pages if p[0] == "aml-policy.pdf"}) >= 3
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["kept"] == len(kept)
    card = write_card(load_plan(path)).read_text()
    assert "## Source documents" in card and "aml-policy.pdf |" in card


@pytest.mark.slow
def test_a_model_as_pii_detector_is_cached_and_its_finds_redacted(tmp_path, tiny_model, vllm_server, monkeypatch):
    # The tiny model's answer is forced per run (a structured-output choice): what is tested is
    # that what the detector lists is redacted everywhere in the record, calls are cached, and
    # an answer that is not the JSON asked for rejects the record instead of keeping its PII.
    from curate_data import build_raw
    from faultproxy import FaultProxy

    monkeypatch.setenv("STILLHOUSE_TEST_KEY", SERVER_KEY)
    items = [("Who handles my complaint?", "Jane Doe at 1 Example Street handles it; write to jane@example.com.")]
    listed = '{"person": ["Jane Doe"], "address": ["1 Example Street"]}'
    with FaultProxy(vllm_server.url) as proxy:
        for answer in (listed, "no idea"):
            detector = {"max_tokens": 96, "teacher": {"backend": "openai", "model": SERVED_MODEL, "openai": {
                "base_url": proxy.url, "api_key_env": "STILLHOUSE_TEST_KEY",
                "extra_body": {"structured_outputs": {"choice": [answer]}}}}}
            path, plan, _ = build_raw(tmp_path, tiny_model, items, {"filters": ["empty", {"name": "pii", "detector": detector}]})
            stats = run_curate(plan, progress=False)
            assert stats["pii_calls"]["sent"] == 1
            if answer == listed:
                (rec,) = read_jsonl(tmp_path / "out" / "train.jsonl")
                assert rec["messages"][-1]["content"] == "[PERSON] at [ADDRESS] handles it; write to [EMAIL]."
                assert rec["pii"] == {"address": 1, "email": 1, "person": 1}
                again = run_curate(load_plan(path), progress=False)
                assert again["pii_calls"] == {**stats["pii_calls"], "sent": 0, "cached": 1}
            else:
                (rejected,) = read_jsonl(tmp_path / "out" / "rejected.jsonl")
                assert rejected["rejection"]["reason"].startswith("the PII detector's answer is not the JSON asked for")
        assert len(proxy.hits) == 2
