"""The dataset card: README.md beside the data, with PNG plots, from what the stages wrote.

It reads manifest.json (generate and curate), stats.json, train.jsonl and, when a student
was trained, its metrics and eval report; it calls nothing and changes no data.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from synth.config import Recipe
from synth.layout import Layout
from synth.manifest import read_manifest
from synth.plan import Plan
from synth.rawlog import iter_records
from synth.runtime import read_json
from synth.stage import Stage, StageResult
from synth.versions import versions_of


def _lengths(path: Path) -> list[int]:
    return [int((r.get("usage") or {}).get("completion_tokens") or 0) for r in iter_records(path)] if path.exists() else []


def _reasoning_lines(layout: Layout) -> list[str]:
    """The card's section on reasoning traces, when the kept records have any."""
    chars, without = [], 0
    for path in (layout.train, layout.eval):
        for rec in iter_records(path) if path.exists() else []:
            thought = rec["messages"][-1].get("reasoning_content")
            if thought is None:
                without += 1
            else:
                chars.append(len(thought))
    if not chars:
        return []
    return ["## Reasoning traces (characters)", "",
            f"- kept records with reasoning: {len(chars)} (without: {without})",
            f"- reasoning length: {_dist(chars)}", ""]


def _selection_lines(stats: dict[str, Any]) -> list[str]:
    """The card's best-of-n section: how often the teacher's samples pass (synth.filters.best_of_n)."""
    sel = stats.get("selection")
    if not sel:
        return []
    return ["## Best of n", "",
            f"- samples ranked by the {sel['by']} (passing at {sel['min_score']:g} or above), best {sel['k']} kept per prompt",
            f"- prompts: {sel['prompts']}, samples: {sel['samples']}",
            f"- pass@1: {sel['pass@1']}, pass@n: {sel['pass@n']} (the share of a prompt's samples that pass, and of "
            "prompts with at least one, averaged over prompts)",
            f"- prompts with no passing sample (none kept): {sel['prompts_without_pass']}", ""]


def _tool_lines(layout: Layout) -> list[str]:
    """The card's section on tool calls, when the recipe had tools: calls by tool, and the
    errors of every record (kept or rejected) by kind."""
    by_tool: dict[str, int] = {}
    errors: dict[str, int] = {}
    kept = with_calls = 0
    for path in (layout.train, layout.eval, layout.rejected):
        for rec in iter_records(path) if path.exists() else []:
            use = rec.get("tool_use")
            if use is None:
                continue
            for error in use.get("errors") or []:
                errors[error.get("kind")] = errors.get(error.get("kind"), 0) + 1
            if path == layout.rejected:
                continue
            kept += 1
            calls = [c for m in rec["messages"] for c in m.get("tool_calls") or []]
            with_calls += bool(calls)
            for c in calls:
                by_tool[c["function"]["name"]] = by_tool.get(c["function"]["name"], 0) + 1
    if not kept and not errors:
        return []

    def shown(counts: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"

    return ["## Tool calls", "",
            f"- kept records that call a tool: {with_calls} of {kept}",
            f"- calls in kept records, by tool: {shown(by_tool)}",
            f"- tool errors in all records, by kind: {shown(errors)}", ""]


def _source_lines(layout: Layout) -> list[str]:
    """The card's section on source documents (document_qa data): kept examples per document
    and the pages or sections they cite."""
    docs: dict[str, dict[str, Any]] = {}
    for path in (layout.train, layout.eval):
        for rec in iter_records(path) if path.exists() else []:
            source = ((rec.get("seed") or {}).get("fields") or {}).get("source")
            if not isinstance(source, dict) or "file" not in source:
                return []  # not document data
            doc = docs.setdefault(str(source["file"]), {"examples": 0, "places": set(), "sha256": source.get("sha256")})
            doc["examples"] += 1
            doc["places"].add(source.get("page") or source.get("section") or "")
    if not docs:
        return []
    return ["## Source documents", "",
            "Every example's `seed.fields.source` names its document, page or section and chunk.", "",
            "| document | sha256 | examples | pages or sections cited |", "| --- | --- | --- | --- |",
            *[f"| {name} | {str(d['sha256'])[:12]} | {d['examples']} | {len(d['places'] - {''})} |" for name, d in sorted(docs.items())],
            ""]


def _plots(layout: Layout, kept: list[int], rejected: list[int], funnel: list[dict[str, Any]]) -> list[str]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # plots are optional: pip install matplotlib
        return []
    made = []
    fig = Figure(figsize=(6, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.hist([kept, rejected], bins=30, label=["kept", "rejected"], stacked=True)
    ax.set_xlabel("answer length (completion tokens)")
    ax.set_ylabel("records")
    ax.legend()
    fig.tight_layout()
    fig.savefig(layout.lengths_plot, dpi=100)
    made.append(layout.lengths_plot.name)
    if funnel:
        fig = Figure(figsize=(6, 3.2))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        labels = [f["stage"] for f in funnel]
        values = [f.get("count", f.get("remaining", 0)) for f in funnel]
        ax.barh(labels[::-1], values[::-1])
        ax.set_xlabel("records remaining")
        fig.tight_layout()
        fig.savefig(layout.funnel_plot, dpi=100)
        made.append(layout.funnel_plot.name)
    return made


def _dist(values: list[int]) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"mean {statistics.mean(values):.0f}, median {statistics.median(values):.0f}, p95 {p95}, max {ordered[-1]}"


def _versions_section(out: Path) -> list[str]:
    """A table of the dataset's versions (one per teacher), when there is more than one."""
    versions = versions_of(out)
    if len(versions) < 2:
        return []
    lines = ["## Versions", "", "One directory per teacher; a new teacher never writes over an older version.", "",
             "| version | teacher | kept by curation |", "| --- | --- | --- |"]
    for d, teacher in versions:
        stats = read_json(Layout(d).stats)
        kept = stats.get("kept", "") if isinstance(stats, dict) else "not curated"
        here = " (this one)" if d.resolve() == out.resolve() else ""
        lines.append(f"| `{d}`{here} | `{teacher.get('model')}` | {kept} |")
    first, last = versions[0][0], versions[-1][0]
    return [*lines, "", f"Compare two versions prompt by prompt: `synth diff {first} {last}`.", ""]


def _logprob_lines(stats: dict[str, Any], recipe: Recipe) -> list[str]:
    lp = stats.get("logprobs")
    if not lp:
        return []
    how = (f"the top {recipe.sampling.logprobs} per answer token, captured with the answers" if recipe.sampling.logprobs
           else "scored afterwards by `synth score`")
    return [f"- teacher logprobs (`{recipe.layout.logprobs.name}`, {how}): "
            f"{lp['ok']} kept records have them; {lp['changed']} had their answer edited by curation (PII redaction) "
            f"and train on the text only; {lp['missing']} have none"]


class Card(Stage):
    """The dataset card (OUTPUT/README.md) and its plots, rebuilt from the files every run."""

    name = "card"
    always_runs = "rebuilt from the files every run"

    def work(self, key: dict[str, Any] | None) -> StageResult:
        path = _write_card(self.plan)
        return self.result(f"dataset card {path}", [f"synth card: {path}"], {"card": str(path)})


def write_card(plan: Plan) -> Path:
    """Write OUTPUT/README.md (the dataset card) and its plots; returns the card's path."""
    return Path(Card(plan).run().details["card"])


def _write_card(plan: Plan) -> Path:
    layout, recipe = plan.layout, plan.recipe
    manifest = read_manifest(layout.manifest)
    gen, cur = manifest.get("counts", {}), manifest.get("curate", {})
    stats = cur.get("stats", {})
    kept, rejected = _lengths(layout.train) + _lengths(layout.eval), _lengths(layout.rejected)
    plots = _plots(layout, kept, rejected, cur.get("funnel", []))
    lines = [
        f"# {recipe.name}: a distillation dataset made with stillhouse",
        "",
        f"Teacher answers to {gen.get('requests', '?')} requests from `{recipe.generation_seeds.path}` "
        f"(template `{recipe.template.path}`), curated for fine-tuning a student.",
        "",
        *_teacher_lines(recipe, manifest.get("teacher", {}), stats),
        *_count_lines(gen, stats),
        "## Answer lengths (completion tokens)",
        "",
        f"- kept: {_dist(kept)}",
        f"- rejected: {_dist(rejected)}",
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
        *_selection_lines(stats),
        *_reasoning_lines(layout),
        *_tool_lines(layout),
        *_source_lines(layout),
        *_versions_section(layout.root),
        *_load_lines(layout, stats),
    ]
    layout.card.write_text("\n".join(lines), encoding="utf-8")
    return layout.card


def _teacher_lines(recipe: Recipe, teacher: dict[str, Any], stats: dict[str, Any]) -> list[str]:
    terms = recipe.card.teacher_terms or ("NOT STATED: check the teacher model licence or API terms before using "
                                          "these outputs for training")
    return [
        "## Teacher and sampling",
        "",
        f"- teacher: `{teacher.get('backend')}` / `{teacher.get('model')}`"
        + (f" at {teacher['base_url']}" if teacher.get("base_url") else "")
        + (f", weights fingerprint `{teacher['fingerprint']}`" if teacher.get("fingerprint") else ""),
        f"- teacher licence or terms of use: {terms}",
        f"- sampling: n={recipe.sampling.n}, " + ", ".join(f"{k}={v}" for k, v in recipe.sampling.identity().items()),
        *_logprob_lines(stats, recipe),
        "",
    ]


def _count_lines(gen: dict[str, Any], stats: dict[str, Any]) -> list[str]:
    return [
        "## Counts per stage",
        "",
        "| stage | records |",
        "| --- | --- |",
        f"| requests | {gen.get('requests', 0)} |",
        f"| answered (raw.jsonl) | {gen.get('kept', 0)} |",
        f"| failed (failures.jsonl) | {gen.get('failed', 0)} |",
        f"| kept by curation | {stats.get('kept', 0)} (train {stats.get('train', 0)}, eval {stats.get('eval', 0)}) |",
        f"| rejected by curation | {stats.get('rejected', 0)} |",
        "",
        "## Rejections by filter",
        "",
        "| filter | rejected |",
        "| --- | --- |",
        *[f"| {k.split(':', 1)[1]} | {v} |" for k, v in stats.get("rejected_by_filter", {}).items()],
        "",
        "Every rejected record is in `rejected.jsonl` with its filter and reason.",
        "",
    ]


def _load_lines(layout: Layout, stats: dict[str, Any]) -> list[str]:
    return [
        "## Load it",
        "",
        "```python",
        "from datasets import load_dataset",
        f'ds = load_dataset("json", data_files={{"train": "{layout.train}"'
        + (f', "eval": "{layout.eval}"' if stats.get("eval") else "")
        + "})",
        "# ds['train'][0]['messages'] is TRL's conversational format",
        "```",
        "",
    ]
