"""Regression checks with lm-evaluation-harness (`sft.eval_harness`): the student before and
after training on the same tasks, the change per task paired by item.

A student trained on one domain can forget what it knew: a compliance model that no longer
follows general instructions. lm-evaluation-harness (EleutherAI's `lm-eval`, the convention of
axolotl and SkyThought) scores the base student and the trained one on the tasks named in
`sft.eval_harness.tasks`: local ones, from task YAMLs in `include_path` (prompts/harness/ ships
dates_iso, the demo's task as multiple choice), or the harness's own (their datasets come from
the hub). The backend is transformers (`hf`: the adapter through peft) or vLLM (`vllm`: the
adapter as a LoRA request). For each task the first metric (acc, exact_match, ...) is compared
item by item (sft.stats.paired_difference): the verdict says "better", "worse" (a regression)
or "no detectable difference at this sample size".

The Harness stage's key: the trained weights, the student base, the harness settings, the
task folder's files and the lm-eval version. Writes STUDENT/harness.json and harness.md.
"""

from __future__ import annotations

import json
import logging
from importlib.metadata import version
from pathlib import Path
from typing import Any

from sft.config import HarnessOptions
from sft.stats import paired_difference, verdict, verdict_line
from sft.student import resolve_student
from synth.configtools import stage_fields
from synth.fingerprint import fingerprint_dir, model_identity
from synth.plan import Plan, Student
from synth.stage import Stage, StageResult

logger = logging.getLogger(__name__)


def _task_manager(options: HarnessOptions) -> Any:
    """lm-eval's TaskManager over the local tasks, with the harness's own only when a task
    named is not local (indexing the ~10,000 built-in tasks takes seconds)."""
    try:
        from lm_eval.tasks import TaskManager  # heavy: lm_eval imports torch, datasets, evaluate
    except ImportError as exc:
        raise ImportError(f"sft.eval_harness needs lm-evaluation-harness ({exc}): pip install 'stillhouse[harness]'") from None
    include = [options.include_path] if options.include_path else None
    local = TaskManager(include_path=include, include_defaults=False) if include else None
    if local is not None and all(t in local.all_tasks for t in options.tasks):
        return local
    manager = TaskManager(include_path=include)
    missing = [t for t in options.tasks if t not in manager.all_tasks]
    if missing:
        where = f"in {options.include_path} or " if options.include_path else ""
        raise ValueError(f"sft.eval_harness.tasks: no task named {', '.join(missing)} {where}among lm-evaluation-harness's "
                         "own; check the name (the `task:` of a YAML in include_path)")
    return manager


def _model_args(pretrained: str, adapter: Path | None) -> dict[str, Any]:
    """lm-eval's transformers model: the student in bf16 on a GPU, fp32 on a CPU; a LoRA
    adapter through peft."""
    import torch  # heavy: torch

    gpu = torch.cuda.is_available()
    args: dict[str, Any] = {"pretrained": pretrained, "dtype": "bfloat16" if gpu else "float32",
                            "device": "cuda" if gpu else "cpu"}
    if adapter is not None:
        args["peft"] = str(adapter)
    return args


def _run_harness(options: HarnessOptions, pretrained: str, adapter: Path | None, manager: Any) -> dict[str, Any]:
    """lm-eval's results and per-item scores for one model."""
    import lm_eval  # heavy: lm_eval

    try:
        out = lm_eval.simple_evaluate(model="hf", model_args=_model_args(pretrained, adapter), tasks=list(options.tasks), task_manager=manager,
                                      limit=options.limit, num_fewshot=options.num_fewshot, batch_size=options.batch_size,
                                      apply_chat_template=options.chat_template, log_samples=True, bootstrap_iters=0)
    except (FileNotFoundError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"sft.eval_harness: lm-evaluation-harness could not run {', '.join(options.tasks)} "
                         f"({type(exc).__name__}: {exc}); check each task YAML and its data files") from None
    if out is None:
        raise ValueError("sft.eval_harness: lm-evaluation-harness returned no results")
    return out


def _metric(results: dict[str, Any], samples: list[dict[str, Any]]) -> str:
    """The task's first metric with per-item scores (acc, exact_match, ...)."""
    for key in results:
        name = key.split(",")[0]
        if not name.endswith("_stderr") and name not in ("alias", "name", "sample_len") and samples and name in samples[0]:
            return name
    raise ValueError(f"sft.eval_harness: no per-item metric in the results ({', '.join(results)})")


def harness_key(plan: Plan, student: Student) -> dict[str, Any]:
    """The Harness stage's key (see the module docstring)."""
    cfg = student.cfg
    options = cfg.eval_harness
    trained = student.files.trained
    try:
        lm_eval_version = version("lm_eval")
    except Exception:  # not installed: the stage says so when it runs
        lm_eval_version = None
    return {
        "weights": fingerprint_dir(trained) if trained.is_dir() else None,
        "student": model_identity(cfg.model),
        "tasks": fingerprint_dir(Path(options.include_path)) if options and options.include_path else None,
        "lm_eval": lm_eval_version,
        "sft": stage_fields(cfg, "harness"),
    }


class Harness(Stage):
    """The student before and after training under lm-evaluation-harness (keyed)."""

    name = "harness"

    def __init__(self, plan: Plan, progress: bool = True, student: Student | None = None):
        super().__init__(plan, progress)
        self.student = student or plan.student

    def why_not_applicable(self) -> str | None:
        return None if self.student.cfg.eval_harness is not None else "no sft.eval_harness"

    def key(self) -> dict[str, Any]:
        return harness_key(self.plan, self.student)

    def stamp(self) -> Path:
        return self.student.files.harness_stamp

    def outputs(self) -> tuple[Path, ...]:
        return (self.student.files.harness_report, self.student.files.harness_markdown)

    def work(self, key: dict[str, Any] | None) -> StageResult:
        cfg, files = self.student.cfg, self.student.files
        options = cfg.eval_harness
        assert options is not None
        if not files.trained_marker.is_file():
            raise ValueError(f"sft eval: no trained {files.trained.name} in {files.trained}; run `sft train` first")
        manager = _task_manager(options)
        base = resolve_student(cfg.model)
        before = _run_harness(options, base, None, manager)
        if cfg.full_finetune:
            after = _run_harness(options, str(files.trained), None, manager)
        else:
            after = _run_harness(options, base, files.trained, manager)
        report = _report(options, before, after)
        files.harness_report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        files.harness_markdown.write_text(markdown(report), encoding="utf-8")
        return self.result(summary(report), lines(report, files.harness_markdown), report)


def _report(options: HarnessOptions, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    tasks = []
    for task in options.tasks:
        if task not in before["results"] or task not in after["results"]:
            continue  # a group: its member tasks are reported
        samples_a, samples_b = before["samples"][task], after["samples"][task]
        metric = _metric(before["results"][task], samples_a)
        a = {s["doc_id"]: float(s[metric]) for s in samples_a}
        b = {s["doc_id"]: float(s[metric]) for s in samples_b}
        ids = sorted(set(a) & set(b))
        diff = paired_difference([a[i] for i in ids], [b[i] for i in ids])
        tasks.append({"task": task, "metric": metric, "items": len(ids), "before": sum(a[i] for i in ids) / len(ids),
                      "after": sum(b[i] for i in ids) / len(ids), "change": diff, "verdict": verdict(diff),
                      "line": verdict_line(f"{task} trained", "base", diff, what=metric, unit="items")})
    return {"tasks": tasks, "limit": options.limit,
            "regressions": [t["task"] for t in tasks if t["verdict"] == "worse"]}


def summary(report: dict[str, Any]) -> str:
    """One line: each task's metric before -> after, and the regressions."""
    parts = [f"{t['task']} {t['metric']} {t['before']:.3f} -> {t['after']:.3f} ({t['verdict'].split(' ')[0]})"
             for t in report["tasks"]]
    regressions = report["regressions"]
    return "; ".join(parts) + (f"; REGRESSED: {', '.join(regressions)}" if regressions else "")


def lines(report: dict[str, Any], path: Path) -> list[str]:
    """What `sft eval` prints for the harness."""
    out = ["lm-evaluation-harness, base student -> trained student:"]
    for t in report["tasks"]:
        c = t["change"]
        out.append(f"  {t['task']}: {t['metric']} {t['before']:.3f} -> {t['after']:.3f}, {c['mean']:+.3f} "
                   f"(95% CI {c['ci95'][0]:+.3f} to {c['ci95'][1]:+.3f}, {t['items']} items): {t['verdict']}")
    if report["regressions"]:
        out.append(f"  regressions: {', '.join(report['regressions'])} (the trained student is worse than its base)")
    out.append(f"  report: {path}")
    return out


def markdown(report: dict[str, Any]) -> str:
    """harness.md."""
    md = ["# Regression checks (lm-evaluation-harness)", "",
          "The base student and the trained one on the same items (transformers); the change is paired by item, "
          "with a bootstrap 95% interval.", "",
          "| task | metric | items | base | trained | change | 95% CI | verdict |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for t in report["tasks"]:
        c = t["change"]
        md.append(f"| {t['task']} | {t['metric']} | {t['items']} | {t['before']:.3f} | {t['after']:.3f} | "
                  f"{c['mean']:+.3f} | {c['ci95'][0]:+.3f} to {c['ci95'][1]:+.3f} | {t['verdict']} |")
    return "\n".join(md) + "\n"
