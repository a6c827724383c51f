"""Benchmark: does distillation work? A teacher that really knows a narrow task, a smaller
student taught by stillhouse, both scored by an exact checker.

No pretrained weights reach these machines, so the teacher is made here: a small random
chat model (`synth tiny-model`, 4 layers, hidden 256) fully fine-tuned by `sft train` on
ground-truth examples of a procedural task, date normalisation ("3rd of March 2021" ->
"2021-03-03", seven written formats, years 1900-2099). Then stillhouse does the rest with
one command, `synth run` on a recipe: generate (the teacher answers fresh prompts greedily
through the in-process vLLM engine), curate (the exact checker as a `verifier` filter, exact
dedup), write the card, train the student, evaluate it. The student is a smaller random
model (2 layers, hidden 128) trained with `sft.full_finetune: true`: LoRA needs a base that
already models the text, and a random base does not.

Accuracy is measured the same way for all three models: `synth generate` on 400 held-out
prompts (no overlap with the teacher's training data or the distillation prompts), greedy,
every answer scored by the checker. The student before training is the random base.

    python bench/distill_quality.py [--work .bench/distill] [--fresh]

Stages whose outputs exist are reused (the teacher takes most of the time); --fresh starts
over. Last line: RESULT distill_quality ratio=<student_after/teacher> before=<student_before>
"""

from __future__ import annotations

import argparse
import calendar
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MONTHS = list(calendar.month_name)[1:]
ABBR = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
INSTRUCTION = "Write this date as YYYY-MM-DD: "
TEST_PROMPTS = 400  # held-out prompts every model is scored on


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


def check(record: dict) -> bool | tuple[bool, str]:
    """The exact checker, as a stillhouse verifier: the answer is the ISO date, nothing else."""
    user = next(m["content"] for m in record["messages"] if m["role"] == "user")
    answer = record["messages"][-1]["content"].strip()
    want = expected(user)
    return True if answer == want else (False, f"wanted {want}, got {answer[:40]!r}")


def sample_prompts(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    start, days = date(1900, 1, 1).toordinal(), (date(2099, 12, 31) - date(1900, 1, 1)).days
    out = []
    while len(out) < n:
        d = date.fromordinal(start + rng.randrange(days + 1))
        text = rng.choice(FORMATS)[0](d)
        if text not in taken:
            taken.add(text)
            out.append(text)
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


CPU_VLLM = {"dtype": "float32", "enforce_eager": True, "gpu_memory_utilization": 0.1, "max_model_len": 256}


def recipe(path: Path, seeds: Path, teacher: Path, out: Path, **sections) -> Path:
    data = {
        "name": path.stem,
        "seeds": {"path": str(seeds), "fields": {"date": "date"}},
        "template": {"path": str(path.parent / "date.j2")},
        "teacher": {"backend": "vllm", "model": str(teacher), "vllm": CPU_VLLM},
        "sampling": {"n": 1, "temperature": 0.0, "max_tokens": 16, "seed": 0},
        "output": {"dir": str(out)},
        **sections,
    }
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def cli(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "bench"), os.environ.get("PYTHONPATH", "")])}
    print("$", " ".join(args), flush=True)
    res = subprocess.run([str(Path(sys.executable).parent / args[0]), *args[1:]], env=env, cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail = "\n".join(res.stdout.strip().splitlines()[-6:])
    print("  " + tail.replace("\n", "\n  "), flush=True)
    if res.returncode:
        sys.exit(f"{args[0]} failed (exit {res.returncode}); output above")


def accuracy(work: Path, name: str, model: Path) -> float:
    """Greedy answers of `model` to the held-out prompts through `synth generate`, checked."""
    from synth.rawlog import iter_records

    out = work / "accuracy" / name
    shutil.rmtree(out, ignore_errors=True)
    cli("synth", "generate", str(recipe(work / f"acc-{name}.yaml", work / "test.jsonl", model, out)), "--no-progress")
    records = list(iter_records(out / "raw.jsonl"))
    ok = sum(check(r) is True for r in records)
    return ok / TEST_PROMPTS  # a prompt without an answer counts as wrong


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / ".bench" / "distill")
    ap.add_argument("--fresh", action="store_true", help="start over (retrain the teacher too)")
    ap.add_argument("--teacher-examples", type=int, default=12000)
    ap.add_argument("--teacher-steps", type=int, default=1500)
    ap.add_argument("--distill-prompts", type=int, default=4000)
    ap.add_argument("--student-steps", type=int, default=1200)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.work.resolve()
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    from synth.tiny_model import build_tiny_model

    # Data: three disjoint prompt sets. The teacher learns from ground truth; the student only
    # ever sees what the teacher wrote (and the checker let through).
    rng = random.Random(0)
    taken: set[str] = set()
    test = sample_prompts(rng, TEST_PROMPTS, taken)
    teacher_train = sample_prompts(rng, args.teacher_examples, taken)
    distill = sample_prompts(rng, args.distill_prompts, taken)
    write_jsonl(work / "test.jsonl", [{"date": t} for t in test])
    write_jsonl(work / "distill.jsonl", [{"date": t} for t in distill])
    write_jsonl(work / "teacher_train.jsonl", [
        {"messages": [{"role": "user", "content": INSTRUCTION + t}, {"role": "assistant", "content": expected(INSTRUCTION + t)}]}
        for t in teacher_train])
    (work / "date.j2").write_text("{% block user %}" + INSTRUCTION + "{{ date }}{% endblock %}\n", encoding="utf-8")

    # Near character-level tokenizer (vocab 320: bytes + a few merges), so digits are tokens.
    teacher_init = build_tiny_model(work / "teacher-init", vocab_size=320, hidden_size=256, num_layers=4, num_heads=4)
    student_init = build_tiny_model(work / "student-init", vocab_size=320, hidden_size=128, num_layers=2, num_heads=2)

    # 1. The teacher: full fine-tuning on ground truth, with stillhouse's own trainer.
    teacher = work / "teacher" / "student" / "model"
    t0 = time.monotonic()
    if not (teacher / "model.safetensors").exists():
        cli("sft", "train", str(recipe(work / "teacher.yaml", work / "test.jsonl", teacher_init, work / "teacher", sft={
            "model": str(teacher_init), "train": str(work / "teacher_train.jsonl"), "full_finetune": True,
            "max_steps": args.teacher_steps, "batch_size": 32, "learning_rate": 2e-3, "warmup_ratio": 0.05,
            "weight_decay": 0.01, "max_length": 128, "logging_steps": 100, "save_steps": 500})), "--no-progress")
    teacher_s = time.monotonic() - t0

    # 2. stillhouse, one command: generate with the teacher, curate with the checker, train, eval.
    t0 = time.monotonic()
    run_out = work / "run"
    cli("synth", "run", str(recipe(work / "distill.yaml", work / "distill.jsonl", teacher, run_out,
        curate={"filters": ["empty", {"name": "verifier", "function": "distill_quality:check"},
                            {"name": "exact_dedup", "field": "prompt"}], "eval_fraction": 0.05},
        sft={"model": str(student_init), "full_finetune": True, "max_steps": args.student_steps, "batch_size": 32,
             "learning_rate": 2e-3, "warmup_ratio": 0.05, "weight_decay": 0.01, "max_length": 128,
             "logging_steps": 100, "save_steps": 500, "eval_steps": 400, "eval_limit": 100, "eval_max_new_tokens": 16,
             "eval_verifier": "distill_quality:check"})), "--no-progress")
    distill_s = time.monotonic() - t0

    # 3. The same held-out prompts and checker for every model.
    teacher_acc = accuracy(work, "teacher", teacher)
    before = accuracy(work, "student-before", student_init)
    after = accuracy(work, "student-after", run_out / "student" / "model")

    stats = json.loads((run_out / "stats.json").read_text())
    ev = json.loads((run_out / "student" / "eval_report.json").read_text())
    params = {}
    for name, path in (("teacher", teacher_init), ("student", student_init)):
        from safetensors import safe_open

        with safe_open(str(path / "model.safetensors"), "pt") as fh:
            params[name] = sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())
    print()
    print(f"teacher: {params['teacher'] / 1e6:.2f}M params, trained {teacher_s:.0f} s on {args.teacher_examples} ground-truth examples")
    print(f"student: {params['student'] / 1e6:.2f}M params, full fine-tune on the teacher's checked answers")
    print(f"curation: {json.dumps(stats)[:300]}")
    print(f"sft eval on the curated eval split: verifier {ev.get('verifier')}")
    print(f"distillation (synth run: generate, curate, card, train, eval): {distill_s:.0f} s")
    print(f"held-out accuracy ({TEST_PROMPTS} prompts, exact checker): teacher {teacher_acc:.3f}, student before {before:.3f}, "
          f"student after {after:.3f}; total {time.monotonic() - started:.0f} s")
    print(f"RESULT distill_quality ratio={after / teacher_acc if teacher_acc else 0:.3f} before={before:.3f}")


if __name__ == "__main__":
    main()
