"""The dates task's exact checker (make demo, bench/distill_quality.py): their scores are
only as honest as this."""

import random
from datetime import date

import synth.examples.dates as dq


def _record(prompt: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": dq.INSTRUCTION + prompt}, {"role": "assistant", "content": answer}]}


def test_every_format_reads_back_to_its_date():
    rng = random.Random(1)
    for _ in range(2000):
        d = date.fromordinal(rng.randrange(date(1900, 1, 1).toordinal(), date(2099, 12, 31).toordinal() + 1))
        for write, _, _ in dq.FORMATS:
            assert dq.expected(dq.INSTRUCTION + write(d)) == d.isoformat(), write(d)


def test_checker_accepts_exactly_the_iso_date():
    prompt = "3rd of March 2021"
    assert dq.check(_record(prompt, "2021-03-03")) is True
    assert dq.check(_record(prompt, " 2021-03-03\n")) is True  # surrounding whitespace only
    for wrong in ("2021-3-3", "2021-03-30", "2021-03-03 (ISO)", "03/03/2021", ""):
        ok, reason = dq.check(_record(prompt, wrong))
        assert ok is False and "wanted 2021-03-03" in reason


def test_prompt_sets_are_disjoint():
    rng, taken = random.Random(0), set()
    a, b = dq.sample_prompts(rng, 500, taken), dq.sample_prompts(rng, 500, taken)
    assert len(set(a)) == 500 and not set(a) & set(b)


def test_prepare_writes_disjoint_sets_and_a_digit_level_tokenizer(tmp_path):
    import json

    from transformers import AutoTokenizer

    paths = dq.prepare(tmp_path, prompts=50, teacher_examples=200, held_out=20)
    prompts = {json.loads(line)["date"] for line in paths["prompts"].read_text().splitlines()}
    test = {json.loads(line)["date"] for line in paths["test"].read_text().splitlines()}
    taught = [json.loads(line)["messages"] for line in paths["teacher_train"].read_text().splitlines()]
    assert len(prompts) == 50 and len(test) == 20 and len(taught) == 200
    assert not prompts & test and not {m[0]["content"].removeprefix(dq.INSTRUCTION) for m in taught} & (prompts | test)
    assert all(dq.check({"messages": m}) is True for m in taught), "the teacher learns ground truth"
    tok = AutoTokenizer.from_pretrained(paths["student_init"])
    pieces = [tok.decode([i]) for i in tok("on 2021-03-03", add_special_tokens=False)["input_ids"]]
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("20210303"), pieces
