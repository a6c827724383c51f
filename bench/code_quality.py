"""Benchmark: does checking a teacher's code by running it make a better student, and which
way of using the checks does most?

The CPU coding task (synth.examples.code, prompts/code/cpu.yaml): one-line function
specifications with three asserts each. The teacher (trained here by prompts/code/teacher.yaml's
settings) is wrong more often than right on three kinds of specification and one time in ten
on the others, and repairs its code when told which test failed. It answers the same
specifications (sampled at temperature 1.0, the recipe's setting) four ways, and a student
(random, 2 layers, hidden 128) is trained on each with the same steps, batch and learning rate:

    all        every answer (truncated and empty ones dropped)
    verified   only answers whose code passes the seed's tests in the sandbox (code_exec)
    best_of_4  four answers per specification, the one passing most tests kept (best_of_n)
    repaired   a failing answer's first failing test goes back to the teacher, up to two
               rounds (repair:); the last answer of each conversation that passes (sft.repairs: final)

Every model is scored on the same 400 held-out specifications by running its answer's code
with their tests in the sandbox (synth.codeexec:passes): the teacher's pass@1 at temperature
1.0 (one sample each), each student's greedy pass@1.

    python bench/code_quality.py [--work .bench/code] [--fresh]

Last line: RESULT code_quality teacher=<..> all=<..> verified=<..> best_of_4=<..> repaired=<..>
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from synth.codeexec import passes  # noqa: E402
from synth.examples.code import prepare  # noqa: E402
from synth.rawlog import iter_records  # noqa: E402

TEST_PROMPTS = 400
BASE = yaml.safe_load((REPO / "prompts" / "code" / "cpu.yaml").read_text(encoding="utf-8"))
BASE_TEACHER_STEPS = yaml.safe_load((REPO / "prompts" / "code" / "teacher.yaml").read_text(encoding="utf-8"))["sft"]["max_steps"]
KEEP = ["truncated", "empty"]
VARIANTS = {
    "all": {"curate": {"filters": KEEP}},
    "verified": {"curate": {"filters": [*KEEP, {"name": "code_exec", "limits": {"cpu_s": 5}}]}},
    "best_of_4": {"sampling": {"n": 4},
                  "curate": {"filters": [*KEEP, {"name": "best_of_n", "function": "synth.codeexec:tests_passed"}]}},
    "repaired": {"repair": {"rounds": 2, "limits": {"cpu_s": 5}}, "sft": {"repairs": "final"},
                 "curate": {"filters": [*KEEP, {"name": "code_exec", "limits": {"cpu_s": 5}}]}},
}


def cli(*args: str) -> str:
    print("$", " ".join(args), flush=True)
    res = subprocess.run([str(Path(sys.executable).parent / args[0]), *args[1:]], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print("  " + "\n".join(res.stdout.strip().splitlines()[-4:]).replace("\n", "\n  "), flush=True)
    if res.returncode:
        sys.exit(f"{args[0]} failed (exit {res.returncode}); output above")
    return res.stdout


def recipe(path: Path, seeds: Path, teacher: Path, out: Path, student: Path | None = None, **sections) -> Path:
    """prompts/code/cpu.yaml with this run's paths, and `sections` merged over it."""
    data = copy.deepcopy(BASE)
    data["seeds"]["path"], data["teacher"]["model"], data["output"]["dir"] = str(seeds), str(teacher), str(out)
    data["curate"]["eval_fraction"] = 0.0  # every model is scored on the bench's own held-out set
    data["sft"]["model"] = str(student or teacher)
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def pass_rate(work: Path, name: str, model: Path, temperature: float) -> float:
    """pass@1 of `model` on the held-out specifications: one answer each through `synth
    generate`, its code run with the tests in the sandbox."""
    out = work / "scores" / name
    shutil.rmtree(out, ignore_errors=True)
    cli("synth", "generate", str(recipe(work / f"score-{name}.yaml", work / "test.jsonl", model, out,
                                        sampling={"temperature": temperature})), "--no-progress")
    records = list(iter_records(out / "raw.jsonl"))
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        ok = sum(result[0] for result in pool.map(passes, records))
    return ok / TEST_PROMPTS  # a specification without an answer counts as failed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / ".bench" / "code")
    ap.add_argument("--fresh", action="store_true", help="start over (retrain the teacher too)")
    ap.add_argument("--prompts", type=int, default=800, help="specifications to distil on")
    ap.add_argument("--teacher-steps", type=int, default=BASE_TEACHER_STEPS)
    ap.add_argument("--student-steps", type=int, default=BASE["sft"]["max_steps"])
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.work.resolve()
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    paths = prepare(work, prompts=args.prompts, held_out=TEST_PROMPTS)

    # 1. The teacher, as prompts/code/teacher.yaml trains it.
    teacher = work / "teacher" / "model"
    if not (teacher / "model.safetensors").exists():
        spec = yaml.safe_load((REPO / "prompts" / "code" / "teacher.yaml").read_text(encoding="utf-8"))
        spec["seeds"]["path"], spec["teacher"]["model"] = str(paths["prompts"]), str(paths["teacher_init"])
        spec["output"]["dir"] = str(work / "teacher-data")
        spec["sft"].update(model=str(paths["teacher_init"]), train=str(paths["teacher_train"]),
                           output_dir=str(work / "teacher"), max_steps=args.teacher_steps)
        (work / "teacher.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        cli("sft", "train", str(work / "teacher.yaml"), "--no-progress")
    scores = {"teacher": pass_rate(work, "teacher", teacher, 1.0), "teacher_greedy": pass_rate(work, "teacher-greedy", teacher, 0.0)}

    # 2. The four ways, each a `synth run` (generate, curate, train), the same student steps.
    kept = {}
    for name, sections in VARIANTS.items():
        out = work / name
        sft = {"max_steps": args.student_steps, **sections.get("sft", {})}
        cli("synth", "run", str(recipe(work / f"{name}.yaml", paths["prompts"], teacher, out, paths["student_init"],
                                       **{**sections, "sft": sft})), "--no-progress")
        kept[name] = sum(1 for _ in iter_records(out / "train.jsonl"))
        scores[name] = pass_rate(work, name, out / "student" / "model", 0.0)

    print(f"\ncode task: {args.prompts} specifications, teacher {args.teacher_steps} steps, students {args.student_steps} "
          f"steps each, pass@1 on {TEST_PROMPTS} held-out specifications ({(time.monotonic() - started) / 60:.0f} min)")
    print("| model | training examples | pass@1 |\n| --- | --- | --- |")
    print(f"| teacher (temperature 1.0, one sample) | | {scores['teacher']:.3f} |")
    print(f"| teacher (greedy) | | {scores['teacher_greedy']:.3f} |")
    for name in VARIANTS:
        print(f"| student: {name} | {kept[name]} | {scores[name]:.3f} |")
    print("RESULT code_quality " + " ".join(f"{k}={scores[k]:.3f}" for k in ("teacher", *VARIANTS)))


if __name__ == "__main__":
    main()
