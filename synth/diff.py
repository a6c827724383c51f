"""`synth diff A B`: compare two dataset versions (e.g. the same recipe, two teachers).

Matches records by prompt (the rendered chat without the answer) and reports, per version
and per prompt: answer lengths, refusal rate, curation rejection rate, and the prompts whose
answers changed most (lowest ROUGE-L between the two teachers' answers). Writes diff.json
and diff.md (default: into B). Each version's planned requests come from the plan of the
recipe it was generated with (its config.yaml and teacher.json), so records of earlier
configurations in the same raw log are left out. With --judge, a pairwise judge
(synth.judging) says which answer is better.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
from pathlib import Path
from typing import Any

from synth.config import Recipe
from synth.configtools import from_dict, load_yaml
from synth.filters import answer_text, prompt_text
from synth.filters.quality import Refusal
from synth.judging import judge_preference
from synth.layout import Layout
from synth.manifest import read_manifest
from synth.plan import resolve
from synth.rawlog import iter_records
from synth.textmetrics import rouge_l
from synth.versions import recorded_teacher

logger = logging.getLogger(__name__)


def _prompt_key(rec: dict[str, Any]) -> str:
    chat = json.dumps(rec["messages"][:-1], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(chat.encode()).hexdigest()[:16]


def planned_ids(d: Path) -> set[str] | None:
    """The request ids of the recipe that last generated into `d` (its config.yaml, with the
    teacher recorded in it), or None when they cannot be rebuilt (no config, inputs moved)."""
    layout = Layout(d)
    teacher = recorded_teacher(d)
    if not layout.config.exists() or teacher is None:
        return None
    try:
        data = load_yaml(layout.config)
        data["output"]["dir"] = str(d)  # the directory as given, wherever the run was
        for section in ("curate", "sft", "card"):  # not needed to plan; their files may be gone
            data.pop(section, None)
        return set(resolve(from_dict(Recipe, data), teacher, versioned=False).request_ids)
    except (ValueError, KeyError, TypeError, ImportError) as exc:
        logger.warning("synth diff: cannot rebuild the requests of %s from its config.yaml (%s); comparing every "
                       "record of its raw.jsonl, which may hold records of earlier configurations", d, exc)
        return None


def _load(d: Path) -> dict[str, Any]:
    layout = Layout(d)
    if not layout.raw.exists():
        raise ValueError(f"synth diff: {d} has no raw.jsonl; give two output dirs of synth generate")
    planned = planned_ids(d)
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    other = 0
    for rec in iter_records(layout.raw):
        if planned is not None and rec["id"] not in planned:
            other += 1
            continue
        by_prompt.setdefault(_prompt_key(rec), []).append(rec)
    for records in by_prompt.values():  # sample 0 first, whatever order the teacher finished in
        records.sort(key=lambda r: (r.get("sample_index", 0), r["id"]))
    rejected = {r["id"] for r in iter_records(layout.rejected)} if layout.rejected.exists() else None
    manifest = read_manifest(layout.manifest)
    return {"dir": str(d), "by_prompt": by_prompt, "rejected": rejected, "teacher": manifest.get("teacher", {}),
            "records_of_other_configs": other}


def _summary(v: dict[str, Any], refusal: Refusal) -> dict[str, Any]:
    recs = [r for rs in v["by_prompt"].values() for r in rs]
    lengths = [len(answer_text(r)) for r in recs]
    out = {
        "dir": v["dir"],
        "teacher": {k: v["teacher"].get(k) for k in ("backend", "model", "base_url", "fingerprint")},
        "records": len(recs),
        "records_of_other_configs": v["records_of_other_configs"],
        "prompts": len(v["by_prompt"]),
        "answer_chars_mean": round(statistics.mean(lengths), 1) if lengths else 0,
        "answer_chars_median": statistics.median(lengths) if lengths else 0,
        "refusal_rate": round(sum(refusal.check(r) is not None for r in recs) / max(len(recs), 1), 4),
    }
    if v["rejected"] is not None:
        out["rejection_rate"] = round(sum(r["id"] in v["rejected"] for r in recs) / max(len(recs), 1), 4)
    return out


def run_diff(a_dir: str | Path, b_dir: str | Path, out_dir: str | Path | None = None, top: int = 10,
             judge: str | Path | None = None) -> dict[str, Any]:
    a, b = _load(Path(a_dir)), _load(Path(b_dir))
    refusal = Refusal({}, "diff")
    common = sorted(set(a["by_prompt"]) & set(b["by_prompt"]))
    changes = []
    for key in common:
        ra, rb = a["by_prompt"][key][0], b["by_prompt"][key][0]  # sample 0 of each
        ans_a, ans_b = answer_text(ra), answer_text(rb)
        changes.append({
            "prompt": prompt_text(ra)[:200],
            "similarity": round(rouge_l(ans_a, ans_b), 4),
            "chars_a": len(ans_a),
            "chars_b": len(ans_b),
            "answer_a": ans_a[:200],
            "answer_b": ans_b[:200],
            "prompt_full": prompt_text(ra),
            "answer_a_full": ans_a,
            "answer_b_full": ans_b,
        })
    changes.sort(key=lambda c: (c["similarity"], c["prompt"]))
    report = {
        "a": _summary(a, refusal),
        "b": _summary(b, refusal),
        "prompts_in_both": len(common),
        "only_in_a": len(set(a["by_prompt"]) - set(b["by_prompt"])),
        "only_in_b": len(set(b["by_prompt"]) - set(a["by_prompt"])),
        "mean_answer_similarity": round(statistics.mean(c["similarity"] for c in changes), 4) if changes else None,
        "changed_most": changes[:top],
    }
    target = Layout(Path(out_dir) if out_dir else Path(b_dir))
    target.root.mkdir(parents=True, exist_ok=True)
    if judge is not None:
        pairs = [(c["prompt_full"], c["answer_a_full"], c["answer_b_full"]) for c in changes]
        report["judge"] = judge_preference(pairs, judge, target.diff_judge)
    for c in changes:
        for k in ("prompt_full", "answer_a_full", "answer_b_full"):
            c.pop(k)
    target.diff_json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    target.diff.write_text(_markdown(report), encoding="utf-8")
    return report


def _markdown(r: dict[str, Any]) -> str:
    a, b = r["a"], r["b"]
    rows = [("teacher", f"{a['teacher'].get('model')}", f"{b['teacher'].get('model')}"),
            ("records", a["records"], b["records"]), ("prompts", a["prompts"], b["prompts"]),
            ("answer chars, mean", a["answer_chars_mean"], b["answer_chars_mean"]),
            ("answer chars, median", a["answer_chars_median"], b["answer_chars_median"]),
            ("refusal rate", a["refusal_rate"], b["refusal_rate"]),
            ("curation rejection rate", a.get("rejection_rate", "n/a"), b.get("rejection_rate", "n/a"))]
    lines = ["# Dataset diff", "", f"A: `{a['dir']}`  B: `{b['dir']}`", "", "| | A | B |", "| --- | --- | --- |"]
    lines += [f"| {k} | {x} | {y} |" for k, x, y in rows]
    if "judge" in r:
        j = r["judge"]
        lines += ["", f"Judge preference over {j['judged']} prompts: A {j['a']}, B {j['b']}, tie {j['tie']}, "
                  f"unparseable {j['unparseable']}, failed {j['failed']}; B win rate {j['b_win_rate']}."]
    lines += ["", f"{r['prompts_in_both']} prompts in both ({r['only_in_a']} only in A, {r['only_in_b']} only in B); "
              f"mean ROUGE-L between the two answers: {r['mean_answer_similarity']}.", "",
              "## Prompts whose answers changed most", "", "| similarity | prompt | A | B |", "| --- | --- | --- | --- |"]
    for c in r["changed_most"]:
        cell = lambda t: t.replace("|", "\\|").replace("\n", " ")[:80]  # noqa: E731
        lines.append(f"| {c['similarity']:.3f} | {cell(c['prompt'])} | {cell(c['answer_a'])} | {cell(c['answer_b'])} |")
    return "\n".join(lines) + "\n"
