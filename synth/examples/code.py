"""A coding task whose answers are checked by running them, for the code demo and the
code-quality benchmark (prompts/code/): one-line function specifications ("Write a Python
function shift(x) that returns x plus 7.") answered with a fenced Python block, each seed with
three assert tests that `code_exec` and `synth.codeexec:passes` run in the sandbox.

No pretrained weights reach a machine without a model hub, so the demo makes its own teacher:
a small random chat model fully fine-tuned on examples of this task. It is made unreliable the
way real teachers are, so that checking code by running it has something to catch: on three
kinds of specification (the larger / the smaller of two numbers, K minus x) its examples are
wrong more often than right, the confusion a model makes (min for max, x - K for K - x); on
the others one in ten is off by one. A wrong first answer is followed, in its examples, by
the failing test as the next user turn (the packaged code/repair.j2, as the `repair:` section
sends it) and the right code: the teacher learns to repair.

`prepare` writes what the demo needs into one directory:

    prompts.jsonl        the specifications to distil on ({"name", "spec", "tests"}), disjoint from the rest
    teacher_train.jsonl  the teacher's examples (first answers, some wrong, and repair dialogues)
    teacher-init/        the teacher before training (random, 3 layers, hidden 192)
    student-init/        the student before training (random, 2 layers, hidden 128)

    python -m synth.examples.code .demo/code [--prompts 1200] [--teacher-examples 8000]
"""

from __future__ import annotations

import argparse
import functools
import random
from pathlib import Path
from typing import Any

import jinja2

from synth.config import RepairConfig
from synth.examples.dates import STUDENT_SHAPE, TEACHER_SHAPE
from synth.rawlog import rewrite_atomically
from synth.runtime import setup_logging
from synth.tiny_model import build_tiny_model

NAMES = ["f", "g", "h", "step", "shift", "scale", "calc", "apply", "compute", "adjust", "move", "turn", "bump", "fold",
         "map_one", "score", "price", "level", "offset", "weigh", "rank", "limit", "cap", "floor_at"]

# kind -> (specification, expression, the wrong expression a teacher writes, how often it does)
KINDS: dict[str, tuple[str, str, str, float]] = {
    "plus": ("returns x plus {k}", "x + {k}", "x + {k1}", 0.1),
    "minus": ("returns x minus {k}", "x - {k}", "x - {k1}", 0.1),
    "times": ("returns x times {k}", "x * {k}", "x * {k1}", 0.1),
    "square": ("returns x squared plus {k}", "x * x + {k}", "x * x + {k1}", 0.1),
    "div": ("returns x divided by {k}, rounded down", "x // {k}", "x // {k1}", 0.1),
    "max": ("returns the larger of x and {k}", "max(x, {k})", "min(x, {k})", 0.6),
    "min": ("returns the smaller of x and {k}", "min(x, {k})", "max(x, {k})", 0.6),
    "rminus": ("returns {k} minus x", "{k} - x", "x - {k}", 0.6),
}
# The repair message's error for a failed assert, as the harness (synth.codeexec) reports it.
ASSERT_ERROR = 'Traceback (most recent call last):\n  File "test", line 1, in <module>\nAssertionError'
INSTRUCTION = "Write a Python function {name}(x) that {spec}."


def answer(name: str, expression: str) -> str:
    """The answer's text: the function in one fenced block."""
    return f"```python\ndef {name}(x):\n    return {expression}\n```"


def _value(expression: str, x: int) -> int:
    return eval(expression, {"max": max, "min": min}, {"x": x})  # our own expressions only


def sample_seed(rng: random.Random) -> dict[str, Any]:
    """One specification with its tests (and, for the examples, its kind and K). The tests
    catch every wrong answer the teacher is taught: K off by one either way, and its kind's
    confusion."""
    kind = rng.choice(sorted(KINDS))
    k = rng.randrange(2, 31) if kind == "div" else rng.randrange(1, 100)
    spec, right_form, wrong_form, _ = KINDS[kind]
    right = right_form.format(k=k)
    wrong = {wrong_form.format(k=k, k1=k1) for k1 in (k - 1, k + 1) if k1 > 1 or kind != "div"}
    name = rng.choice(NAMES)
    while True:
        xs = rng.sample([x for x in range(-9, 100) if x != k], 3)
        if all(any(_value(w, x) != _value(right, x) for x in xs) for w in wrong):
            break
    tests = [f"assert {name}({x}) == {_value(right, x)}" for x in xs]
    return {"name": name, "spec": spec.format(k=k), "tests": tests, "kind": kind, "k": k}


def repair_message(seed: dict[str, Any], expression: str) -> str | None:
    """What the `repair:` section sends after an answer with this expression (None: it passes):
    the packaged code/repair.j2 with the first failing test and the harness's error."""
    failing = [t for t in seed["tests"] if not _passes(seed["name"], expression, t)]
    if not failing:
        return None
    template = _repair_template()
    passed = len(seed["tests"]) - len(failing)
    return template.render(**_fields(seed), test=failing[0], error=ASSERT_ERROR, passed=passed, total=len(seed["tests"]),
                           round=1).strip()


@functools.cache
def _repair_template() -> jinja2.Template:
    return jinja2.Template(RepairConfig().template_path().read_text(encoding="utf-8"), undefined=jinja2.StrictUndefined)


def _passes(name: str, expression: str, test: str) -> bool:
    call, want = test.removeprefix(f"assert {name}(").split(") == ")
    return _value(expression, int(call)) == int(want)


def _fields(seed: dict[str, Any]) -> dict[str, Any]:
    return {"name": seed["name"], "spec": seed["spec"], "tests": seed["tests"]}


def example(seed: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One of the teacher's examples: the right answer, or (as often as its kind says) a wrong
    one, the failing test and the right one."""
    spec, right, wrong, rate = KINDS[seed["kind"]]
    k = seed["k"]
    k1 = k + rng.choice((-1, 1)) if k > 2 else k + 1  # off by one (x // 1 would be x itself)
    good = right.format(k=k)
    messages = [{"role": "user", "content": INSTRUCTION.format(**_fields(seed))}]
    if rng.random() < rate:
        bad = wrong.format(k=k, k1=k1)
        message = repair_message(seed, bad)
        if message is not None:
            messages += [{"role": "assistant", "content": answer(seed["name"], bad)}, {"role": "user", "content": message}]
    messages.append({"role": "assistant", "content": answer(seed["name"], good)})
    return {"messages": messages}


def sample_seeds(rng: random.Random, n: int, taken: set[str]) -> list[dict[str, Any]]:
    """`n` specifications, none of them (name and spec) in `taken` (which grows)."""
    out = []
    if n + len(taken) > 15000:  # about 19,000 exist
        raise ValueError(f"{n} more specifications than the task has ({len(taken)} taken)")
    while len(out) < n:
        seed = sample_seed(rng)
        key = INSTRUCTION.format(**seed)
        if key not in taken:
            taken.add(key)
            out.append(seed)
    return out


def prepare(work: Path, prompts: int = 1200, teacher_examples: int = 8000, held_out: int = 0, seed: int = 0,
            vocab_size: int = 512) -> dict[str, Path]:
    """Write the demo's data and untrained models into `work` (models already there are kept).
    With `held_out` > 0 also test.jsonl: specifications disjoint from both other sets."""
    rng = random.Random(seed)
    taken: set[str] = set()
    test = sample_seeds(rng, held_out, taken)
    teacher_seeds = sample_seeds(rng, teacher_examples, taken)
    distill = sample_seeds(rng, prompts, taken)
    paths = {"prompts": work / "prompts.jsonl", "teacher_train": work / "teacher_train.jsonl",
             "teacher_init": work / "teacher-init", "student_init": work / "student-init"}
    work.mkdir(parents=True, exist_ok=True)
    rewrite_atomically(paths["prompts"], [_fields(s) for s in distill])
    rewrite_atomically(paths["teacher_train"], [example(s, rng) for s in teacher_seeds])
    if held_out:
        paths["test"] = work / "test.jsonl"
        rewrite_atomically(paths["test"], [_fields(s) for s in test])
    for name, (hidden, layers, heads) in (("teacher_init", TEACHER_SHAPE), ("student_init", STUDENT_SHAPE)):
        if not (paths[name] / "config.json").exists():
            build_tiny_model(paths[name], vocab_size=vocab_size, hidden_size=hidden, num_layers=layers, num_heads=heads,
                             corpus=paths["teacher_train"], split_digits=True)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m synth.examples.code", description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path, help="directory for the specifications, the teacher's examples and the untrained models")
    ap.add_argument("--prompts", type=int, default=1200, help="specifications to distil on")
    ap.add_argument("--teacher-examples", type=int, default=8000, help="examples for the teacher")
    args = ap.parse_args(argv)

    setup_logging(None)
    paths = prepare(args.work, args.prompts, args.teacher_examples)
    print(f"code: {args.prompts} specifications in {paths['prompts']}, {args.teacher_examples} teacher examples "
          f"in {paths['teacher_train']}, untrained teacher and student in {args.work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
