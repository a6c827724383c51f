"""The `sft` command line. Thin: parse, set up logging, call the library."""

from __future__ import annotations

import argparse
import sys

from sft import __version__


def cmd_train(args: argparse.Namespace) -> int:
    from synth.cli import _setup_logging
    from synth.config import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    from sft.config import load_sft

    cfg = load_sft(recipe.sft)
    out = cfg.resolved_paths(recipe.output.dir)[2]
    _setup_logging(out / "train.log", args.verbose)
    from sft.train import loss_summary, run_train
    from synth.cli import is_main_process

    m = run_train(recipe, progress=not args.no_progress)
    if not is_main_process():  # several processes: rank 0 reports
        return 0
    print(f"sft train: {m['global_step']} steps, {loss_summary(m)}"
          + (f", eval loss {m['eval_loss']:.4f}" if m["eval_loss"] is not None else "")
          + (f" (resumed from {m['resumed_from']})" if m["resumed_from"] else ""))
    print(f"  data: {m['data']['kept']} of {m['data']['rows']} examples, {m['data']['truncated']} truncated"
          + (f", dropped {m['data']['dropped']}" if m["data"]["dropped"] else ""))
    print(f"  saved: {m['saved']}; metrics and loss.png in {out}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from synth.cli import _setup_logging
    from synth.config import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    _setup_logging(None, args.verbose)
    from sft.merge import run_merge

    r = run_merge(recipe, dtype=args.dtype)
    print(f"sft merge: {r['merged']} ({r['dtype']}); merged vs unmerged logits within {r['max_abs_logit_diff']:.2e} "
          f"on {r['checked_inputs']} inputs")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from synth.cli import _setup_logging
    from synth.config import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    _setup_logging(None, args.verbose)
    from sft.evaluate import run_eval

    r = run_eval(recipe)
    ppl = r["perplexity_of_teacher_answers"]
    print(f"sft eval: {r['examples']} held-out examples ({r['engine']})")
    print(f"  perplexity of the teacher's answers: {ppl['before']:.2f} before -> {ppl['after']:.2f} after training")
    print(f"  ROUGE-L vs teacher: {r['student_before']['rouge_l']:.3f} -> {r['student_after']['rouge_l']:.3f}; "
          f"exact match {r['student_before']['exact_match']:.3f} -> {r['student_after']['exact_match']:.3f}")
    if "verifier" in r:
        v = r["verifier"]
        print(f"  verifier pass rate: teacher {v['teacher']:.3f}, student {v['student_before']:.3f} -> {v['student_after']:.3f}")
    print("  report: eval_report.json, eval_report.md beside the adapter")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from synth.cli import _recipe_arguments

    parser = argparse.ArgumentParser(prog="sft", description="Fine-tune a small student on curated data (LoRA via TRL + PEFT).")
    parser.add_argument("--version", action="version", version=f"stillhouse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = sub.add_parser("train", help="train the student of the recipe's sft section; resumes from the last checkpoint")
    _recipe_arguments(train)
    train.set_defaults(func=cmd_train)
    merge = sub.add_parser("merge", help="merge the trained adapter into the base weights (bf16 or fp32) and check the logits")
    _recipe_arguments(merge)
    merge.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of the merged model")
    merge.set_defaults(func=cmd_merge)
    ev = sub.add_parser("eval", help="compare the student with the teacher on the held-out split")
    _recipe_arguments(ev)
    ev.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    from synth.cli import dispatch

    return dispatch(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
