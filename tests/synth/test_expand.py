"""synth expand: parsing, the novelty filter on real seeds, and resumable runs through the
real engine (the tiny model's proposals are noise: what is tested is the plumbing)."""

import json

import pytest

from synth.expand import ExpandOptions, NoveltyPool, acceptable, parse_items, run_expand
from synth.plan import load_plan

from conftest import SEED_TASKS, make_recipe, read_jsonl

SEEDS = [json.loads(line)["instruction"] for line in SEED_TASKS.read_text().splitlines()]


def test_parse_items_from_messy_answers():
    text = """Sure! Here are new tasks:
Task 9: Write a haiku about autumn leaves.
10. Summarise the plot of a novel in three sentences.
11) Translate a greeting into French.
- Explain recursion to a child.
* "List three uses of vinegar."
Task 14 - Give feedback on a cover letter.
This line is chatter, not a task.
15."""
    assert parse_items(text) == [
        "Write a haiku about autumn leaves.",
        "Summarise the plot of a novel in three sentences.",
        "Translate a greeting into French.",
        "Explain recursion to a child.",
        "List three uses of vinegar.",
        "Give feedback on a cover letter.",
    ]


def test_novelty_against_real_seed_tasks():
    pool = NoveltyPool(SEEDS, 0.7, 5000)
    near_copy = SEEDS[10].replace("the", "a", 1) if "the" in SEEDS[10] else SEEDS[10] + " please"
    assert not pool.add(near_copy)
    assert pool.add("Draft a polite reminder to a colleague about tomorrow's budget review meeting.")
    assert not pool.add("Draft a polite reminder to a colleague about tomorrow's budget review meeting!")
    # Large pools switch to MinHash LSH with the same decision on clear cases.
    big = NoveltyPool(SEEDS, 0.7, minhash_above=10)
    assert not big.add(SEEDS[3])
    assert big.add("Compose a limerick about a forgetful robot who loves gardening on weekends.")


def test_acceptable_rules():
    o = ExpandOptions()
    assert acceptable("Draw a picture of a cat.", o) == "not a text task"
    assert acceptable("Hi", o) == "length"
    assert acceptable("#Rewritten Prompt#: explain tides in depth please", o) == "starts with punctuation"
    assert acceptable("The given prompt asks to explain tides in more depth", o) == "copies the rewriting prompt"
    assert acceptable("Explain why the sky looks blue at noon.", o) is None


def test_bad_expand_config(tmp_path, tiny_model):
    path = make_recipe(tmp_path, tiny_model, extra={"expand": {"method": "magic"}})
    with pytest.raises(ValueError, match="expand.method: unknown 'magic'"):
        run_expand(load_plan(path))
    path = make_recipe(tmp_path, tiny_model, extra={"expand": {"field": "nope"}})
    with pytest.raises(ValueError, match="expand.field: .* has no text column 'nope'"):
        run_expand(load_plan(path))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["self_instruct", "evol_instruct"])
def test_expand_through_the_engine_is_resumable(tmp_path, tiny_model, vllm_backend, method):
    seeds = [{"question": s} for s in SEEDS[:12]]
    options = {"method": method, "field": "question", "rounds": 2, "requests_per_round": 4, "max_tokens": 24, "target": 50}
    path = make_recipe(tmp_path, tiny_model, seeds=seeds, extra={"expand": options})
    first = run_expand(load_plan(path), backend=vllm_backend)
    out = tmp_path / "out"
    rows = read_jsonl(out / "expanded.jsonl")
    assert [r["prompt"] for r in rows[:12]] == SEEDS[:12] and all(r["origin"]["method"] == "seed" for r in rows[:12])
    assert len(rows) == 12 + first["new"]
    assert first["calls_sent"] > 0 and len(read_jsonl(out / "expand_raw.jsonl")) == first["calls_sent"]
    before = (out / "expanded.jsonl").read_bytes()
    again = run_expand(load_plan(path), backend=vllm_backend)
    assert again["calls_sent"] == 0, "a rerun rebuilds the same requests and finds them answered"
    assert (out / "expanded.jsonl").read_bytes() == before
