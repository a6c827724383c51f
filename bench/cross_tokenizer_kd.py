"""Benchmark: knowledge distillation from a teacher whose tokenizer is not the student's
(`sft.distill.cross_tokenizer`: the teacher's top-k logprobs matched to the student's tokens by
text) against plain SFT, by data budget.

The dates task (synth.examples.dates, the task of `make demo`). The student is the demo's
(random, 2 layers, hidden 128, a tokenizer learnt from the task's text: 395 tokens). The
teacher (3 layers, hidden 192) gets another tokenizer learnt from the same text, capped at 320
tokens: other merges ("September" is one token for the student, three for the teacher),
another size, and the same rule for digits (each digit a token in both, so the comparison has
no digit-splitting difference in it). It is trained on
ground truth for 2,000 steps; `synth run` writes its greedy answers to the distillation
prompts with `sampling.logprobs: 20`. For each budget (the first N answers) the student is
trained twice with the same steps, batch and learning rate: plain SFT on the teacher's text,
and SFT + the top-k KL (alpha 0.5) at the positions where both tokenizations start a token at
the same character, the teacher's tokens mapped to the student's of the same text. Every model is scored by the exact checker on 400 held-out prompts (greedy).

    python bench/cross_tokenizer_kd.py [--work .bench/xtok] [--budgets 100,150,250,500,1000]

Last line: RESULT xtok_kd gain_100=<KD - SFT at 100> gain_250=<at 250> min_gain=<smallest over
the budgets>
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from distill_quality import TEST_PROMPTS, accuracy, cli, recipe  # noqa: E402
from kd_quality import student_run, train_teacher  # noqa: E402

from synth.examples.dates import prepare  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / ".bench" / "xtok")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--budgets", default="100,150,250,500,1000")
    ap.add_argument("--steps", type=int, default=600, help="training steps of every student")
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--teacher-vocab", type=int, default=320)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    budgets = [int(b) for b in args.budgets.split(",")]
    work = args.work.resolve()
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    prompts = max(budgets) + max(budgets) // 10
    paths = prepare(work, prompts=prompts, teacher_examples=12000, held_out=TEST_PROMPTS)
    # The same data (same seed), a teacher whose tokenizer has another vocabulary.
    teacher_paths = prepare(work / "teacher-vocab", prompts=prompts, teacher_examples=12000, held_out=TEST_PROMPTS,
                            vocab_size=args.teacher_vocab)
    (work / "date.j2").write_text((REPO / "prompts" / "dates" / "date.j2").read_text(), encoding="utf-8")
    from transformers import AutoTokenizer

    t_tok, s_tok = AutoTokenizer.from_pretrained(teacher_paths["teacher_init"]), AutoTokenizer.from_pretrained(paths["student_init"])
    sample = "Write this date as YYYY-MM-DD: 3rd of March 2021 2021-03-03"
    print(f"teacher vocabulary {len(t_tok)}, student vocabulary {len(s_tok)}; '{sample}': teacher "
          f"{len(t_tok(sample)['input_ids'])} tokens, student {len(s_tok(sample)['input_ids'])} tokens", flush=True)

    teacher = train_teacher(work, teacher_paths, "teacher", 2000)
    teacher_acc = accuracy(work, "teacher", teacher)
    run = work / "run"
    cli("synth", "run", str(recipe(work / "run.yaml", paths["prompts"], teacher, run,
        sampling={"n": 1, "temperature": 0.0, "max_tokens": 16, "seed": 0, "logprobs": args.top_k},
        curate={"filters": ["empty", {"name": "exact_dedup", "field": "prompt"}]})), "--no-progress")
    rows = (run / "train.jsonl").read_text().splitlines()
    sft, kd = [], []
    for n in budgets:
        subset = work / f"train-{n}.jsonl"
        subset.write_text("\n".join(rows[:n]) + "\n")
        a_sft, _ = student_run(work, paths, subset, f"sft-{n}", args.steps, None)
        a_kd, _ = student_run(work, paths, subset, f"xtok-{n}", args.steps,
                              {"top_k": args.top_k, "alpha": 0.5, "logprobs": str(run / "logprobs.bin"),
                               "cross_tokenizer": True, "teacher": str(teacher)})
        sft.append(a_sft)
        kd.append(a_kd)
        print(f"{n} examples: SFT {a_sft:.3f}, cross-tokenizer KD {a_kd:.3f}", flush=True)
    print()
    print(f"teacher ({len(t_tok)}-token vocabulary) {teacher_acc:.3f} on {TEST_PROMPTS} held-out prompts; "
          f"students ({len(s_tok)}) trained {args.steps} steps each:")
    print("| examples | SFT | cross-tokenizer KD (matched top-k KL + CE) | KD - SFT |")
    print("| --- | --- | --- | --- |")
    for n, a, b in zip(budgets, sft, kd, strict=True):
        print(f"| {n} | {a:.3f} | {b:.3f} | {b - a:+.3f} |")
    print(f"wall time {time.monotonic() - started:.0f} s")
    gains = {n: b - a for n, a, b in zip(budgets, sft, kd, strict=True)}
    print(f"RESULT xtok_kd gain_100={gains.get(100, float('nan')):+.3f} gain_250={gains.get(250, float('nan')):+.3f} "
          f"min_gain={min(gains.values()):+.3f}")


if __name__ == "__main__":
    main()
