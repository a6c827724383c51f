"""`sft eval`: the student against the teacher on the held-out split.

Metrics: perplexity of the teacher's answers under the student before training (the base
model: adapter off, or the untouched weights of a full fine-tune) and after; the student's
greedy answers before and after (sft.generation) compared with the teacher's by ROUGE-L
(F1 over words) and exact match; and, when configured, a task verifier and a pairwise
judge. Writes eval_report.json, eval_report.md and eval.png beside the adapter (or model).

The Eval stage's key: the trained weights (a fingerprint of adapter/ or model/), the
student base, the held-out data's bytes, the sft keys declared `stage="eval"`
(eval_engine, eval_max_new_tokens, eval_limit, eval_judge, eval_verifier, max_length,
model), the judge file and the verifier's source file. The same stage evaluates the DPO
student (synth.plan's dpo_student).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from sft.config import SftConfig
from sft.data import read_conversations, tools_of, verifier_record
from sft.export_report import export_markdown, read_export_report
from sft.generation import engine_for, generate_transformers, generate_vllm, load_student_models
from sft.student import resolve_student
from synth.configtools import stage_fields
from synth.filters.verifier import Verifier, function_source_sha
from synth.fingerprint import fingerprint_dir, model_identity
from synth.judging import judge_preference
from synth.layout import StudentLayout
from synth.plan import Plan, Student
from synth.runtime import file_sha256
from synth.stage import Stage, StageResult
from synth.textmetrics import exact_match, rouge_l

logger = logging.getLogger(__name__)


def _perplexity(model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]]) -> float:
    """exp(mean NLL) of the assistant tokens (the teacher's answers) under `model`."""
    import torch

    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for messages in conversations:
            enc = tokenizer.apply_chat_template(messages, tools=tools_of(messages), tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
            ids = torch.tensor([enc["input_ids"]], device=model.device)
            mask = torch.tensor(enc["assistant_masks"][1:], dtype=torch.bool, device=model.device)
            logits = model(input_ids=ids).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
            total_nll += float(nll[mask].sum())
            total_tokens += int(mask.sum())
    return math.exp(total_nll / max(total_tokens, 1))


def eval_key(plan: Plan, student: Student) -> dict[str, Any]:
    """The Eval stage's key (see the module docstring)."""
    cfg = student.cfg
    eval_path = cfg.eval_path(plan.layout)
    trained = student.files.trained
    return {
        "weights": fingerprint_dir(trained) if trained.is_dir() else None,
        "eval_data": file_sha256(eval_path) if eval_path else None,
        "student": model_identity(cfg.model),
        "judge": file_sha256(Path(cfg.eval_judge)) if cfg.eval_judge else None,
        "verifier": function_source_sha(cfg.eval_verifier) if cfg.eval_verifier else None,
        "sft": stage_fields(cfg, "eval"),
    }


class Eval(Stage):
    """The student (or, with `student`, the DPO student) against the teacher (keyed)."""

    name = "eval"

    def __init__(self, plan: Plan, progress: bool = True, student: Student | None = None, name: str = "eval"):
        super().__init__(plan, progress)
        self.student = student or plan.student
        self.name = name

    def why_not_applicable(self) -> str | None:
        if self.student.cfg.eval_path(self.plan.layout) is None:
            return "no held-out split (curate.eval_fraction is 0, or no record fell in its share)"
        return None

    def key(self) -> dict[str, Any]:
        return eval_key(self.plan, self.student)

    def stamp(self) -> Path:
        return self.student.files.eval_stamp

    def outputs(self) -> tuple[Path, ...]:
        return (self.student.files.eval_report,)

    def work(self, key: dict[str, Any] | None) -> StageResult:
        report = _run_eval(self.plan, self.student)
        result = self.result(eval_summary(report), eval_lines(report, self.student.files), report)
        failed = (report.get("judge") or {}).get("failed", 0)
        if failed:  # not complete: the next run asks the failed judge calls again (the rest are cached)
            result.complete = False
            result.lines.append(f"  judge: {failed} calls failed; the next run asks them again")
        return result


def run_eval(plan: Plan, student: Student | None = None) -> dict[str, Any]:
    """The student (default: the SFT student) against the teacher on the held-out split,
    now (the stage, forced); writes the reports and, last, the eval stamp."""
    stage = Eval(plan, student=student)
    if stage.why_not_applicable() is not None:
        raise ValueError("sft eval: no held-out split (curate.eval_fraction is 0, or no record fell in its share); "
                         "set or raise curate.eval_fraction (then rerun synth curate), or give sft.eval")
    return stage.run(force=True).details


def _run_eval(plan: Plan, student: Student) -> dict[str, Any]:
    cfg, files = student.cfg, student.files
    if not files.trained_marker.is_file():
        raise ValueError(f"sft eval: no trained {files.trained.name} in {files.trained}; run `sft train` first")
    # a self-repair record is scored as its first prompt and last answer: pass@1 is the answer to the task
    conversations = read_conversations(cfg.eval_path(plan.layout), "sft.eval", repairs="final")[: cfg.eval_limit]
    report = _evaluate(cfg, files, conversations)
    files.eval_report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_markdown(files)
    _plot(report, files.eval_plot)
    return report


def write_markdown(files: StudentLayout) -> None:
    """eval_report.md from eval_report.json, with the exported files' table when they were
    evaluated (STUDENT/export/eval.json)."""
    report = json.loads(files.eval_report.read_text(encoding="utf-8"))
    exports = read_export_report(files.export_eval)
    text = _markdown(report) + ("\n".join(export_markdown(exports)) + "\n" if exports else "")
    files.eval_markdown.write_text(text, encoding="utf-8")


def eval_lines(r: dict[str, Any], files: StudentLayout) -> list[str]:
    """What `sft eval` prints."""
    ppl = r["perplexity_of_teacher_answers"]
    lines = [f"sft eval: {r['examples']} held-out examples ({r['engine']})",
             f"  perplexity of the teacher's answers: {ppl['before']:.2f} before -> {ppl['after']:.2f} after training",
             f"  ROUGE-L vs teacher: {r['student_before']['rouge_l']:.3f} -> {r['student_after']['rouge_l']:.3f}; "
             f"exact match {r['student_before']['exact_match']:.3f} -> {r['student_after']['exact_match']:.3f}"]
    if "verifier" in r:
        v = r["verifier"]
        lines.append(f"  task check pass rate: teacher {v['teacher']:.3f}, student {v['student_before']:.3f} -> "
                     f"{v['student_after']:.3f}")
    lines.append(f"  report: {files.eval_report}, {files.eval_markdown.name}")
    return lines


def _evaluate(cfg: SftConfig, student: StudentLayout, conversations: list[list[dict[str, str]]]) -> dict[str, Any]:
    prompts = [m[:-1] for m in conversations]
    references = [m[-1]["content"] for m in conversations]
    seeds = [getattr(m, "seed", None) for m in conversations]
    model_id = resolve_student(cfg.model)
    models = load_student_models(cfg, model_id, student.trained)
    with models.before():
        ppl_before = _perplexity(models.base, models.tokenizer, conversations)
    ppl_after = _perplexity(models.tuned, models.tokenizer, conversations)
    engine = engine_for(cfg)
    if engine == "vllm":
        models.release()  # the engine sizes its memory from what is free
        before, after = generate_vllm(cfg, model_id, student.trained, prompts, cfg.eval_max_new_tokens)
    else:
        with models.before():
            before = generate_transformers(models.base, models.tokenizer, prompts, cfg.eval_max_new_tokens)
        after = generate_transformers(models.tuned, models.tokenizer, prompts, cfg.eval_max_new_tokens)

    def scores(answers: list[str]) -> dict[str, float]:
        n = len(answers)
        return {
            "rouge_l": sum(rouge_l(a, r) for a, r in zip(answers, references, strict=True)) / n,
            "exact_match": sum(exact_match(a, r) for a, r in zip(answers, references, strict=True)) / n,
        }

    report: dict[str, Any] = {
        "examples": len(conversations),
        "engine": engine,
        "perplexity_of_teacher_answers": {"before": ppl_before, "after": ppl_after},
        "student_before": scores(before),
        "student_after": scores(after),
    }
    if cfg.eval_verifier:
        report["verifier"] = _verifier_rates(cfg.eval_verifier, prompts, seeds, {"teacher": references, "student_before": before,
                                                                                 "student_after": after})
    if cfg.eval_judge:
        report["judge"] = _judge(cfg.eval_judge, prompts, references, after, student.eval_judge)
    report["per_prompt"] = {"exact_match_after": [exact_match(a, r) for a, r in zip(after, references, strict=True)]}
    if cfg.eval_verifier:
        report["per_prompt"]["verifier_after"] = _verifier_passed(cfg.eval_verifier, prompts, seeds, after)
    report["samples"] = [
        {"prompt": p[-1]["content"][:300], "teacher": r[:300], "student_before": b[:300], "student_after": a[:300]}
        for p, r, b, a in list(zip(prompts, references, before, after, strict=True))[:5]
    ]
    return report


def _verifier_passed(spec: str, prompts: list, seeds: list, answers: list[str]) -> list[bool]:
    """Whether the task check accepts each answer (it sees the example's seed row too)."""
    verifier = Verifier({"function": spec}, "sft.eval_verifier")
    return [verifier.check(verifier_record(p, a, s)) is None for p, s, a in zip(prompts, seeds, answers, strict=True)]


def _verifier_rates(spec: str, prompts: list, seeds: list, answers: dict[str, list[str]]) -> dict[str, float]:
    """Share of each side's answers the task check accepts."""
    return {name: sum(_verifier_passed(spec, prompts, seeds, side)) / len(side) for name, side in answers.items()}


def _judge(judge_file: str, prompts: list, references: list[str], after: list[str], log: Path) -> dict[str, Any]:
    """The judge's preference between the teacher (A) and the trained student (B)."""
    j = judge_preference([(p[-1]["content"], r, a) for p, r, a in zip(prompts, references, after, strict=True)], judge_file, log)
    return {"teacher_wins": j["a"], "student_wins": j["b"], "ties": j["tie"], "unparseable": j["unparseable"],
            "failed": j["failed"], "student_win_rate": j["b_win_rate"]}


def eval_summary(r: dict[str, Any]) -> str:
    """One line: the student before and after training, against the teacher."""
    ppl = r["perplexity_of_teacher_answers"]
    line = (f"teacher-answer perplexity {ppl['before']:.1f} -> {ppl['after']:.1f}, "
            f"ROUGE-L {r['student_before']['rouge_l']:.3f} -> {r['student_after']['rouge_l']:.3f}")
    if "verifier" in r:
        v = r["verifier"]
        line += (f"; task check: teacher {v['teacher']:.3f}, student {v['student_before']:.3f} -> "
                 f"{v['student_after']:.3f}")
    return line


def _plot(r: dict[str, Any], path: Path) -> None:
    """Before/after bars: teacher-answer perplexity and ROUGE-L vs the teacher."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ppl = r["perplexity_of_teacher_answers"]
    ax1.bar(["before", "after"], [ppl["before"], ppl["after"]], color=["#999", "#3a7"])
    ax1.set_title("perplexity of teacher answers")
    ax2.bar(["before", "after"], [r["student_before"]["rouge_l"], r["student_after"]["rouge_l"]], color=["#999", "#3a7"])
    ax2.set_title("ROUGE-L vs teacher")
    ax2.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _markdown(r: dict[str, Any]) -> str:
    ppl = r["perplexity_of_teacher_answers"]
    lines = [
        "# Student vs teacher",
        "",
        f"{r['examples']} held-out examples; student answers by greedy decoding ({r['engine']}).",
        "",
        "| metric | student before training | student after training | teacher |",
        "| --- | --- | --- | --- |",
        f"| perplexity of the teacher's answers (lower: closer to the teacher) | {ppl['before']:.2f} | {ppl['after']:.2f} | |",
        f"| ROUGE-L F1 vs the teacher's answer | {r['student_before']['rouge_l']:.3f} | {r['student_after']['rouge_l']:.3f} | 1.000 |",
        f"| exact match with the teacher | {r['student_before']['exact_match']:.3f} | {r['student_after']['exact_match']:.3f} | 1.000 |",
    ]
    if "verifier" in r:
        v = r["verifier"]
        lines.append(f"| task verifier pass rate | {v['student_before']:.3f} | {v['student_after']:.3f} | {v['teacher']:.3f} |")
    if "judge" in r:
        j = r["judge"]
        lines.append(f"| judge win rate vs the teacher (ties count half) | | {j['student_win_rate']} | |")
    lines += ["", "## Samples", ""]
    for s in r["samples"]:
        lines += [f"- **prompt**: {s['prompt']!r}", f"  - teacher: {s['teacher']!r}", f"  - student after: {s['student_after']!r}"]
    return "\n".join(lines) + "\n"
