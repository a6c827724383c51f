"""The exported student evaluated as it will be served: each GGUF file under llama-server,
each compressed-tensors checkpoint under vLLM.

For every GGUF file `sft export` wrote (f16 and export.quants), llama-server is started on it
(127.0.0.1, a free port, export.eval_concurrency slots) and the held-out prompts of `sft eval`
(the same ones: sft.eval and sft.eval_limit) are sent through the openai client's chat
completions (greedy, sft.eval_max_new_tokens); a vLLM checkpoint (w8a8, w4a16) is loaded by a
vLLM engine in this process (bfloat16, its KV cache sized by sft.eval_kv_cache_gib) that
answers the same prompts greedily, all in one batch. The answers are scored with the same
checks: sft.eval_verifier's pass rate when there is one, else exact match with the teacher.
Each row: size on disk, generated tokens per second on this machine (all requests in flight
together), the score, and its change vs the trained student as `sft eval` measured it (its
transformers or vLLM answers), paired by prompt, with a standard error.

Keyed like the other stages: the exports' keys, the held-out data, the verifier's source and
the settings that change the result. Results: STUDENT/export/eval.json and a table in
STUDENT/eval_report.md.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sft.config import EXPORT_QUANTS, GGUF_QUANTS, VLLM_QUANTS, ExportConfig, SftConfig, artifact
from sft.data import read_conversations, verifier_record
from sft.evaluate import write_markdown
from sft.export_report import disk_size, export_lines, export_summary, paired_change
from sft.generation import vllm_engine
from sft.llamacpp import LlamaServer
from synth.configtools import stage_fields
from synth.filters.verifier import Verifier, function_source_sha
from synth.plan import Plan
from synth.runtime import file_sha256, read_json, release_engine, write_json_atomically
from synth.stage import Stage, StageResult, read_stamp
from synth.textmetrics import exact_match

logger = logging.getLogger(__name__)


class ExportEval(Stage):
    """Every export against the held-out prompts, under llama-server or vLLM (keyed)."""

    name = "export eval"

    def __init__(self, plan: Plan, export: ExportConfig, progress: bool = True):
        super().__init__(plan, progress)
        self.export = export

    @property
    def quants(self) -> list[str]:
        """export.quants (with f16 when a GGUF type is among them) and any other export made
        earlier (`sft export --quant`): every one there is, GGUF largest first, then vLLM's."""
        files = self.plan.student.files
        wanted = set(self.export.quants) | {q for q in EXPORT_QUANTS if artifact(files, q).exists()}
        if wanted & set(GGUF_QUANTS):
            wanted.add("f16")
        return [q for q in EXPORT_QUANTS if q in wanted]

    def why_not_applicable(self) -> str | None:
        if not self.export.eval:
            return "export.eval is false"
        if self.plan.sft.eval_path(self.plan.layout) is None:
            return "no held-out split (curate.eval_fraction is 0, or no record fell in its share)"
        return None

    def key(self) -> dict[str, Any]:
        cfg, files = self.plan.sft, self.plan.student.files
        eval_path = cfg.eval_path(self.plan.layout)
        return {
            "exports": {q: read_stamp(files.gguf_stamp(q)) for q in self.quants},
            "eval_data": file_sha256(eval_path) if eval_path else None,
            "verifier": function_source_sha(cfg.eval_verifier) if cfg.eval_verifier else None,
            "student_eval": file_sha256(files.eval_report),
            "sft": {k: v for k, v in stage_fields(cfg, "eval").items()
                    if k in ("eval_max_new_tokens", "eval_limit", "eval_verifier")},
            "export": {"concurrency": self.export.eval_concurrency, "ctx_size": self.export.ctx_size},
            **({"vllm_kv_cache_gib": cfg.eval_kv_cache_gib} if set(self.quants) & set(VLLM_QUANTS) else {}),
        }

    def stamp(self) -> Path:
        return self.plan.student.files.export_eval_stamp

    def outputs(self) -> tuple[Path, ...]:
        return (self.plan.student.files.export_eval,)

    def work(self, key: dict[str, Any] | None) -> StageResult:
        report = evaluate_exports(self.plan, self.export, self.quants)
        return self.result(export_summary(report), export_lines(report), report)


def evaluate_exports(plan: Plan, export: ExportConfig, quants: list[str]) -> dict[str, Any]:
    """Evaluate each exported file (see the module docstring); writes eval.json and the table."""
    cfg, files = plan.sft, plan.student.files
    conversations = read_conversations(cfg.eval_path(plan.layout), "sft.eval", repairs="final")[: cfg.eval_limit]
    prompts = [m[:-1] for m in conversations]
    references = [m[-1]["content"] for m in conversations]
    seeds = [getattr(m, "seed", None) for m in conversations]
    verifier = Verifier({"function": cfg.eval_verifier}, "sft.eval_verifier") if cfg.eval_verifier else None

    def scores(answers: list[str]) -> list[float]:
        if verifier is None:
            return [float(exact_match(a, r)) for a, r in zip(answers, references, strict=True)]
        return [float(verifier.check(verifier_record(p, a, s)) is None) for p, s, a in zip(prompts, seeds, answers, strict=True)]

    student = read_json(files.eval_report) or {}
    baseline = _student_scores(student, verifier is not None)
    rows = []
    for quant in quants:
        path = artifact(files, quant)
        if not path.exists():
            raise ValueError(f"export eval: {path} does not exist; run `sft export RECIPE --quant {quant}` first")
        if quant in VLLM_QUANTS:
            engine = "vLLM"
            answers, tokens, seconds = _answers_vllm(cfg, path, prompts)
        else:
            engine = "llama-server"
            answers, tokens, seconds = _answers(path, prompts, cfg.eval_max_new_tokens, export,
                                                files.export_dir / "server.log")
        per_prompt = scores(answers)
        row: dict[str, Any] = {"quant": quant, "file": path.name, "engine": engine, "bytes": disk_size(path),
                               "score": sum(per_prompt) / len(per_prompt), "tokens": tokens, "seconds": round(seconds, 2),
                               "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
                               "per_prompt": per_prompt, "samples": answers[:5]}
        if baseline is not None and len(baseline) == len(per_prompt):
            row["change"], row["change_se"] = paired_change(per_prompt, baseline)
        rows.append(row)
        logger.info("export eval %s (%s): score %.3f, %s tokens/s", quant, engine, row["score"], row["tokens_per_s"])
    report = {"examples": len(prompts), "metric": "task check pass rate" if verifier else "exact match with the teacher",
              "concurrency": export.eval_concurrency, "student_score": _mean(baseline), "student_engine": student.get("engine"),
              "exports": rows}
    write_json_atomically(files.export_eval, report)
    write_markdown(files)
    return report


def _mean(xs: list[float] | None) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _student_scores(student_report: dict[str, Any], verifier: bool) -> list[float] | None:
    """The trained student's per-prompt scores from `sft eval`'s report (None when it has none)."""
    per_prompt = student_report.get("per_prompt", {})
    values = per_prompt.get("verifier_after" if verifier else "exact_match_after")
    return [float(v) for v in values] if isinstance(values, list) else None


def _answers_vllm(cfg: SftConfig, checkpoint: Path, prompts: list[list[dict[str, Any]]]) -> tuple[list[str], int, float]:
    """Greedy answers of a vLLM engine on the compressed-tensors checkpoint (bfloat16: the
    quantized kernels' activation type), the generated tokens and the wall time."""
    import vllm  # heavy: vllm

    llm = vllm_engine(cfg, str(checkpoint), cfg.eval_max_new_tokens, lora=False, dtype="bfloat16")
    try:
        params = vllm.SamplingParams(temperature=0.0, max_tokens=cfg.eval_max_new_tokens)
        llm.chat(prompts[:1], params, use_tqdm=False)  # warm-up, as for llama-server
        started = time.perf_counter()
        outs = llm.chat(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - started
    finally:
        release_engine(llm)
    return [o.outputs[0].text for o in outs], sum(len(o.outputs[0].token_ids) for o in outs), seconds


def _answers(gguf: Path, prompts: list[list[dict[str, Any]]], max_tokens: int, export: ExportConfig,
             log: Path) -> tuple[list[str], int, float]:
    """Greedy answers of llama-server on `gguf`, the completion tokens and the wall time."""
    import openai

    with LlamaServer(gguf, threads=export.threads, ctx_size=export.ctx_size, parallel=export.eval_concurrency,
                     log=log) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=2, timeout=600)

        def ask(messages: list[dict[str, Any]]) -> tuple[str, int]:
            out = client.chat.completions.create(model=server.alias, messages=messages, temperature=0.0,
                                                 max_tokens=max_tokens)
            usage = out.usage.completion_tokens if out.usage else 0
            return out.choices[0].message.content or "", usage

        ask(prompts[0])  # warm-up: the first request pays for loading weights into caches
        started = time.perf_counter()
        with ThreadPoolExecutor(export.eval_concurrency) as pool:
            results = list(pool.map(ask, prompts))
        seconds = time.perf_counter() - started
    return [r[0] for r in results], sum(r[1] for r in results), seconds


