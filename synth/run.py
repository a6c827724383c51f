"""`synth run`: the whole loop from one recipe, as a loop over stages.

expand (with an `expand` section) -> generate -> curate -> card -> train -> eval (with an
`sft` section) -> pairs -> dpo -> dpo eval (with a `pairs` section too). Each stage's skip
or resume decision follows from its key (synth.stages): expand and generate send only the
calls their logs do not hold; curate, pairs, train, dpo and the evals run when the key of
what they would read differs from the one they last finished with (or their outputs are
gone) and are skipped otherwise; the card is rebuilt every run.
`report.md` says for each stage what it did, or why it was skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.config import Recipe
from synth.rawlog import DirLock
from synth.runtime import write_json_atomically

logger = logging.getLogger(__name__)


@dataclass
class Stage:
    """One step of the loop. A keyed stage has `key` (its inputs now), `stamp` (where it
    records the key it finished with) and `outputs` (files that must still be there)."""

    name: str
    run: Callable[[dict[str, Any] | None], str]  # does the work (given the key), returns a summary
    key: Callable[[], dict[str, Any]] | None = None
    stamp: Path | None = None
    outputs: tuple[Path, ...] = ()
    unkeyed_why: str = ""  # why an unkeyed stage always runs
    absent: Callable[[], str | None] = lambda: None  # why the stage does not apply to this recipe


def stages(recipe: Recipe, progress: bool) -> list[Stage]:
    """The stages of the recipe, in order."""
    from synth import stages as keys

    layout = recipe.layout
    out: list[Stage] = []
    if recipe.expand is not None:
        out.append(Stage("expand", lambda _: _expand(recipe),
                         unkeyed_why="sends only the calls not in expand_raw.jsonl (each call's id is its key)"))
    out += [
        Stage("generate", lambda _: _generate(recipe, progress),
              unkeyed_why="sends only the requests not in raw.jsonl (each request's id is its key)"),
        Stage("curate", lambda key: _curate(recipe, progress, key), key=lambda: keys.curate_key(recipe),
              stamp=layout.stamp("curate"), outputs=(layout.train, layout.stats)),
        Stage("card", lambda _: _card(recipe), unkeyed_why="rebuilt from the files every run"),
    ]
    if recipe.sft is None:
        return out
    student = recipe.sft.student(layout)
    out += [
        Stage("train", lambda key: _train(recipe, progress, key), key=lambda: keys.train_key(recipe),
              stamp=student.train_stamp, outputs=(student.trained_marker,)),
        Stage("eval", lambda key: _eval(recipe, key), key=lambda: keys.eval_key(recipe),
              stamp=student.eval_stamp, outputs=(student.eval_report,),
              absent=lambda: None if recipe.sft.eval_path(layout) else "no held-out split (curate.eval_fraction is 0, or no record fell in its share)"),
    ]
    if recipe.pairs is None:
        return out
    from sft.dpo import dpo_key, dpo_layout, dpo_recipe

    dpo = dpo_layout(recipe)
    out += [
        Stage("pairs", lambda key: _pairs(recipe, key), key=lambda: keys.pairs_key(recipe),
              stamp=layout.stamp("pairs"), outputs=(layout.pairs,)),
        Stage("dpo", lambda key: _dpo(recipe, progress, key), key=lambda: dpo_key(recipe),
              stamp=dpo.train_stamp, outputs=(dpo.trained_marker,)),
        Stage("dpo eval", lambda key: _eval(dpo_recipe(recipe), key), key=lambda: keys.eval_key(dpo_recipe(recipe)),
              stamp=dpo.eval_stamp, outputs=(dpo.eval_report,),
              absent=lambda: None if recipe.sft.eval_path(layout) else "no held-out split"),
    ]
    return out


def run_all(recipe: Recipe, progress: bool = True) -> dict[str, Any]:
    """Run every stage of the recipe that has work to do; returns the report."""
    from synth.stages import read_stamp, why_run

    layout = recipe.layout
    layout.root.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"recipe": recipe.name, "stages": []}
    with DirLock(layout.root):
        for stage in stages(recipe, progress):
            entry: dict[str, Any] = {"stage": stage.name}
            report["stages"].append(entry)
            absent = stage.absent()
            key = stage.key() if stage.key is not None and absent is None else None
            if absent is not None:
                why = None
                entry.update(status="skipped", why=absent)
            elif key is None:
                why = stage.unkeyed_why
            else:
                why = why_run(read_stamp(stage.stamp), key, all(p.exists() for p in stage.outputs))
                if why is None:
                    entry.update(status="skipped", why="inputs unchanged since it last finished")
            if "status" in entry:
                logger.info("%s: skipped (%s)", stage.name, entry["why"])
                continue
            logger.info("%s: running (%s)", stage.name, why)
            started = time.monotonic()
            summary = stage.run(key)
            entry.update(status="done", why=why, summary=summary, wall_s=round(time.monotonic() - started, 1))
        _write_report(recipe, report)
    return report


def _expand(recipe: Recipe) -> str:
    from synth.expand import run_expand

    r = run_expand(recipe)
    return f"{r['seeds']} seeds -> {r['new']} new prompts ({r['calls_sent']} calls sent)"


def _generate(recipe: Recipe, progress: bool) -> str:
    from synth.generate import run_generate

    c = run_generate(recipe, progress=progress)["counts"]
    return f"{c['kept']} of {c['requests']} answered, {c['generated']} new, {c['failed']} failed"


def _curate(recipe: Recipe, progress: bool, key: dict[str, Any] | None) -> str:
    from synth.curate import run_curate

    s = run_curate(recipe, progress=progress, key=key)
    return f"kept {s['kept']} (train {s['train']}, eval {s['eval']}), rejected {s['rejected']}"


def _card(recipe: Recipe) -> str:
    from synth.card import write_card

    return f"dataset card {write_card(recipe)}"


def _train(recipe: Recipe, progress: bool, key: dict[str, Any] | None) -> str:
    from sft.train import loss_summary, run_train

    m = run_train(recipe, progress=progress, key=key)
    resumed = f", resumed from {Path(m['resumed_from']).name}" if m["resumed_from"] else ""
    return f"{m['global_step']} steps, {loss_summary(m)}{resumed}"


def _pairs(recipe: Recipe, key: dict[str, Any] | None) -> str:
    from synth.pairs import run_pairs

    c = run_pairs(recipe, key=key)
    return f"{c['pairs']} pairs (" + ", ".join(f"{s} {c.get(s, 0)}" for s in recipe.pair_options.sources) + ")"


def _dpo(recipe: Recipe, progress: bool, key: dict[str, Any] | None) -> str:
    from sft.dpo import run_dpo
    from sft.train import loss_summary

    m = run_dpo(recipe, progress=progress, key=key)
    resumed = f", resumed from {Path(m['resumed_from']).name}" if m["resumed_from"] else ""
    return f"{m['global_step']} steps on {m['data']['rows']} pairs, {loss_summary(m)}{resumed}"


def _eval(recipe: Recipe, key: dict[str, Any] | None) -> str:
    from sft.evaluate import eval_summary, run_eval

    return eval_summary(run_eval(recipe, key=key))


def _write_report(recipe: Recipe, report: dict[str, Any]) -> None:
    layout = recipe.layout
    lines = [f"# {report['recipe']}: run report", "", "| stage | status | why | what happened |", "| --- | --- | --- | --- |"]
    for s in report["stages"]:
        lines.append(f"| {s['stage']} | {s['status']} | {s.get('why') or ''} | {s.get('summary', '')} |")
    student = f"{recipe.sft.student(layout).eval_markdown} (when evaluated)" if recipe.sft else "no sft section"
    lines += ["", f"Dataset card: [README.md](README.md). Student report: {student}.", ""]
    layout.report.write_text("\n".join(lines), encoding="utf-8")
    write_json_atomically(layout.report_json, report)
