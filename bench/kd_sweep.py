"""Benchmark: which settings of sft.distill (top-k KD) move it furthest from plain SFT where data
is scarce, one factor at a time.

The setting of bench/kd_quality.py (the dates task, the imperfect 500-step teacher whose
greedy answers and top-20 logprobs make the data, a random 2-layer student trained 600 steps
at batch 32, accuracy by the exact checker on 400 held-out prompts), at the budgets where KD
matters (100, 150 and 250 examples). From the default (top_k 20, alpha 0.5, forward KL, tail
bucket, temperature 1) one factor changes at a time: alpha (the KL's weight), beta (forward
KL, JSD, reverse KL), k, temperature (without the tail bucket, which needs 1.0), and several
teacher samples per prompt (4 at temperature 1, each with its logprobs, instead of one greedy
answer). The students and teachers are shared with kd_quality's work directory.

    python bench/kd_sweep.py [--work .bench/kd] [--budgets 100,150,250]

Last line: RESULT kd_sweep best=<setting> gain=<its mean gain over SFT at the budgets>
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from distill_quality import TEST_PROMPTS, cli, recipe  # noqa: E402
from kd_quality import student_run, teacher_data  # noqa: E402

from synth.examples.dates import prepare  # noqa: E402

DEFAULT = {"top_k": 20, "alpha": 0.5, "temperature": 1.0, "tail": True}  # sft.distill's defaults before this sweep
SETTINGS = {  # name: the distill options that differ from DEFAULT
    "default (k 20, alpha 0.5, forward KL, temperature 1, tail)": {},
    "alpha 0.8": {"alpha": 0.8},
    "alpha 1.0 (KL alone)": {"alpha": 1.0},
    "beta 0.5 (JSD)": {"beta": 0.5},
    "beta 1.0 (reverse KL)": {"beta": 1.0},
    "k 5": {"top_k": 5},
    "temperature 2, no tail": {"temperature": 2.0, "tail": False},
}
SAMPLES = "4 samples per prompt (temperature 1)"


def tag(options: dict) -> str:
    return "-".join(f"{k}{v}" for k, v in sorted(options.items())) or "default"


def user_text(row: str) -> str:
    return next(m["content"] for m in json.loads(row)["messages"] if m["role"] == "user")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / ".bench" / "kd")
    ap.add_argument("--budgets", default="100,150,250")
    ap.add_argument("--prompts", type=int, default=1100, help="distillation prompts prepared (kd_quality: its largest budget + 10%%)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0, help="the students' training seed (data order, dropout)")
    ap.add_argument("--only", default="", help="comma-separated settings to run (default: all), e.g. 'default,temperature'")
    args = ap.parse_args()
    only = [o for o in args.only.split(",") if o]
    settings = {k: v for k, v in SETTINGS.items() if not only or any(k.startswith(o) for o in only)}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    budgets = [int(b) for b in args.budgets.split(",")]
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    paths = prepare(work, prompts=args.prompts, teacher_examples=12000, held_out=TEST_PROMPTS)
    (work / "date.j2").write_text((REPO / "prompts" / "dates" / "date.j2").read_text(), encoding="utf-8")
    teacher, teacher_acc, run = teacher_data(work, paths, "imperfect", 500)
    rows = (run / "train.jsonl").read_text().splitlines()
    # Four samples per prompt of the largest budget, at temperature 1, each with its logprobs.
    seeds = work / "sweep-seeds.jsonl"
    seeds.write_text("".join(f"{line}\n" for line in paths["prompts"].read_text().splitlines()[:max(budgets) * 2]))
    run4 = work / "run-imperfect-n4"
    if not (run4 / "train.jsonl").exists():
        cli("synth", "run", str(recipe(work / "run-imperfect-n4.yaml", seeds, teacher, run4,
            sampling={"n": 4, "temperature": 1.0, "max_tokens": 16, "seed": 0, "logprobs": 20},
            curate={"filters": ["empty"], "eval_fraction": 0.0})), "--no-progress")
    rows4 = (run4 / "train.jsonl").read_text().splitlines()

    results: dict[str, list[float]] = {}
    sft = []
    for n in budgets:
        data = work / f"train-imperfect-{n}.jsonl"
        data.write_text("\n".join(rows[:n]) + "\n")
        sft.append(student_run(work, paths, data, f"imperfect-sft-{n}", args.steps, None, seed=args.seed)[0])
        for name, options in settings.items():
            distill = {**DEFAULT, **options, "logprobs": str(run / "logprobs.bin")}
            acc = student_run(work, paths, data, f"imperfect-kd-{tag(options)}-{n}", args.steps, distill, seed=args.seed)[0]
            results.setdefault(name, []).append(acc)
            print(f"{n} examples: SFT {sft[-1]:.3f}, KD {name} {acc:.3f}", flush=True)
        if only and not any(SAMPLES.startswith(o) for o in only):
            continue
        prompts = {user_text(r) for r in rows[:n]}
        data4 = work / f"train-imperfect-n4-{n}.jsonl"
        data4.write_text("\n".join(r for r in rows4 if user_text(r) in prompts) + "\n")
        acc = student_run(work, paths, data4, f"imperfect-kd-n4-{n}", args.steps,
                          {**DEFAULT, "logprobs": str(run4 / "logprobs.bin")}, seed=args.seed)[0]
        results.setdefault(SAMPLES, []).append(acc)
        print(f"{n} examples: SFT {sft[-1]:.3f}, KD {SAMPLES} {acc:.3f}", flush=True)

    print()
    print(f"imperfect teacher ({teacher_acc:.3f}); held-out accuracy ({TEST_PROMPTS} prompts), students {args.steps} steps, "
          f"training seed {args.seed}:")
    print("| setting | " + " | ".join(f"{n} examples" for n in budgets) + " | mean gain over SFT |")
    print("| --- | " + " | ".join("---" for _ in budgets) + " | --- |")
    print("| SFT | " + " | ".join(f"{a:.3f}" for a in sft) + " | |")
    gains = {}
    for name, accs in results.items():
        gains[name] = sum(a - s for a, s in zip(accs, sft, strict=True)) / len(budgets)
        print(f"| KD {name} | " + " | ".join(f"{a:.3f}" for a in accs) + f" | {gains[name]:+.3f} |")
    print(f"total {time.monotonic() - started:.0f} s")
    best = max(gains, key=gains.get)
    print(f"RESULT kd_sweep best={best.replace(' ', '_')} gain={gains[best]:+.3f}")


if __name__ == "__main__":
    main()
