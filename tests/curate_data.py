"""Raw logs for curation tests: real teacher text (Self-Instruct's text-davinci-003 answers)
written as the records a generate run would have produced."""

import json

from synth.backends import Completion
from synth.plan import load_plan
from synth.records import make_record

from conftest import TEST_DATA, make_recipe, write_jsonl

PREDICTIONS = TEST_DATA / "text-davinci-003_predictions.jsonl"


def real_rows(n: int, offset: int = 0):
    rows = [json.loads(line) for line in PREDICTIONS.read_text().splitlines()][offset : offset + n]
    return [(r["prompt"], r["response"].strip()) for r in rows]


def build_raw(tmp_path, tiny_model, items, curate, finish=None):
    """A recipe whose raw log holds `items` (question, answer) as the teacher's records:
    (its path, its plan, the planned requests)."""
    seeds = [{"question": q} for q, _ in items]
    path = make_recipe(tmp_path, tiny_model, seeds=seeds, sampling={"n": 1}, extra={"curate": curate})
    plan = load_plan(path)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    records = []
    for i, (req, (_, answer)) in enumerate(zip(plan.requests.requests, items, strict=True)):
        reason = (finish or {}).get(i, "stop")
        records.append(make_record(Completion(req, answer, reason, 10, 20, 0.1), plan.teacher))
    records.reverse()  # the teacher's completion order is not the curation order
    write_jsonl(out / "raw.jsonl", records)
    return path, plan, plan.requests


def by_question(rows):
    return {r["messages"][-2]["content"]: r for r in rows}


