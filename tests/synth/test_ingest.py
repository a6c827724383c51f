"""synth ingest: real PDF, DOCX, HTML, Markdown and text files (the AML example's documents,
written by prompts/aml/make_documents.py) into chunks whose provenance leads back to the text."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from synth.ingest import IngestOptions, convert, run_ingest

REPO = Path(__file__).resolve().parents[2]
SYNTH = [sys.executable, "-m", "synth.cli"]


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs")
    spec = importlib.util.spec_from_file_location("make_documents", REPO / "prompts" / "aml" / "make_documents.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main([str(folder)])
    (folder / "notes").mkdir()
    (folder / "notes" / "faq.md").write_text("# FAQ\n\n## Can I open an account online?\n\nYes, with a video "
                                              "identity check that takes about ten minutes.\n", encoding="utf-8")
    (folder / "notes" / "memo.txt").write_text("Branch memo. The cash limit for tellers is 5,000 euros per "
                                               "transaction without a supervisor.\n", encoding="utf-8")
    from pptx import Presentation  # python-pptx, which markitdown's PPTX converter uses

    deck = Presentation()
    for title, body in (("Onboarding checklist", "Verify identity before the account is opened and record the "
                         "purpose of the account."), ("Escalation", "Unusual cash deposits go to the MLRO the same day.")):
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text, slide.placeholders[1].text = title, body
    deck.save(str(folder / "notes" / "training.pptx"))
    (folder / "notes" / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (folder / "notes" / "image.png").write_bytes(b"\x89PNG")  # not a document: not picked up
    return folder


def test_chunks_keep_their_provenance_and_the_rest_goes_on(docs, tmp_path):
    out = tmp_path / "chunks.jsonl"
    o = IngestOptions(max_tokens=60, overlap=8)
    r = run_ingest([str(docs)], out, o, progress=False)
    assert (r["files"], r["ingested"], r["failed"]) == (7, 6, 1)
    assert r["failures"][0]["file"].endswith("broken.pdf") and r["failures"][0]["reason"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert r["chunks"] == len(rows)
    converted = {}
    for row in rows:
        src = row["source"]
        if src["file"] not in converted:
            converted[src["file"]] = dict(convert(Path(src["file"])))
        start, end = src["span"]
        assert converted[src["file"]][src["page"]][start:end].strip() == row["text"]  # the span is the text
        assert len(row["text"].split()) <= 60 and len(src["sha256"]) == 64
    by_format = {}
    for row in rows:
        by_format.setdefault(row["source"]["format"], []).append(row)
    assert sorted(by_format) == ["docx", "html", "markdown", "pdf", "pptx", "text"]
    assert "MLRO the same day" in " ".join(r["text"] for r in by_format["pptx"])
    assert {r["source"]["page"] for r in by_format["pdf"]} == set(range(1, 8))  # one section per page
    assert {r["source"]["page"] for r in by_format["docx"]} == {None}
    assert "2. Customer due diligence" in {r["source"]["section"] for r in by_format["docx"]}
    faq = by_format["markdown"][0]
    assert faq["source"]["section"] == "FAQ > Can I open an account online?" and "video identity check" in faq["text"]
    # a long section is cut into overlapping chunks at sentence ends
    cdd = [r for r in by_format["docx"] if r["source"]["section"] == "2. Customer due diligence"]
    assert len(cdd) >= 2 and all(r["text"].endswith((".", ":")) for r in cdd[:-1])
    assert " ".join(cdd[0]["text"].split()[-3:]) in cdd[1]["text"]
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids)


def test_rerun_is_identical_and_a_torn_tail_is_redone(docs, tmp_path):
    full, cut = tmp_path / "full.jsonl", tmp_path / "cut.jsonl"
    run_ingest([str(docs)], full, progress=False)
    data = full.read_bytes()
    again = run_ingest([str(docs)], full, progress=False)
    assert again["skipped"] == 6 and again["ingested"] == 0 and full.read_bytes() == data
    cut.write_bytes(data[: len(data) - 200])  # a kill during the last file's write
    r = run_ingest([str(docs)], cut, progress=False)
    assert r["ingested"] == 1 and r["skipped"] == 5
    assert sorted(cut.read_bytes().splitlines()) == sorted(data.splitlines())


def test_cli_reports_and_errors(docs, tmp_path):
    res = subprocess.run([*SYNTH, "ingest", str(docs), "--out", str(tmp_path / "c.jsonl"), "--no-progress"],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "7 documents: 6 chunked into" in res.stdout and "broken.pdf:" in res.stdout
    res = subprocess.run([*SYNTH, "ingest", str(docs / "notes" / "image.png"), "--out", str(tmp_path / "d.jsonl")],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2 and "unsupported format '.png'" in res.stderr
    res = subprocess.run([*SYNTH, "ingest", str(docs), "--out", str(tmp_path / "d.jsonl"), "--overlap", "200"],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2 and "overlap: must be >= 0 and under half of max_tokens" in res.stderr
