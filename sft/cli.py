"""The `sft` command line. Thin: parse, resolve the recipe into its plan, run the stage."""

from __future__ import annotations

import argparse
import sys

from sft import __version__
from sft.dpo import Dpo
from sft.evaluate import eval_lines, run_eval
from sft.merge import run_merge
from sft.train import Train
from synth.cli import dispatch, recipe_arguments
from synth.plan import Plan, load_plan
from synth.runtime import is_main_process, setup_logging
from synth.stage import StageResult


def _plan(args: argparse.Namespace) -> Plan:
    plan = load_plan(args.recipe, args.set)
    _ = plan.sft  # an error naming the fix when the recipe has no sft section
    return plan


def _report(result: StageResult, command: str, nothing_to_do: str) -> int:
    if not is_main_process():  # several processes (accelerate launch): rank 0 reports
        return 0
    if result.status == "skipped":
        print(f"{command}: {nothing_to_do}")
    else:
        print("\n".join(result.lines))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    plan = _plan(args)
    student = plan.student.files
    setup_logging(student.train_log, args.verbose)
    result = Train(plan, not args.no_progress, fresh=args.fresh).run(force=args.fresh)
    return _report(result, "sft train", f"{student.trained} was trained on exactly this data, student and config "
                   "already; nothing to do (--fresh trains again from the start)")


def cmd_merge(args: argparse.Namespace) -> int:
    plan = _plan(args)
    setup_logging(plan.layout.log, args.verbose)
    r = run_merge(plan, dtype=args.dtype)
    print(f"sft merge: {r['merged']} ({r['dtype']}); merged vs unmerged logits within {r['max_abs_logit_diff']:.2e} "
          f"on {r['checked_inputs']} inputs")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    plan = _plan(args)
    setup_logging(plan.layout.log, args.verbose)
    print("\n".join(eval_lines(run_eval(plan), plan.student.files)))
    return 0


def cmd_dpo(args: argparse.Namespace) -> int:
    plan = _plan(args)
    student = plan.dpo_student.files
    setup_logging(student.train_log, args.verbose)
    result = Dpo(plan, not args.no_progress, fresh=args.fresh).run(force=args.fresh)
    return _report(result, "sft dpo", f"{student.trained} was trained on exactly these pairs and SFT student "
                   "already; nothing to do")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sft", description="Fine-tune a small student on curated data (LoRA via "
                                     "TRL + PEFT).")
    parser.add_argument("--version", action="version", version=f"stillhouse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = sub.add_parser("train", help="train the student of the recipe's sft section; resumes from its last "
                           "checkpoint", description="Train the student; skipped when it was trained on exactly "
                           "these inputs already, resumed from the last checkpoint of the same inputs, started fresh "
                           "otherwise.")
    recipe_arguments(train)
    train.add_argument("--fresh", action="store_true", help="train from the start (earlier checkpoints are moved aside)")
    train.set_defaults(func=cmd_train)
    merge = sub.add_parser("merge", help="merge the trained adapter into the base weights (bf16 or fp32) and check "
                           "the logits")
    recipe_arguments(merge)
    merge.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of the merged model")
    merge.set_defaults(func=cmd_merge)
    dpo = sub.add_parser("dpo", help="preference training (DPO) of the trained student on OUTPUT/pairs.jsonl; "
                         "resumable", description="Train the SFT student further on preference pairs (`synth pairs`) "
                         "with TRL's DPOTrainer; the result goes to STUDENT/dpo. Skipped when done on the same "
                         "inputs, resumed from its last checkpoint of the same inputs.")
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
