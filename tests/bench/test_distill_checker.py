"""The exact checker of bench/distill_quality.py: its score is only as honest as this."""

import random
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import distill_quality as dq  # noqa: E402


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
