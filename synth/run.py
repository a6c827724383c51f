"""`synth run`: the whole loop from one recipe: (with an `expand` section) expand, generate,
curate, card, and (with an `sft` section) train and evaluate the student.

Each stage skips the work already done: generate sends only missing requests; curation is
deterministic and cheap; training is skipped when the student was trained on exactly this
train.jsonl with this sft config (and resumes from its last checkpoint otherwise);
evaluation is skipped when its report belongs to the current trained weights. `report.md` at the
top of the output tree says what each stage did.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from synth.config import Recipe
from synth.manifest import file_sha256

logger = logging.getLogger(__name__)


def _weights_sha(directory: Path) -> str | None:
    """One hash over the safetensors files of an adapter or model dir (sharded or not)."""
    files = sorted(directory.glob("*.safetensors")) if directory.is_dir() else []
    if not files:
        return None
    return hashlib.sha256("".join(f"{f.name}:{file_sha256(f)}" for f in files).encode()).hexdigest()


def run_all(recipe: Recipe, progress: bool = True) -> dict[str, Any]:
    from synth.card import write_card
    from synth.curate import run_curate
    from synth.generate import run_generate

    out = Path(recipe.output.dir)
    report: dict[str, Any] = {"recipe": recipe.name, "stages": []}

    def stage(name: str, fn, skip_reason: str | None = None) -> Any:
        t = time.monotonic()
        if skip_reason:
            logger.info("%s: skipped (%s)", name, skip_reason)
            report["stages"].append({"stage": name, "status": "skipped", "why": skip_reason})
            return None
        result = fn()
        report["stages"].append({"stage": name, "status": "done", "wall_s": round(time.monotonic() - t, 1)})
        return result

    if recipe.expand:
        from synth.expand import run_expand

        exp = stage("expand", lambda: run_expand(recipe))
        report["stages"][-1]["summary"] = f"{exp['seeds']} seeds -> {exp['new']} new prompts ({exp['calls_sent']} calls sent)"
        recipe = expanded_recipe(recipe, exp["output"])

    gen = stage("generate", lambda: run_generate(recipe, progress=progress))
    report["stages"][-1]["summary"] = f"{gen['counts']['kept']} of {gen['counts']['requests']} answered, {gen['counts']['generated']} new, {gen['counts']['failed']} failed"
    cur = stage("curate", lambda: run_curate(recipe, progress=progress))
    report["stages"][-1]["summary"] = f"kept {cur['kept']} (train {cur['train']}, eval {cur['eval']}), rejected {cur['rejected']}"
    card = write_card(recipe)
    report["card"] = str(card)

    if recipe.sft:
        from sft.config import load_sft
        from sft.train import trained_already

        cfg = load_sft(recipe.sft)
        train_path, eval_path, student = cfg.resolved_paths(recipe.output.dir)
        done = trained_already(cfg, train_path, student)

        def train() -> dict[str, Any]:
            from sft.train import run_train

            return run_train(recipe, progress=progress)

        metrics = stage("train", train, "trained on this data and config already" if done else None)
        if metrics:
            from sft.train import loss_summary

            report["stages"][-1]["summary"] = f"{metrics['global_step']} steps, {loss_summary(metrics)}"
        weights_sha = _weights_sha(cfg.trained_dir(student))
        eval_report = student / "eval_report.json"
        evaluated = eval_report.exists() and json.loads(eval_report.read_text()).get("weights_sha") == weights_sha

        def evaluate() -> dict[str, Any]:
            from sft.evaluate import run_eval

            r = run_eval(recipe)
            r["weights_sha"] = weights_sha
            eval_report.write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")
            return r

        skip = "no held-out split (curate.eval_fraction is 0)" if eval_path is None else (
            "these trained weights were evaluated already" if evaluated else None)
        ev = stage("eval", evaluate, skip)
        if ev:
            ppl = ev["perplexity_of_teacher_answers"]
            report["stages"][-1]["summary"] = (f"teacher-answer perplexity {ppl['before']:.1f} -> {ppl['after']:.1f}, "
                                               f"ROUGE-L {ev['student_before']['rouge_l']:.3f} -> {ev['student_after']['rouge_l']:.3f}")
    _write_report(out, report)
    return report


def expanded_recipe(recipe: Recipe, expanded: str) -> Recipe:
    """The recipe with its seeds replaced by the expanded prompts, under the same template
    variable (expand.field), so the template is unchanged."""
    import dataclasses

    field = recipe.expand.get("field", "prompt")
    seeds = dataclasses.replace(recipe.seeds, path=expanded, format="jsonl", fields={field: "prompt"}, limit=None)
    return dataclasses.replace(recipe, seeds=seeds)


def _write_report(out: Path, report: dict[str, Any]) -> None:
    lines = [f"# {report['recipe']}: run report", "", "| stage | status | what happened |", "| --- | --- | --- |"]
    for s in report["stages"]:
        lines.append(f"| {s['stage']} | {s['status']} | {s.get('summary') or s.get('why', '')} |")
    lines += ["", "Dataset card: [README.md](README.md). Student report: student/eval_report.md (when trained).", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
