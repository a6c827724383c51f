"""Benchmark: does DPO on the student's own mistakes improve an SFT student?

The dates task of `make demo` (synth.examples.dates), on the artifacts of bench/kd_quality.py
(reused when present, made otherwise): the strong teacher (2,000 steps on ground truth) and
the SFT student trained on its first N answers (`--budget`, default 150: a student that is
often wrong, so there are mistakes to learn from). Then, with stillhouse's commands:

1. `synth generate` + `synth curate`: the teacher answers M prompts (`--prompts`, the first M
   of kd_quality's distillation prompts, the SFT student's N among them), and curation's
   `best_of_n` filter, with the exact checker as its verifier, keeps the right answers;
2. `synth pairs` (`pairs.sources: [student]`): the SFT student answers the same prompts
   (greedy), and every prompt where the checker passes the teacher and fails the student
   becomes a pair: the teacher's answer chosen, the student's rejected;
3. `sft dpo`: DPO (TRL, a LoRA adapter over the SFT student, which is also the reference).

Controls, so that a gain of DPO is not just more data: the same SFT student trained further
with plain SFT, for as many passes, on the chosen answers of the pairs (exactly the prompts
and answers DPO sees, without the rejected side), and on all the teacher's checked answers
to the M prompts. Every model is scored by the checker on kd_quality's 400
held-out prompts, greedy, through `synth generate`.

    python bench/preference_quality.py [--work .bench/kd] [--budget 150] [--prompts 1000]

Last line: RESULT preference_quality sft=<acc> dpo=<acc> sft_on_chosen=<acc> sft_on_all=<acc>
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
sys.path.insert(0, str(REPO / "bench"))

from distill_quality import TEST_PROMPTS, accuracy, cli, recipe  # noqa: E402
from kd_quality import STUDENT, student_run, teacher_data  # noqa: E402

from synth.examples.dates import prepare  # noqa: E402


def merge_adapter(base: Path, adapter: Path, out: Path) -> Path:
    """The SFT student with the DPO adapter merged in, as a model directory synth can serve."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shutil.rmtree(out, ignore_errors=True)  # the adapter of this run, never an earlier one
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).merge_and_unload()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / ".bench" / "kd", help="kd_quality's work dir (its artifacts are reused)")
    ap.add_argument("--fresh", action="store_true", help="redo this bench's part (not kd_quality's teacher and students)")
    ap.add_argument("--budget", type=int, default=150, help="the SFT student: trained on the teacher's first N answers")
    ap.add_argument("--student-steps", type=int, default=600)
    ap.add_argument("--prompts", type=int, default=1000, help="prompts the student answers for pairs (and the control trains on)")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--loss-type", default="sigmoid", help="sft.dpo.loss_type (e.g. sigmoid,sft for DPO plus NLL)")
    ap.add_argument("--dpo-lr", type=float, default=5e-4)
    ap.add_argument("--epochs", type=float, default=3.0, help="passes of DPO over the pairs, and of the control over its data")
    ap.add_argument("--control-lr", type=float, default=2e-4)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.work.resolve()
    pref = work / "preference"
    if args.fresh:
        shutil.rmtree(pref, ignore_errors=True)
    pref.mkdir(parents=True, exist_ok=True)
    (pref / "date.j2").write_text((REPO / "prompts" / "dates" / "date.j2").read_text(), encoding="utf-8")
    started = time.monotonic()
    paths = prepare(work, prompts=4400, teacher_examples=12000, held_out=TEST_PROMPTS)  # kd_quality's data
    (work / "date.j2").write_text((REPO / "prompts" / "dates" / "date.j2").read_text(), encoding="utf-8")
    teacher, teacher_acc, run = teacher_data(work, paths, "strong", 2000)

    # The SFT student: kd_quality's, on the teacher's first N answers (all of them, unchecked).
    rows = (run / "train.jsonl").read_text().splitlines()
    budget = work / f"train-strong-{args.budget}.jsonl"
    budget.write_text("\n".join(rows[: args.budget]) + "\n")
    sft_acc, _ = student_run(work, paths, budget, f"strong-sft-{args.budget}", args.student_steps, None)
    sft_dir = work / "students" / f"strong-sft-{args.budget}"

    # 1-3: teacher answers to M prompts, checked; the student's own answers; pairs; DPO.
    seeds = pref / "prompts.jsonl"
    seeds.write_text("\n".join(json.dumps({"date": json.loads(r)["seed"]["fields"]["date"]}) for r in rows[: args.prompts]) + "\n")
    out = pref / "run"
    sft = {"model": str(paths["student_init"]), "output_dir": str(sft_dir), **STUDENT, "eval_engine": "vllm",
           "dpo": {"beta": args.beta, "loss_type": args.loss_type, "learning_rate": args.dpo_lr, "epochs": args.epochs, "output_dir": str(pref / "dpo")}}
    path = recipe(pref / "dpo.yaml", seeds, teacher, out,
                  curate={"filters": ["empty", {"name": "best_of_n", "function": "synth.examples.dates:check"}],
                          "eval_fraction": 0.0},
                  pairs={"sources": ["student"], "student_max_tokens": 16}, sft=sft)
    cli("synth", "generate", str(path), "--no-progress")
    cli("synth", "curate", str(path), "--no-progress")
    cli("synth", "pairs", str(path))
    t0 = time.monotonic()
    cli("sft", "dpo", str(path), "--no-progress")
    dpo_s = time.monotonic() - t0
    stats = json.loads((out / "stats.json").read_text())
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    dpo_model = merge_adapter(sft_dir / "model", pref / "dpo" / "adapter", pref / "dpo-merged")
    dpo_acc = accuracy(work, "student-dpo", dpo_model)

    # Control: the same student, plain SFT on the teacher's checked answers to the same prompts.
    kept = sum(1 for _ in (out / "train.jsonl").open())
    steps = max(1, round(args.epochs * kept / STUDENT["batch_size"]))
    control_name = f"strong-sft-{args.budget}+sft-{args.prompts}-e{args.epochs}"
    if args.fresh:
        shutil.rmtree(work / "students" / control_name, ignore_errors=True)
    control_acc, _ = student_run(work, paths, out / "train.jsonl", control_name, steps, None,
                                 start=sft_dir / "model", learning_rate=args.control_lr)

    # Control 2: plain SFT on the chosen side of the pairs only (the prompts and answers DPO sees).
    chosen = pref / "chosen.jsonl"
    chosen.write_text("".join(json.dumps({"messages": p["prompt"] + p["chosen"]}) + "\n" for p in pairs))
    chosen_steps = max(1, round(args.epochs * len(pairs) / STUDENT["batch_size"]))
    chosen_name = f"strong-sft-{args.budget}+chosen-{args.prompts}-b{args.beta}-lr{args.dpo_lr}-e{args.epochs}"
    if args.fresh:
        shutil.rmtree(work / "students" / chosen_name, ignore_errors=True)
    chosen_acc, _ = student_run(work, paths, chosen, chosen_name, chosen_steps, None, start=sft_dir / "model",
                                learning_rate=args.control_lr)

    dpo_metrics = json.loads((pref / "dpo" / "metrics.json").read_text())
    print()
    print(f"teacher (strong) held-out accuracy {teacher_acc:.3f}; its pass@1 on the {args.prompts} pair prompts "
          f"{stats['selection']['pass@1']:.3f}")
    print(f"pairs: {len(pairs)} (the student failed and the teacher passed on them, of {args.prompts} prompts)")
    print(f"dpo: {dpo_metrics['global_step']} steps, loss {args.loss_type}, beta {args.beta}, lr {args.dpo_lr}, {dpo_s:.0f} s")
    print(f"held-out accuracy ({TEST_PROMPTS} prompts, exact checker): SFT ({args.budget} examples) {sft_acc:.3f}, "
          f"SFT + DPO {dpo_acc:.3f}, SFT + SFT on the pairs' chosen answers ({chosen_steps} steps) {chosen_acc:.3f}, "
          f"SFT + SFT on all {kept} checked answers to the same prompts ({steps} steps) {control_acc:.3f}; "
          f"total {time.monotonic() - started:.0f} s")
    print(f"RESULT preference_quality sft={sft_acc:.3f} dpo={dpo_acc:.3f} sft_on_chosen={chosen_acc:.3f} "
          f"sft_on_all={control_acc:.3f}")


if __name__ == "__main__":
    main()
