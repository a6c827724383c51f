"""Benchmark: does training on the teacher's top-k logprobs (sft.distill) beat training on its
text alone (plain SFT), and at how many examples?

The dates task (synth.examples.dates, the task of `make demo`): a teacher trained here on
ground truth; `synth generate` writes its greedy answers to 4,000 prompts with
`sampling.logprobs: 20`; curation keeps them all (no checker: the teacher's mistakes stay, as
they would with a teacher you cannot check); then for each data budget (the first N curated
examples) a student (random, 2 layers, hidden 128) is trained twice with the same steps,
batch and learning rate: plain SFT, and KD (`sft.distill`, top-k KL + cross-entropy). Every
model is scored by the exact checker on 400 held-out prompts (greedy, through synth
generate). Two teachers: a strong one (2,000 steps) and an imperfect one (500 steps, wrong
on a fifth or more of the prompts), whose uncertainty is what KD has to teach.

On-policy distillation (`sft.distill.loss: on_policy`) is measured as it is used: from the SFT
student of a budget, the same number of extra steps either as more SFT or on-policy (the
student samples answers to the budget's prompts, the teacher scores every token).

Also measured: generation throughput with logprobs 20 against without (the same engine, the
same prompts), and the cost of a KD training step against an SFT step.

    python bench/kd_quality.py [--work .bench/kd] [--fresh] [--budgets 250,500,1000,4000]

Last line: RESULT kd_quality examples_ratio=<examples KD needs to reach 0.9 of the teacher /
examples SFT needs> kd_min_gain=<smallest KD-minus-SFT accuracy over the budgets>
(for the imperfect teacher; both teachers' tables are printed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from distill_quality import TEST_PROMPTS, accuracy, cli, recipe  # noqa: E402

from synth.examples.dates import prepare  # noqa: E402

STUDENT = {"full_finetune": True, "batch_size": 32, "learning_rate": 2e-3, "warmup_ratio": 0.05, "weight_decay": 0.01,
           "max_length": 128, "logging_steps": 50, "save_steps": 10_000}


def train_teacher(work: Path, paths: dict, name: str, steps: int) -> Path:
    model = work / name / "model"
    if not (model / "model.safetensors").exists():
        cli("sft", "train", str(recipe(work / f"{name}.yaml", paths["prompts"], paths["teacher_init"], work / f"{name}-data", sft={
            "model": str(paths["teacher_init"]), "train": str(paths["teacher_train"]), "output_dir": str(work / name),
            "max_steps": steps, "learning_rate": 3e-3, **{k: v for k, v in STUDENT.items() if k != "learning_rate"}})),
            "--no-progress")
    return model


def teacher_data(work: Path, paths: dict, label: str, steps: int, top_k: int = 20) -> tuple[Path, float, Path]:
    """The teacher trained `steps` steps, its held-out accuracy, and the run directory of its
    greedy answers to the distillation prompts with their top-k logprobs (every answer kept)."""
    teacher = train_teacher(work, paths, f"teacher-{label}", steps)
    teacher_acc = accuracy(work, f"teacher-{label}", teacher)
    run = work / f"run-{label}"
    if not (run / "train.jsonl").exists():
        cli("synth", "run", str(recipe(work / f"run-{label}.yaml", paths["prompts"], teacher, run,
            sampling={"n": 1, "temperature": 0.0, "max_tokens": 16, "seed": 0, "logprobs": top_k},
            curate={"filters": ["empty", {"name": "exact_dedup", "field": "prompt"}]})), "--no-progress")
    return teacher, teacher_acc, run


def generation_speed(work: Path, teacher: Path, prompts: Path, k: int) -> tuple[float, float]:
    """Output tokens/s of one engine on the same prompts, without and with logprobs k."""
    import yaml

    from synth.backends.vllm_engine import VllmBackend
    from synth.generate import run_generate
    from synth.plan import load_plan

    speeds = []
    backend = None
    for logprobs in (0, k, 0, k):  # interleaved, twice: the machine's drift hits both
        out = work / f"speed-{logprobs}-{len(speeds)}"
        shutil.rmtree(out, ignore_errors=True)
        path = recipe(work / "speed.yaml", prompts, teacher, out)
        data = yaml.safe_load(path.read_text())
        data["sampling"]["logprobs"] = logprobs
        path.write_text(yaml.safe_dump(data))
        plan = load_plan(path)
        backend = backend or VllmBackend(plan.recipe.teacher)
        t = time.perf_counter()
        m = run_generate(plan, backend, progress=False)
        speeds.append((logprobs, m["tokens"]["completion_this_run"] / (time.perf_counter() - t)))
    backend.close()
    plain = [s for lp, s in speeds if lp == 0]
    with_lp = [s for lp, s in speeds if lp]
    return max(plain), max(with_lp)


def student_run(work: Path, paths: dict, data: Path, name: str, steps: int, distill: dict | None,
                start: Path | None = None, learning_rate: float | None = None, seed: int = 0) -> tuple[float, float]:
    """(held-out accuracy, seconds per training step) of one student, trained from `start`
    (default: the random student) with the training seed `seed` (data order, dropout)."""
    name = name if not seed else f"{name}-seed{seed}"
    out = work / "students" / name
    model = out / "model"
    if not (model / "model.safetensors").exists():
        sft = {"model": str(start or paths["student_init"]), "train": str(data), "output_dir": str(out), "max_steps": steps,
               **STUDENT, **({"learning_rate": learning_rate} if learning_rate else {}), **({"seed": seed} if seed else {})}
        if distill is not None:
            sft["distill"] = distill
        cli("sft", "train", str(recipe(work / f"{name}.yaml", paths["prompts"], paths["student_init"], work / "teacher-run", sft=sft)),
            "--no-progress")
    metrics = json.loads((out / "metrics.json").read_text())
    per_step = metrics["train"]["train_runtime"] / max(metrics["global_step"], 1)
    return accuracy(work, f"student-{name}", model), per_step


def needed(budgets: list[int], accs: list[float], goal: float) -> float | None:
    """Examples needed to reach `goal`, interpolated on a log scale between budgets."""
    import math

    for i, (n, a) in enumerate(zip(budgets, accs, strict=True)):
        if a >= goal:
            if i == 0:
                return float(n)
            n0, a0 = budgets[i - 1], accs[i - 1]
            t = (goal - a0) / (a - a0)
            return math.exp(math.log(n0) + t * (math.log(n) - math.log(n0)))
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / ".bench" / "kd")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--budgets", default="250,500,1000,4000")
    ap.add_argument("--steps", type=int, default=600, help="training steps of every student")
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--on-policy-budgets", default="100,250,1000",
                    help="budgets whose SFT student continues with on-policy distillation (and, to compare, more SFT)")
    ap.add_argument("--on-policy-steps", type=int, default=200)
    ap.add_argument("--continue-lr", type=float, default=2e-4, help="learning rate of both continuations")
    ap.add_argument("--teachers", default="strong,imperfect", help="which teachers' tables to make (the RESULT line is the imperfect one's)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    budgets = [int(b) for b in args.budgets.split(",")]
    on_policy_budgets = [int(b) for b in args.on_policy_budgets.split(",") if b]
    work = args.work.resolve()
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    paths = prepare(work, prompts=max(budgets) + max(budgets) // 10, teacher_examples=12000, held_out=TEST_PROMPTS)
    (work / "date.j2").write_text((REPO / "prompts" / "dates" / "date.j2").read_text(), encoding="utf-8")

    from sft.config import DistillOptions

    d = DistillOptions()
    defaults = f"kd-a{d.alpha}-b{d.divergence_beta}-t{d.kd_temperature}-tail{d.kd_tail}"  # a student per default setting
    tables = {}
    for label, steps in [(t, s) for t, s in (("strong", 2000), ("imperfect", 500)) if t in args.teachers.split(",")]:
        teacher, teacher_acc, run = teacher_data(work, paths, label, steps, args.top_k)
        rows = (run / "train.jsonl").read_text().splitlines()
        rows_by_budget = {}
        for n in budgets:
            subset = work / f"train-{label}-{n}.jsonl"
            subset.write_text("\n".join(rows[:n]) + "\n")
            rows_by_budget[n] = subset
        sft, kd, step_s = [], [], []
        for n in budgets:
            a_sft, s_sft = student_run(work, paths, rows_by_budget[n], f"{label}-sft-{n}", args.steps, None)
            a_kd, s_kd = student_run(work, paths, rows_by_budget[n], f"{label}-{defaults}-{n}", args.steps,
                                     {"top_k": args.top_k, "logprobs": str(run / "logprobs.bin")})  # sft.distill's defaults
            sft.append(a_sft)
            kd.append(a_kd)
            step_s.append(s_kd / s_sft)
            print(f"{label} teacher ({teacher_acc:.3f}), {n} examples: SFT {a_sft:.3f}, KD {a_kd:.3f}", flush=True)
        tables[label] = {"teacher": teacher_acc, "sft": sft, "kd": kd, "kd_step_cost": step_s, "continued": {}}
        for n in [b for b in on_policy_budgets if b in budgets]:
            # From the SFT student of this budget, the same extra steps two ways: more SFT on the
            # teacher's answers, or on-policy (the student samples answers to the same prompts,
            # the teacher scores them).
            start = work / "students" / f"{label}-sft-{n}" / "model"
            more, s_more = student_run(work, paths, rows_by_budget[n], f"{label}-sft+sft-{n}", args.on_policy_steps, None,
                                       start=start, learning_rate=args.continue_lr)
            op, s_op = student_run(work, paths, rows_by_budget[n], f"{label}-sft+onpolicy-{n}", args.on_policy_steps,
                                   {"loss": "on_policy", "teacher": str(teacher), "max_new_tokens": 16, "beta": 0.5},
                                   start=start, learning_rate=args.continue_lr)
            tables[label]["continued"][n] = (more, op, s_op / s_more)
            print(f"{label} teacher, {n} examples, SFT then {args.on_policy_steps} steps: more SFT {more:.3f}, "
                  f"on-policy {op:.3f}", flush=True)

    first = next(iter(tables))
    speed_plain, speed_lp = generation_speed(work, work / f"teacher-{first}" / "model", paths["prompts"], args.top_k)
    manifest = json.loads((work / f"run-{first}" / "manifest.json").read_text())
    print()
    print(f"held-out accuracy ({TEST_PROMPTS} prompts, exact checker), students trained {args.steps} steps each:")
    print("| teacher | examples | SFT | KD (top-k KL + CE) | KD - SFT |")
    print("| --- | --- | --- | --- | --- |")
    for label, t in tables.items():
        for n, a, b in zip(budgets, t["sft"], t["kd"], strict=True):
            print(f"| {label} ({t['teacher']:.3f}) | {n} | {a:.3f} | {b:.3f} | {b - a:+.3f} |")
    print()
    print(f"from the SFT student, {args.on_policy_steps} more steps (lr {args.continue_lr}):")
    print("| teacher | examples (prompts) | SFT | + more SFT | + on-policy | on-policy - more SFT | on-policy step / SFT step |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, t in tables.items():
        for n, (more, op, cost) in t["continued"].items():
            print(f"| {label} ({t['teacher']:.3f}) | {n} | {t['sft'][budgets.index(n)]:.3f} | {more:.3f} | {op:.3f} | "
                  f"{op - more:+.3f} | {cost:.1f} |")
    for label, t in tables.items():
        goal = 0.9 * t["teacher"]
        print(f"{label}: examples to reach 0.9 of the teacher ({goal:.3f}): SFT {needed(budgets, t['sft'], goal)}, "
              f"KD {needed(budgets, t['kd'], goal)}; KD step cost / SFT step: "
              f"{', '.join(f'{c:.2f}' for c in t['kd_step_cost'])}")
    print(f"generation: {speed_plain:,.0f} output tok/s without logprobs, {speed_lp:,.0f} with logprobs {args.top_k} "
          f"(ratio {speed_lp / speed_plain:.2f}); sidecar {manifest['logprobs']['bytes_per_1k_answer_tokens']:,} bytes per 1,000 answer tokens")
    print(f"total {time.monotonic() - started:.0f} s")
    t = tables["imperfect"]
    goal = 0.9 * t["teacher"]
    n_sft, n_kd = needed(budgets, t["sft"], goal), needed(budgets, t["kd"], goal)
    ratio = f"{n_kd / n_sft:.2f}" if n_sft and n_kd else "none"
    print(f"RESULT kd_quality examples_ratio={ratio} kd_min_gain={min(b - a for a, b in zip(t['sft'], t['kd'], strict=True)):+.3f}")


if __name__ == "__main__":
    main()
