"""The `sft` command line. Thin: parse, set up logging, call the library."""

from __future__ import annotations

import argparse
import sys

from sft import __version__
from synth.cli import dispatch, recipe_arguments
from synth.runtime import is_main_process, setup_logging


def _recipe(args: argparse.Namespace):
    from sft.config import sft_of
    from synth.config import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    return recipe, sft_of(recipe).student(recipe.layout)


def cmd_train(args: argparse.Namespace) -> int:
    recipe, student = _recipe(args)
    setup_logging(student.train_log, args.verbose)
    from sft.train import loss_summary, run_train
    from synth.stages import read_stamp, train_key

    key = train_key(recipe)
    if not args.fresh and read_stamp(student.train_stamp) == key and student.trained_marker.is_file():
        if is_main_process():
            print(f"sft train: {student.trained} was trained on exactly this data, student and config already; "
                  "nothing to do (--fresh trains again from the start)")
        return 0
    m = run_train(recipe, progress=not args.no_progress, key=key, fresh=args.fresh)
    if not is_main_process():  # several processes: rank 0 reports
        return 0
    print(f"sft train: {m['global_step']} steps, {loss_summary(m)}"
          + (f", eval loss {m['eval_loss']:.4f}" if m["eval_loss"] is not None else "")
          + (f" (resumed from {m['resumed_from']})" if m["resumed_from"] else ""))
    print(f"  data: {m['data']['kept']} of {m['data']['rows']} examples, {m['data']['truncated']} truncated"
          + (f", dropped {m['data']['dropped']}" if m["data"]["dropped"] else ""))
    print(f"  saved: {m['saved']}; metrics and loss.png in {student.root}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    recipe, _ = _recipe(args)
    setup_logging(recipe.layout.log, args.verbose)
    from sft.merge import run_merge

    r = run_merge(recipe, dtype=args.dtype)
    print(f"sft merge: {r['merged']} ({r['dtype']}); merged vs unmerged logits within {r['max_abs_logit_diff']:.2e} "
          f"on {r['checked_inputs']} inputs")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    recipe, student = _recipe(args)
    setup_logging(recipe.layout.log, args.verbose)
    from sft.evaluate import run_eval

    r = run_eval(recipe)
    ppl = r["perplexity_of_teacher_answers"]
    print(f"sft eval: {r['examples']} held-out examples ({r['engine']})")
    print(f"  perplexity of the teacher's answers: {ppl['before']:.2f} before -> {ppl['after']:.2f} after training")
    print(f"  ROUGE-L vs teacher: {r['student_before']['rouge_l']:.3f} -> {r['student_after']['rouge_l']:.3f}; "
          f"exact match {r['student_before']['exact_match']:.3f} -> {r['student_after']['exact_match']:.3f}")
    if "verifier" in r:
        v = r["verifier"]
        print(f"  task check pass rate: teacher {v['teacher']:.3f}, student {v['student_before']:.3f} -> {v['student_after']:.3f}")
    print(f"  report: {student.eval_report}, {student.eval_markdown.name}")
    return 0


def cmd_dpo(args: argparse.Namespace) -> int:
    recipe, _ = _recipe(args)
    from sft.dpo import dpo_key, dpo_layout, run_dpo
    from sft.train import loss_summary
    from synth.stages import read_stamp

    student = dpo_layout(recipe)
    setup_logging(student.train_log, args.verbose)
    if not args.fresh and student.trained_marker.is_file() and read_stamp(student.train_stamp) == dpo_key(recipe):
        print(f"sft dpo: {student.trained} was trained on exactly these pairs and SFT student already; nothing to do")
        return 0
    m = run_dpo(recipe, progress=not args.no_progress, fresh=args.fresh)
    if not is_main_process():
        return 0
    print(f"sft dpo: {m['global_step']} steps on {m['data']['rows']} pairs, {loss_summary(m)}"
          + (f" (resumed from {m['resumed_from']})" if m["resumed_from"] else ""))
    print(f"  saved: {m['saved']}; evaluate it with `sft eval RECIPE --set sft.output_dir={student.root}`")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sft", description="Fine-tune a small student on curated data (LoRA via TRL + PEFT).")
    parser.add_argument("--version", action="version", version=f"stillhouse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = sub.add_parser("train", help="train the student of the recipe's sft section; resumes from its last checkpoint",
                           description="Train the student; skipped when it was trained on exactly these inputs already, "
                           "resumed from the last checkpoint of the same inputs, started fresh otherwise.")
    recipe_arguments(train)
    train.add_argument("--fresh", action="store_true", help="train from the start (earlier checkpoints are moved aside)")
    train.set_defaults(func=cmd_train)
    merge = sub.add_parser("merge", help="merge the trained adapter into the base weights (bf16 or fp32) and check the logits")
    recipe_arguments(merge)
    merge.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of the merged model")
    merge.set_defaults(func=cmd_merge)
    dpo = sub.add_parser("dpo", help="preference training (DPO) of the trained student on OUTPUT/pairs.jsonl; resumable",
                         description="Train the SFT student further on preference pairs (`synth pairs`) with TRL's "
                         "DPOTrainer; the result goes to STUDENT/dpo. Skipped when done on the same inputs, resumed "
                         "from its last checkpoint of the same inputs.")
    recipe_arguments(dpo)
    dpo.add_argument("--fresh", action="store_true", help="train from the start (earlier checkpoints are moved aside)")
    dpo.set_defaults(func=cmd_dpo)
    ev = sub.add_parser("eval", help="compare the student with the teacher on the held-out split")
    recipe_arguments(ev)
    ev.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
