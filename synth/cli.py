"""The `synth` command line. Thin: parse, set up logging, call the library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sft.compare import lines as compare_lines
from sft.compare import run_compare
from sft.export_report import export_lines, read_export_report
from synth import __version__
from synth.curate import Curate
from synth.diff import run_diff
from synth.expand import Expand
from synth.generate import Generate, dry_run, dry_run_lines
from synth.ingest import IngestOptions, run_ingest
from synth.pairs import Pairs
from synth.plan import Plan, load_plan
from synth.run import run_all
from synth.runtime import read_json, setup_logging
from synth.score import run_score, score_summary
from synth.stage import StageResult
from synth.tiny_model import CHATML_TEMPLATE, build_tiny_model
from synth.viewer import serve


def _plan(args: argparse.Namespace, log: bool = True) -> Plan:
    """The command's plan (the recipe resolved once), with logging to its run.log."""
    plan = load_plan(args.recipe, args.set)
    setup_logging(plan.layout.log if log else None, args.verbose)
    return plan


def _print(result: StageResult) -> None:
    print("\n".join(result.lines) if result.status == "done" else f"{result.stage}: skipped ({result.why})")


def cmd_generate(args: argparse.Namespace) -> int:
    plan = _plan(args, log=not args.dry_run)
    if args.dry_run:
        print("\n".join(dry_run_lines(dry_run(plan, only_failed=args.only_failed))))
        return 0
    try:
        result = Generate(plan, not args.no_progress, only_failed=args.only_failed, wait=not args.no_wait).run()
    except KeyboardInterrupt:
        print(f"synth generate: interrupted; finished records are in {plan.layout.raw}. "
              "Rerun the same command to resume.", file=sys.stderr)
        return 130
    _print(result)
    return 0


def cmd_curate(args: argparse.Namespace) -> int:
    _print(Curate(_plan(args), not args.no_progress).run(force=True))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    plan = _plan(args)
    try:
        report = run_all(plan, progress=not args.no_progress)
    except KeyboardInterrupt:
        print("synth run: interrupted; rerun the same command to go on where it stopped", file=sys.stderr)
        return 130
    print(f"synth run: {plan.recipe.name}")
    for s in report["stages"]:
        print(f"  {s['stage']:<9} {s['status']:<8} {s.get('summary') or s.get('why') or ''}")
    print(f"  report: {plan.layout.report}; dataset card: {plan.layout.card}")
    if plan.recipe.sft is not None:
        files = plan.student.files
        ev = read_json(files.eval_report)
        if isinstance(ev, dict) and "verifier" in ev:
            v = ev["verifier"]
            print(f"  the task check ({plan.sft.eval_verifier}) on {ev['examples']} held-out prompts passes: "
                  f"teacher {v['teacher']:.3f}, student before training {v['student_before']:.3f}, "
                  f"after {v['student_after']:.3f} ({files.eval_markdown})")
        exports = read_export_report(files.export_eval) if plan.recipe.export is not None else None
        if exports is not None:
            print("\n".join(export_lines(exports)))
    return 0


def cmd_expand(args: argparse.Namespace) -> int:
    plan = _plan(args)
    if plan.recipe.expand is None:
        raise ValueError("expand: the recipe has no expand section; add one, e.g. expand: {method: self_instruct, target: 200}")
    _print(Expand(plan, not args.no_progress).run())
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    plan = _plan(args)
    counts = run_score(plan, args.top_k, args.teacher, progress=not args.no_progress)
    print(score_summary(counts, plan.layout.logprobs))
    return 0


def cmd_pairs(args: argparse.Namespace) -> int:
    _print(Pairs(_plan(args), not args.no_progress).run(force=True))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    out = Path(args.out or args.dirs[-1])
    setup_logging(out / "run.log" if out.is_dir() else None, args.verbose)
    result = run_compare(args.dirs, args.out, verifier=args.verifier, eval_file=args.eval_file, limit=args.limit,
                         max_new_tokens=args.max_new_tokens, force=args.force, judge=args.judge)
    if result.status == "done":
        print("\n".join(result.lines))
    else:
        print(f"synth compare: skipped ({result.why}); the report is {out / 'compare.md'}")
        report = read_json(out / "compare.json")
        print("\n".join(compare_lines(report, out) if isinstance(report, dict) else []))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    setup_logging(None, args.verbose)

    r = run_diff(args.a, args.b, args.out, judge=args.judge)
    a, b = r["a"], r["b"]
    print(f"synth diff: {r['prompts_in_both']} prompts in both; mean answer similarity (ROUGE-L) {r['mean_answer_similarity']}")
    print(f"  answer chars mean: A {a['answer_chars_mean']} / B {b['answer_chars_mean']}; refusal rate A {a['refusal_rate']} / B {b['refusal_rate']}")
    if "judge" in r:
        j = r["judge"]
        print(f"  judge: A {j['a']}, B {j['b']}, tie {j['tie']}, unparseable {j['unparseable']}; B win rate {j['b_win_rate']}")
    print(f"  report: {(args.out or args.b)}/diff.md")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    setup_logging(None, args.verbose)

    o = IngestOptions(max_tokens=args.max_tokens, overlap=args.overlap, min_tokens=args.min_tokens)
    r = run_ingest(args.docs, Path(args.out), o, progress=not args.no_progress)
    print(f"synth ingest: {r['files']} documents: {r['ingested']} chunked into {r['chunks']} chunks, "
          f"{r['skipped']} already in {args.out}, {r['failed']} could not be read")
    for failure in r["failures"]:
        print(f"  {failure['file']}: {failure['reason']}")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    setup_logging(None, args.verbose)

    root = Path(args.output_dir)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory; give a run's output.dir (where raw.jsonl is)")
    try:
        server = serve(root, args.host, args.port, progress=not args.no_progress, allow_hosts=tuple(args.allow_host))
    except OSError as exc:
        raise ValueError(f"--port {args.port}: cannot listen on {args.host}:{args.port} ({exc.strerror}); "
                         "choose another port, or --port 0 for any free one") from None
    host, port = server.server_address[:2]
    print(f"synth view: the audit page of {root} is at http://{host}:{port}/ (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_tiny_model(args: argparse.Namespace) -> int:
    setup_logging(None, args.verbose)

    out = Path(args.out_dir)
    if (out / "config.json").exists() and not args.force:
        template = out / "chat_template.jinja"
        if template.is_file() and template.read_text(encoding="utf-8") == CHATML_TEMPLATE:
            print(f"{out}: a model is already there (use --force to rebuild)")
            return 0
        # Built by an older stillhouse: its chat template lacks what this one renders (tools).
        print(f"{out}: a model with an older chat template is there; rebuilding it")
    build_tiny_model(out, architecture=args.architecture, hidden_size=args.hidden_size,
                     num_layers=args.layers, seed=args.seed)
    print(f"{out}: tiny random {args.architecture} chat model written (it writes nonsense; for plumbing only)")
    return 0


def recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every recipe command takes (synth's and sft's)."""
    parser.add_argument("recipe", help="recipe YAML (see prompts/demo/recipe.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set sampling.temperature=0.2 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="show every library's log lines on the console")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synth",
        description="Generate and curate training data with a teacher model.",
    )
    parser.add_argument("--version", action="version", version=f"stillhouse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_generate, _add_curate, _add_run, _add_expand, _add_score, _add_pairs, _add_diff, _add_compare,
                _add_ingest,
                _add_view, _add_tiny_model):
        add(sub)
    return parser


def _add_generate(sub: Any) -> None:
    gen = sub.add_parser(
        "generate",
        help="send every seed prompt to the teacher; resumes where an earlier run stopped",
        description="Render seeds through the template, send them to the teacher and append the "
        "answers to OUTPUT/raw.jsonl. Rerun the same command to resume after a crash or Ctrl-C.",
    )
    recipe_arguments(gen)
    gen.add_argument("--dry-run", action="store_true",
                     help="print how many requests would be sent, estimated tokens and cost; send nothing")
    gen.add_argument("--only-failed", action="store_true",
                     help="send only the requests listed in OUTPUT/failures.jsonl (retry the failed ones)")
    gen.add_argument("--no-wait", action="store_true",
                     help="batch mode: submit, collect the batches that have finished, and return without waiting "
                     "for the others (rerun to check on them)")
    gen.set_defaults(func=cmd_generate)


def _add_curate(sub: Any) -> None:
    cur = sub.add_parser(
        "curate",
        help="filter the raw log into train.jsonl (+ eval.jsonl) and rejected.jsonl; no teacher calls",
        description="Apply the recipe's curate.filters to OUTPUT/raw.jsonl. Deterministic: a rerun "
        "with the same raw log and config writes byte-identical files.",
    )
    recipe_arguments(cur)
    cur.set_defaults(func=cmd_curate)


def _add_run(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        help="the whole loop: generate, curate, dataset card, and with an sft section train and evaluate",
        description="Run every stage of the recipe, each skipping work already done; writes OUTPUT/report.md.",
    )
    recipe_arguments(run)
    run.set_defaults(func=cmd_run)


def _add_expand(sub: Any) -> None:
    exp = sub.add_parser("expand", help="grow the seed prompts with the teacher (self-instruct, evol-instruct, or "
                         "document_qa over ingested chunks); resumable")
    recipe_arguments(exp)
    exp.set_defaults(func=cmd_expand)


def _add_score(sub: Any) -> None:
    score = sub.add_parser(
        "score",
        help="a local teacher computes the top-k logprobs of the answers already in raw.jsonl (for sft.distill)",
        description="Score the raw log's answers with a local model (the recipe's vllm teacher, or --teacher): "
        "their top-k logprobs go to OUTPUT/logprobs.bin, as sampling.logprobs would have captured them. Resumable.",
    )
    recipe_arguments(score)
    score.add_argument("--top-k", type=int, default=20, help="logprobs per answer token (default 20)")
    score.add_argument("--teacher", metavar="MODEL",
                       help="the scoring model (a directory or HF id), if not the recipe's teacher")
    score.set_defaults(func=cmd_score)


def _add_pairs(sub: Any) -> None:
    pairs = sub.add_parser(
        "pairs",
        help="preference pairs (prompt, chosen, rejected) from the curated data, ranked by best_of_n, for `sft dpo`",
        description="Pair each kept answer with a worse one: the lowest-ranked sample of its prompt (pairs.sources: "
        "samples) and/or the trained student's own answer where it scores lower (student). Writes OUTPUT/pairs.jsonl.",
    )
    recipe_arguments(pairs)
    pairs.set_defaults(func=cmd_pairs)


def _add_diff(sub: Any) -> None:
    diff = sub.add_parser("diff", help="compare two dataset versions (e.g. two teachers) prompt by prompt")
    diff.add_argument("a", help="output dir of the first version")
    diff.add_argument("b", help="output dir of the second version")
    diff.add_argument("--out", help="where diff.md and diff.json go (default: B)")
    diff.add_argument("--judge", metavar="JUDGE.yaml",
                      help="also ask a judge which answer is better: a YAML with a teacher block (see docs/guides/new-teacher.md)")
    diff.add_argument("-v", "--verbose", action="store_true")
    diff.set_defaults(func=cmd_diff)


def _add_compare(sub: Any) -> None:
    cmp = sub.add_parser(
        "compare",
        help="the students of several dataset versions on one held-out set, with paired error bars and a verdict",
        description="Score the trained student of each output dir (and each version's teacher) with one task check "
        "on the held-out prompts they all share and none trained on, and/or ask a judge which of two students' answers "
        "is better; report the paired difference of each version against the first with a bootstrap 95%% interval, "
        "and say better, worse, or no detectable difference. Writes compare.md and compare.json; the students' and "
        "the judge's answers are cached, a rerun with nothing changed generates nothing.",
    )
    cmp.add_argument("dirs", nargs="+", metavar="OUTPUT", help="output dirs of `synth run` (the first is the baseline), "
                     "e.g. runs/dates runs/dates.v2")
    cmp.add_argument("--verifier", metavar="MODULE:FUNCTION",
                     help="the task check (default: the versions' sft.eval_verifier, which must agree)")
    cmp.add_argument("--judge", metavar="JUDGE.yaml",
                     help="also ask a judge, prompt by prompt, which student's answer is better (default: the versions' "
                     "sft.eval_judge, which must agree); a YAML with a teacher block, as for synth diff --judge")
    cmp.add_argument("--eval", metavar="FILE", dest="eval_file",
                     help="a JSONL of chats, each ending with a reference answer (as eval.jsonl), to score on instead of "
                     "the versions' shared held-out prompts")
    cmp.add_argument("--limit", type=int, help="score at most this many prompts")
    cmp.add_argument("--max-new-tokens", type=int,
                     help="longest student answer (default: the largest sft.eval_max_new_tokens of the versions)")
    cmp.add_argument("--out", help="where compare.md and compare.json go (default: the last OUTPUT)")
    cmp.add_argument("--force", action="store_true", help="score again even when nothing changed")
    cmp.add_argument("-v", "--verbose", action="store_true")
    cmp.set_defaults(func=cmd_compare)


def _add_ingest(sub: Any) -> None:
    ingest = sub.add_parser("ingest", help="documents (PDF, DOCX, PPTX, HTML, Markdown, text) into chunks with their "
                            "provenance (JSONL); resumable")
    ingest.add_argument("docs", nargs="+", help="files or folders (searched recursively)")
    ingest.add_argument("--out", required=True, help="the chunks file (JSONL); documents already in it are skipped")
    ingest.add_argument("--max-tokens", type=int, default=300, help="most words in a chunk (default 300)")
    ingest.add_argument("--overlap", type=int, default=40, help="words repeated from the previous chunk (default 40)")
    ingest.add_argument("--min-tokens", type=int, default=5, help="shorter chunks are left out (default 5)")
    ingest.add_argument("--no-progress", action="store_true")
    ingest.add_argument("-v", "--verbose", action="store_true")
    ingest.set_defaults(func=cmd_ingest)


def _add_view(sub: Any) -> None:
    view = sub.add_parser("view", help="serve the audit page of a run on 127.0.0.1: every record, where it came from, "
                          "why it was kept or rejected")
    view.add_argument("output_dir", help="the run's output.dir")
    view.add_argument("--port", type=int, default=8765, help="port (0: any free one)")
    view.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    view.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                      help="also answer requests for this host name (a DNS name or proxy in front of the page); "
                           "IP addresses, localhost and --host are always answered, other names get 403")
    view.add_argument("--no-progress", action="store_true")
    view.add_argument("-v", "--verbose", action="store_true")
    view.set_defaults(func=cmd_view)


def _add_tiny_model(sub: Any) -> None:
    tiny = sub.add_parser(
        "tiny-model",
        help="build a tiny random chat model locally (for demos and tests; it writes nonsense)",
    )
    tiny.add_argument("out_dir", help="directory to write the model to")
    tiny.add_argument("--architecture", default="llama", choices=["llama", "qwen2"])
    tiny.add_argument("--hidden-size", type=int, default=128)
    tiny.add_argument("--layers", type=int, default=2)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--force", action="store_true", help="rebuild even if a model is there")
    tiny.add_argument("-v", "--verbose", action="store_true")
    tiny.set_defaults(func=cmd_tiny_model)


def dispatch(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Run the chosen subcommand; bad input is one line naming the field and the fix, exit 2
    (nothing already written is lost)."""
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, ImportError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
