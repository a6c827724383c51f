"""`synth run`: the whole loop from one recipe, as a loop over its stages (synth.stage).

expand (with an `expand` section) -> generate -> curate -> card -> train -> eval (with an
`sft` section) -> export f16, export QUANT..., export eval (with an `export` section too) ->
pairs -> dpo -> dpo eval (with a `pairs` section too). The command
resolves the recipe into one plan (synth.plan) and hands it to every stage; each stage's
skip or resume decision follows from its key: expand and generate send only the calls
their logs do not hold; curate, pairs, train, dpo and the evals run when the key of what
they would read differs from the one they last finished with (or their outputs are gone)
and are skipped otherwise; the card is rebuilt every run. `report.md` says for each stage
what it did, or why it was skipped.
"""

from __future__ import annotations

from typing import Any

from sft.dpo import Dpo
from sft.evaluate import Eval
from sft.export import export_stages
from sft.export_eval import ExportEval
from sft.harness import Harness
from sft.train import Train
from synth.card import Card
from synth.curate import Curate
from synth.expand import Expand
from synth.generate import Generate
from synth.pairs import Pairs
from synth.plan import Plan
from synth.rawlog import DirLock
from synth.runtime import write_json_atomically
from synth.stage import Stage, StageResult


def stages(plan: Plan, progress: bool = True) -> list[Stage]:
    """The stages of the plan's recipe, in order."""
    recipe = plan.recipe
    out: list[Stage] = [Expand(plan, progress)] if recipe.expand is not None else []
    out += [Generate(plan, progress), Curate(plan, progress), Card(plan, progress)]
    if recipe.sft is None:
        return out
    out += [Train(plan, progress), Eval(plan, progress)]
    if plan.sft.eval_harness is not None:
        out.append(Harness(plan, progress))
    if recipe.export is not None:
        out += [*export_stages(plan, recipe.export, progress), ExportEval(plan, recipe.export, progress)]
    if recipe.pairs is None:
        return out
    return out + [Pairs(plan, progress), Dpo(plan, progress), Eval(plan, progress, plan.dpo_student, "dpo eval")]


def run_all(plan: Plan, progress: bool = True) -> dict[str, Any]:
    """Run every stage of the plan that has work to do; returns the report (report.json)."""
    plan.layout.root.mkdir(parents=True, exist_ok=True)
    with DirLock(plan.layout.root):
        results = [stage.run(announce=True) for stage in stages(plan, progress)]
        report = {"recipe": plan.recipe.name, "stages": [r.report_entry() for r in results]}
        _write_report(plan, results, report)
    return report


def _write_report(plan: Plan, results: list[StageResult], report: dict[str, Any]) -> None:
    layout = plan.layout
    lines = [f"# {plan.recipe.name}: run report", "", "| stage | status | why | what happened |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {r.stage} | {r.status} | {r.why or ''} | {r.summary} |" for r in results]
    student = f"{plan.student.files.eval_markdown} (when evaluated)" if plan.recipe.sft else "no sft section"
    lines += ["", f"Dataset card: [README.md](README.md). Student report: {student}.", ""]
    layout.report.write_text("\n".join(lines), encoding="utf-8")
    write_json_atomically(layout.report_json, report)
