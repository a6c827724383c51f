"""The `synth` command line. Thin: parse, set up logging, call the library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from synth import __version__
from synth.runtime import setup_logging


def _summary(manifest: dict, out_dir: str) -> str:
    c, t = manifest["counts"], manifest["tokens"]
    lines = [
        f"synth generate: {manifest['status']} in {manifest['wall_s']:.1f} s",
        f"  requests {c['requests']}: kept {c['kept']} ({c['generated']} new, {c['cached']} from earlier runs), "
        f"failed {c['failed']}, pending {c['pending']}",
        f"  tokens: {t['prompt']:,} prompt, {t['completion']:,} completion "
        f"({t['completion_this_run']:,} written this run)",
    ]
    if manifest.get("cost_usd") is not None:
        sync = manifest.get("cost_usd_sync")
        lines.append(f"  cost: ${manifest['cost_usd']:,.4f} at the recipe's prices"
                     + (f" (batch price; ${sync:,.4f} synchronous)" if sync is not None else ""))
    running = (manifest.get("batches") or {}).get("running")
    if running:
        lines.append(f"  pending: {c['pending']} requests in {len(running)} running batch(es) ({', '.join(running[:5])}"
                     + (", ..." if len(running) > 5 else "") + "); rerun the same command to collect them "
                     "(add --no-wait to check and return)")
    if manifest.get("finish_reasons"):
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(manifest["finish_reasons"].items()))
        lines.append(f"  finish reasons: {reasons}")
    lines.append(f"  files: {out_dir}/raw.jsonl, failures.jsonl, manifest.json, run.log")
    if c["failed"]:
        lines.append("  failed requests are listed in failures.jsonl; rerun the same command to retry them")
    return "\n".join(lines)


def _dry_run_report(r: dict) -> str:
    lines = [
        f"synth generate --dry-run: {r['to_send']} requests to send ({r['requests']} planned, {r['done']} already done)",
        f"  teacher: {r['teacher']['backend']} {r['teacher']['model']}"
        + (f" at {r['teacher']['base_url']}" if r["teacher"].get("base_url") else ""),
        f"  prompt tokens (estimate, ~4 chars a token): {r['prompt_tokens_estimate']:,}",
        f"  completion tokens (at most, max_tokens each): {r['completion_tokens_max']:,}",
    ]
    if r["cost_usd_max"] is not None:
        sync = r.get("cost_usd_max_sync")
        lines.append(f"  cost: at most ${r['cost_usd_max']:,.4f}"
                     + (f" at the batch price (${sync:,.4f} synchronous)" if sync is not None else ""))
    lines.append("  nothing was sent")
    return "\n".join(lines)


def cmd_generate(args: argparse.Namespace) -> int:
    from synth.config import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    if args.dry_run:
        setup_logging(None, args.verbose)
        from synth.generate import dry_run

        print(_dry_run_report(dry_run(recipe, only_failed=args.only_failed)))
        return 0
    setup_logging(recipe.layout.log, args.verbose)
    from synth.generate import run_generate

    try:
        manifest = run_generate(recipe, progress=not args.no_progress, only_failed=args.only_failed,
                                wait=not args.no_wait)
    except KeyboardInterrupt:
        print(f"synth generate: interrupted; finished records are in {recipe.output.dir}/raw.jsonl. "
              "Rerun the same command to resume.", file=sys.stderr)
        return 130
    print(_summary(manifest, recipe.output.dir))
    return 0


def cmd_curate(args: argparse.Namespace) -> int:
    from synth.config import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    setup_logging(recipe.layout.log, args.verbose)
    from synth.curate import run_curate

    stats = run_curate(recipe, progress=not args.no_progress)
    out = recipe.output.dir
    lines = [
        f"synth curate: {stats['records']} records -> kept {stats['kept']} "
        f"(train {stats['train']}, eval {stats['eval']}), rejected {stats['rejected']}",
    ]
    for key, n in stats["rejected_by_filter"].items():
        lines.append(f"  {key.split(':', 1)[1]:<12} rejected {n}")
    if stats["pii_redacted"]:
        lines.append("  PII redacted: " + ", ".join(f"{k} x{v}" for k, v in stats["pii_redacted"].items()))
    lines.append(f"  files: {out}/train.jsonl" + (", eval.jsonl" if stats["eval"] else "") + ", rejected.jsonl, stats.json")
    print("\n".join(lines))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from synth.config import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    setup_logging(recipe.layout.log, args.verbose)
    from synth.run import run_all

    try:
        report = run_all(recipe, progress=not args.no_progress)
    except KeyboardInterrupt:
        print("synth run: interrupted; rerun the same command to go on where it stopped", file=sys.stderr)
        return 130
    print(f"synth run: {recipe.name}")
    for s in report["stages"]:
        print(f"  {s['stage']:<9} {s['status']:<8} {s.get('summary') or s.get('why') or ''}")
    print(f"  report: {recipe.layout.report}; dataset card: {recipe.layout.card}")
    if recipe.sft is not None:
        from synth.runtime import read_json

        student = recipe.sft.student(recipe.layout)
        ev = read_json(student.eval_report)
        if isinstance(ev, dict) and "verifier" in ev:
            v = ev["verifier"]
            print(f"  the task check ({recipe.sft.eval_verifier}) on {ev['examples']} held-out prompts passes: "
                  f"teacher {v['teacher']:.3f}, student before training {v['student_before']:.3f}, "
                  f"after {v['student_after']:.3f} ({student.eval_markdown})")
    return 0


def cmd_expand(args: argparse.Namespace) -> int:
    from synth.config import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    setup_logging(recipe.layout.log, args.verbose)
    from synth.expand import run_expand

    r = run_expand(recipe)
    print(f"synth expand: {r['seeds']} seeds -> {r['new']} new prompts ({r['calls_sent']} teacher calls sent, "
          f"{r['calls_cached']} cached); discarded {r['discarded'] or 'none'}")
    print(f"  output: {r['output']} (`synth generate` with this recipe reads it: every seed, then the new prompts)")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from synth.config import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    setup_logging(recipe.layout.log, args.verbose)
    from synth.score import run_score, score_summary

    counts = run_score(recipe, args.top_k, args.teacher, progress=not args.no_progress)
    print(score_summary(counts, recipe.layout.logprobs))
    return 0


def cmd_pairs(args: argparse.Namespace) -> int:
    from synth.config import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    setup_logging(recipe.layout.log, args.verbose)
    from synth.pairs import run_pairs

    counts = run_pairs(recipe)
    by_source = ", ".join(f"{s} {counts.get(s, 0)}" for s in recipe.pair_options.sources)
    print(f"synth pairs: {counts['pairs']} pairs ({by_source}; {counts['duplicates']} duplicates dropped) "
          f"-> {recipe.layout.pairs}")
    if "student_answers" in counts:
        print(f"  the student scored lower than the teacher on {counts['student_scored_lower']} of "
              f"{counts['student_answers']} training prompts")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    setup_logging(None, args.verbose)
    from synth.diff import run_diff

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
    from synth.ingest import IngestOptions, run_ingest

    o = IngestOptions(max_tokens=args.max_tokens, overlap=args.overlap, min_tokens=args.min_tokens)
    r = run_ingest(args.docs, Path(args.out), o, progress=not args.no_progress)
    print(f"synth ingest: {r['files']} documents: {r['ingested']} chunked into {r['chunks']} chunks, "
          f"{r['skipped']} already in {args.out}, {r['failed']} could not be read")
    for failure in r["failures"]:
        print(f"  {failure['file']}: {failure['reason']}")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    setup_logging(None, args.verbose)
    from synth.viewer import serve

    root = Path(args.output_dir)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory; give a run's output.dir (where raw.jsonl is)")
    try:
        server = serve(root, args.host, args.port, progress=not args.no_progress)
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
    from synth.tiny_model import CHATML_TEMPLATE, build_tiny_model

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

    cur = sub.add_parser(
        "curate",
        help="filter the raw log into train.jsonl (+ eval.jsonl) and rejected.jsonl; no teacher calls",
        description="Apply the recipe's curate.filters to OUTPUT/raw.jsonl. Deterministic: a rerun "
        "with the same raw log and config writes byte-identical files.",
    )
    recipe_arguments(cur)
    cur.set_defaults(func=cmd_curate)

    run = sub.add_parser(
        "run",
        help="the whole loop: generate, curate, dataset card, and with an sft section train and evaluate",
        description="Run every stage of the recipe, each skipping work already done; writes OUTPUT/report.md.",
    )
    recipe_arguments(run)
    run.set_defaults(func=cmd_run)

    exp = sub.add_parser("expand", help="grow the seed prompts with the teacher (self-instruct, evol-instruct, or document_qa over ingested chunks); resumable")
    recipe_arguments(exp)
    exp.set_defaults(func=cmd_expand)

    score = sub.add_parser(
        "score",
        help="a local teacher computes the top-k logprobs of the answers already in raw.jsonl (for sft.distill)",
        description="Score the raw log's answers with a local model (the recipe's vllm teacher, or --teacher): "
        "their top-k logprobs go to OUTPUT/logprobs.bin, as sampling.logprobs would have captured them. Resumable.",
    )
    recipe_arguments(score)
    score.add_argument("--top-k", type=int, default=20, help="logprobs per answer token (default 20)")
    score.add_argument("--teacher", metavar="MODEL", help="the scoring model (a directory or HF id), if not the recipe's teacher")
    score.set_defaults(func=cmd_score)

    pairs = sub.add_parser(
        "pairs",
        help="preference pairs (prompt, chosen, rejected) from the curated data, ranked by best_of_n, for `sft dpo`",
        description="Pair each kept answer with a worse one: the lowest-ranked sample of its prompt (pairs.sources: "
        "samples) and/or the trained student's own answer where it scores lower (student). Writes OUTPUT/pairs.jsonl.",
    )
    recipe_arguments(pairs)
    pairs.set_defaults(func=cmd_pairs)

    diff = sub.add_parser("diff", help="compare two dataset versions (e.g. two teachers) prompt by prompt")
    diff.add_argument("a", help="output dir of the first version")
    diff.add_argument("b", help="output dir of the second version")
    diff.add_argument("--out", help="where diff.md and diff.json go (default: B)")
    diff.add_argument("--judge", metavar="JUDGE.yaml",
                      help="also ask a judge which answer is better: a YAML with a teacher block (see README)")
    diff.add_argument("-v", "--verbose", action="store_true")
    diff.set_defaults(func=cmd_diff)

    ingest = sub.add_parser("ingest", help="documents (PDF, DOCX, PPTX, HTML, Markdown, text) into chunks with their provenance (JSONL); resumable")
    ingest.add_argument("docs", nargs="+", help="files or folders (searched recursively)")
    ingest.add_argument("--out", required=True, help="the chunks file (JSONL); documents already in it are skipped")
    ingest.add_argument("--max-tokens", type=int, default=300, help="most words in a chunk (default 300)")
    ingest.add_argument("--overlap", type=int, default=40, help="words repeated from the previous chunk (default 40)")
    ingest.add_argument("--min-tokens", type=int, default=5, help="shorter chunks are left out (default 5)")
    ingest.add_argument("--no-progress", action="store_true")
    ingest.add_argument("-v", "--verbose", action="store_true")
    ingest.set_defaults(func=cmd_ingest)

    view = sub.add_parser("view", help="serve the audit page of a run on 127.0.0.1: every record, where it came from, why it was kept or rejected")
    view.add_argument("output_dir", help="the run's output.dir")
    view.add_argument("--port", type=int, default=8765, help="port (0: any free one)")
    view.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    view.add_argument("--no-progress", action="store_true")
    view.add_argument("-v", "--verbose", action="store_true")
    view.set_defaults(func=cmd_view)

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
    return parser


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
