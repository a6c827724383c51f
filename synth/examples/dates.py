"""A task a checker can score exactly, for the demo and the distillation benchmark: date
normalisation ("3rd of March 2021" -> "2021-03-03"; seven written formats, years 1900-2099).

No pretrained weights reach a machine without a model hub, so the demo makes its own
teacher: a small random chat model fully fine-tuned on ground-truth examples of this task.
`prepare` writes what the demo needs into one directory:

    prompts.jsonl        the prompts to distil on ({"date": ...}), disjoint from the rest
    teacher_train.jsonl  ground-truth conversations the teacher learns from
    teacher-init/        the teacher before training (random, 3 layers, hidden 192)
    student-init/        the student before training (random, 2 layers, hidden 128)

`check` is the exact checker, usable as a `verifier` filter and as `sft.eval_verifier`
(`synth.examples.dates:check`).

    python -m synth.examples.dates .demo/dates [--prompts 3000] [--teacher-examples 12000]
"""

from __future__ import annotations

import argparse
import calendar
import json
import random
import re
from datetime import date
from pathlib import Path
from typing import Any

from synth.runtime import setup_logging
from synth.tiny_model import build_tiny_model

MONTHS = list(calendar.month_name)[1:]
ABBR = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
INSTRUCTION = "Write this date as YYYY-MM-DD: "


def _ordinal(d: int) -> str:
    return "th" if 11 <= d % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")


# (writer, parser regex, group order) per format; the parser is the checker's, written
# independently of the writer (it reads month names and abbreviations back by lookup).
FORMATS = [
    (lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}", r"([A-Z][a-z]+) (\d{1,2}), (\d{4})", "MDY"),
    (lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}", r"(\d{1,2}) ([A-Z][a-z]+) (\d{4})", "DMY"),
    (lambda d: f"{d.day}{_ordinal(d.day)} of {MONTHS[d.month - 1]} {d.year}", r"(\d{1,2})(?:st|nd|rd|th) of ([A-Z][a-z]+) (\d{4})", "DMY"),
    (lambda d: f"{ABBR[d.month - 1]} {d.day} {d.year}", r"([A-Z][a-z]{2}) (\d{1,2}) (\d{4})", "MDY"),
    (lambda d: f"{d.day:02d}-{ABBR[d.month - 1]}-{d.year}", r"(\d{2})-([A-Z][a-z]{2})-(\d{4})", "DMY"),
    (lambda d: f"{d.year}/{d.month}/{d.day}", r"(\d{4})/(\d{1,2})/(\d{1,2})", "YMD"),
    (lambda d: f"{MONTHS[d.month - 1]} {d.day}{_ordinal(d.day)}, {d.year}", r"([A-Z][a-z]+) (\d{1,2})(?:st|nd|rd|th), (\d{4})", "MDY"),
]


def _month(token: str) -> int:
    if token.isdigit():
        return int(token)
    for names in (MONTHS, ABBR):
        if token in names:
            return names.index(token) + 1
    raise ValueError(f"unknown month {token!r}")


def expected(prompt: str) -> str:
    """The checker's own reading of the prompt: the ISO date it asks for."""
    text = prompt.removeprefix(INSTRUCTION).strip()
    for _, pattern, order in FORMATS:
        m = re.fullmatch(pattern, text)
        if m:
            parts = dict(zip(order, m.groups(), strict=True))
            return date(int(parts["Y"]), _month(parts["M"]), int(parts["D"])).isoformat()
    raise ValueError(f"no known date format in {text!r}")


def check(record: dict[str, Any]) -> bool | tuple[bool, str]:
    """The exact checker, as a stillhouse verifier: the answer is the ISO date, nothing else."""
    user = next(m["content"] for m in record["messages"] if m["role"] == "user")
    answer = record["messages"][-1]["content"].strip()
    want = expected(user)
    return True if answer == want else (False, f"wanted {want}, got {answer[:40]!r}")


def sample_prompts(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    """`n` dates written in random formats, none of them in `taken` (which grows)."""
    start, days = date(1900, 1, 1).toordinal(), (date(2099, 12, 31) - date(1900, 1, 1)).days
    out = []
    while len(out) < n:
        d = date.fromordinal(start + rng.randrange(days + 1))
        text = rng.choice(FORMATS)[0](d)
        if text not in taken:
            taken.add(text)
            out.append(text)
    return out


def conversation(text: str) -> dict[str, Any]:
    """A ground-truth training example."""
    prompt = INSTRUCTION + text
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": expected(prompt)}]}


def harness_items(n: int = 200, seed: int = 2026) -> list[dict[str, Any]]:
    """A multiple-choice version of the task for lm-evaluation-harness (prompts/harness/): a
    written date and four ISO dates, one right; none of the dates is one that `prepare`'s
    defaults put in the demo's prompts or the teacher's examples. The wrong choices are the
    mistakes a model makes: day and month swapped, a day off, a year off."""
    rng, taken = random.Random(0), set()
    for count in (0, 12000, 3000):  # prepare's defaults, in its order: the demo's dates are taken
        sample_prompts(rng, count, taken)
    rng = random.Random(seed)
    items = []
    for text in sample_prompts(rng, n, taken):  # (the choices are joined by |)
        right = date.fromisoformat(expected(INSTRUCTION + text))
        wrong: list[date] = []
        candidates = [(right.year, right.day, right.month), (right.year, right.month, right.day % 28 + 1),
                      (right.year + rng.choice((-1, 1)), right.month, right.day), (right.year, right.month % 12 + 1, right.day),
                      (right.year, right.month, (right.day + 1) % 28 + 1), (right.year - 10, right.month, right.day)]
        for y, m, d in candidates:
            try:
                c = date(y, m, d)
            except ValueError:
                continue
            if c != right and c not in wrong:
                wrong.append(c)
        choices = [right, *wrong[:3]]
        rng.shuffle(choices)
        # the choices as one string: a JSON loader would read a list of ISO dates as timestamps
        items.append({"date": text, "choices": "|".join(c.isoformat() for c in choices), "answer": choices.index(right)})
    return items


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


# Model shapes: (hidden size, layers, heads). The teacher is ~3.5x the student's parameters.
TEACHER_SHAPE = (192, 3, 3)
STUDENT_SHAPE = (128, 2, 2)


def prepare(work: Path, prompts: int = 3000, teacher_examples: int = 12000, held_out: int = 0, seed: int = 0,
            teacher_shape: tuple[int, int, int] = TEACHER_SHAPE, student_shape: tuple[int, int, int] = STUDENT_SHAPE,
            vocab_size: int = 512, task_tokenizer: bool = True) -> dict[str, Path]:
    """Write the demo's data and untrained models into `work` (models already there are kept).
    With `held_out` > 0 also test.jsonl: prompts disjoint from both other sets.

    `task_tokenizer`: the tokenizer learns its merges from the task's own text (month names and
    the instruction become a few tokens) and keeps every digit a token of its own, so a
    sequence is ~40 tokens and the models learn the task in minutes on a CPU; otherwise it is
    trained on the Self-Instruct seed tasks."""
    rng = random.Random(seed)
    taken: set[str] = set()
    test = sample_prompts(rng, held_out, taken)
    teacher_train = sample_prompts(rng, teacher_examples, taken)
    distill = sample_prompts(rng, prompts, taken)
    paths = {"prompts": work / "prompts.jsonl", "teacher_train": work / "teacher_train.jsonl",
             "teacher_init": work / "teacher-init", "student_init": work / "student-init"}
    _write_jsonl(paths["prompts"], [{"date": t} for t in distill])
    _write_jsonl(paths["teacher_train"], [conversation(t) for t in teacher_train])
    if held_out:
        paths["test"] = work / "test.jsonl"
        _write_jsonl(paths["test"], [{"date": t} for t in test])
    tokenizer = {"corpus": paths["teacher_train"], "split_digits": True} if task_tokenizer else {}
    for name, (hidden, layers, heads) in (("teacher_init", teacher_shape), ("student_init", student_shape)):
        if not (paths[name] / "config.json").exists():
            build_tiny_model(paths[name], vocab_size=vocab_size, hidden_size=hidden, num_layers=layers, num_heads=heads,
                             **tokenizer)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m synth.examples.dates", description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path, help="directory for the prompts, the teacher's data and the untrained models")
    ap.add_argument("--prompts", type=int, default=3000, help="prompts to distil on")
    ap.add_argument("--teacher-examples", type=int, default=12000, help="ground-truth examples for the teacher")
    args = ap.parse_args(argv)

    setup_logging(None)
    paths = prepare(args.work, args.prompts, args.teacher_examples)
    print(f"dates: {args.prompts} prompts in {paths['prompts']}, {args.teacher_examples} ground-truth examples "
          f"in {paths['teacher_train']}, untrained teacher and student in {args.work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
