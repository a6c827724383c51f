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
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from synth.examples.dates import check, prepare  # noqa: E402

TEST_PROMPTS = 400  # held-out prompts every model is scored on


CPU_VLLM = {"dtype": "float32", "enforce_eager": True, "max_model_len": 256}


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
    print("$", " ".join(args), flush=True)
    res = subprocess.run([str(Path(sys.executable).parent / args[0]), *args[1:]], cwd=REPO,
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
    # Data: three disjoint prompt sets (synth.examples.dates, the task of `make demo`). The
    # teacher learns from ground truth; the student only ever sees what the teacher wrote (and
    # the checker let through). This bench keeps its recorded configuration: a 4-layer
    # hidden-256 teacher and a near character-level tokenizer (vocab 320, no task merges).
    paths = prepare(work, prompts=args.distill_prompts, teacher_examples=args.teacher_examples, held_out=TEST_PROMPTS,
                    teacher_shape=(256, 4, 4), student_shape=(128, 2, 2), vocab_size=320, task_tokenizer=False)
    teacher_init, student_init = paths["teacher_init"], paths["student_init"]
    (work / "date.j2").write_text((REPO / "prompts" / "dates" / "date.j2").read_text(), encoding="utf-8")

    # 1. The teacher: full fine-tuning on ground truth, with stillhouse's own trainer.
    teacher = work / "teacher" / "student" / "model"
    t0 = time.monotonic()
    if not (teacher / "model.safetensors").exists():
        cli("sft", "train", str(recipe(work / "teacher.yaml", paths["test"], teacher_init, work / "teacher", sft={
            "model": str(teacher_init), "train": str(work / "teacher_train.jsonl"), "full_finetune": True,
            "max_steps": args.teacher_steps, "batch_size": 32, "learning_rate": 2e-3, "warmup_ratio": 0.05,
            "weight_decay": 0.01, "max_length": 128, "logging_steps": 100, "save_steps": 500})), "--no-progress")
    teacher_s = time.monotonic() - t0

    # 2. stillhouse, one command: generate with the teacher, curate with the checker, train, eval.
    t0 = time.monotonic()
    run_out = work / "run"
    cli("synth", "run", str(recipe(work / "distill.yaml", paths["prompts"], teacher, run_out,
        curate={"filters": ["empty", {"name": "verifier", "function": "synth.examples.dates:check"},
                            {"name": "exact_dedup", "field": "prompt"}], "eval_fraction": 0.05},
        sft={"model": str(student_init), "full_finetune": True, "max_steps": args.student_steps, "batch_size": 32,
             "learning_rate": 2e-3, "warmup_ratio": 0.05, "weight_decay": 0.01, "max_length": 128,
             "logging_steps": 100, "save_steps": 500, "eval_steps": 400, "eval_limit": 100, "eval_max_new_tokens": 16,
             "eval_verifier": "synth.examples.dates:check"})), "--no-progress")
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
