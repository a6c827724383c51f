"""The `sft` command line. Thin: parse, resolve the recipe into its plan, run the stage."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys

from sft import __version__
from sft.config import EXPORT_QUANTS, VLLM_QUANTS, artifact
from sft.dpo import Dpo
from sft.evaluate import eval_lines, run_eval
from sft.export import export_config, export_stages
from sft.export_eval import ExportEval
from sft.harness import Harness
from sft.llamacpp import LOOPBACK, LlamaServer, VllmServer
from sft.merge import run_merge
from sft.train import Train
from synth.cli import dispatch, recipe_arguments
from synth.plan import Plan, load_plan
from synth.runtime import is_main_process, kv_cache_bytes, on_cpu, setup_logging
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
    harness = Harness(plan)
    if harness.why_not_applicable() is None:
        print("\n".join(harness.run(force=True).lines))
    export = plan.recipe.export
    if export is not None and export.eval and all(artifact(plan.student.files, s.quant).exists()
                                                  for s in export_stages(plan, export, progress=False)):
        print("\n".join(ExportEval(plan, export).run(force=True).lines))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    plan = _plan(args)
    setup_logging(plan.layout.log, args.verbose)
    export = export_config(plan)
    if args.quant:
        export = dataclasses.replace(export, quants=args.quant)  # validated again
    for stage in export_stages(plan, export, not args.no_progress):
        result = stage.run()
        files = plan.student.files
        print("\n".join(result.lines) if result.status == "done" else
              f"sft export: {artifact(files, stage.quant)} is current (same student, quantization and tools); skipped")
    if args.no_eval:
        return 0
    evaluation = ExportEval(plan, export, not args.no_progress)
    result = evaluation.run()
    if result.status == "skipped":
        print(f"sft export: evaluation skipped ({result.why}); {plan.student.files.eval_markdown} has the last one")
    else:
        print("\n".join(result.lines))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    plan = _plan(args)
    export = export_config(plan)
    quant = args.quant or export.quants[-1]
    path = artifact(plan.student.files, quant)
    if not path.exists():
        raise ValueError(f"sft serve: {path} does not exist; run `sft export {args.recipe} --quant {quant}` first")
    if args.host != LOOPBACK:
        print(f"sft serve: listening on {args.host}, not only this machine: anyone who can reach it can query the "
              "model (the server has no key here)", file=sys.stderr)
    if quant in VLLM_QUANTS:
        cfg = plan.sft
        server: LlamaServer = VllmServer(path, host=args.host, port=args.port, alias=args.name,
                                         kv_cache_bytes=kv_cache_bytes(cfg.eval_kv_cache_gib), enforce_eager=on_cpu(),
                                         max_model_len=export.ctx_size, log=plan.student.files.export_dir / "serve.log")
        how = "vLLM"
    else:
        server = LlamaServer(path, host=args.host, port=args.port, threads=export.threads, ctx_size=export.ctx_size,
                             parallel=args.parallel, alias=args.name)
        how = f"llama-server, {args.parallel} slots"
    # SIGTERM (kill, systemd, docker stop) stops it as Ctrl-C does: the server goes with it.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with server:
            print(f"sft serve: {path} at {server.base_url} (model name '{args.name}', {how}); Ctrl-C stops it",
                  flush=True)
            code = server.process.wait() if server.process else 0
    except KeyboardInterrupt:
        return 0
    print(f"sft serve: {server.label} exited with code {code}", file=sys.stderr)
    return 1


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
    export = sub.add_parser("export", help="the trained student as GGUF files for llama.cpp and compressed-tensors "
                            "checkpoints for vLLM (export.quants), each evaluated as served",
                            description="Export the trained student (an adapter is merged first): to GGUF with "
                            "llama.cpp's converter and quantizer (f16, q8_0, q4_K_M, ...), or to a compressed-tensors "
                            "checkpoint for vLLM (w8a8, w4a16); then evaluate every export on the held-out prompts "
                            "through the engine that serves it (llama-server, vLLM). Skipped per export when the "
                            "student, quantization and tools are unchanged.")
    recipe_arguments(export)
    export.add_argument("--quant", action="append", default=[], metavar="Q", choices=list(EXPORT_QUANTS),
                        help=f"a quantization ({', '.join(EXPORT_QUANTS)}); repeatable; default export.quants")
    export.add_argument("--no-eval", action="store_true", help="export only; do not evaluate the files")
    export.set_defaults(func=cmd_export)
    serve = sub.add_parser("serve", help="serve the exported student, OpenAI-compatible (llama-server for GGUF, "
                           "vLLM for w8a8/w4a16; 127.0.0.1 by default)", description="Start llama-server on an "
                           "exported GGUF file, or vLLM's server on an exported compressed-tensors checkpoint; call it "
                           "with any OpenAI client at http://HOST:PORT/v1. Runs until Ctrl-C or SIGTERM.")
    recipe_arguments(serve)
    serve.add_argument("--quant", choices=list(EXPORT_QUANTS), help="which export to serve; default the last of "
                       "export.quants")
    serve.add_argument("--host", default=LOOPBACK, help="address to listen on; anything but 127.0.0.1 must be given here")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on")
    serve.add_argument("--parallel", type=int, default=4, help="requests served at once (llama-server slots; vLLM "
                       "batches as it goes)")
    serve.add_argument("--name", default="student", help="the model name clients send")
    serve.set_defaults(func=cmd_serve)
    ev = sub.add_parser("eval", help="compare the student with the teacher on the held-out split")
    recipe_arguments(ev)
    ev.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
