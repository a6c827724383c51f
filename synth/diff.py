"""`synth diff A B`: compare two dataset versions (e.g. the same recipe, two teachers).

Matches records by prompt (the rendered chat without the answer) and reports, per version
and per prompt: answer lengths, refusal rate, curation rejection rate, and the prompts whose
answers changed most (lowest ROUGE-L between the two teachers' answers). Writes diff.json
and diff.md (default: into B).
"""

from __future__ import annotations

import hashlib
import json
import statistics
from pathlib import Path
from typing import Any

from synth.filters import answer_text, prompt_text
from synth.filters.quality import Refusal
from synth.rawlog import iter_records
from synth.textmetrics import rouge_l


def _prompt_key(rec: dict[str, Any]) -> str:
    chat = json.dumps(rec["messages"][:-1], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(chat.encode()).hexdigest()[:16]


def _load(d: Path) -> dict[str, Any]:
    raw = d / "raw.jsonl"
    if not raw.exists():
        raise ValueError(f"synth diff: {d} has no raw.jsonl; give two output dirs of synth generate")
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for rec in iter_records(raw):
        by_prompt.setdefault(_prompt_key(rec), []).append(rec)
    rejected = {r["id"] for r in iter_records(d / "rejected.jsonl")} if (d / "rejected.jsonl").exists() else None
    manifest = json.loads((d / "manifest.json").read_text()) if (d / "manifest.json").exists() else {}
    return {"dir": str(d), "by_prompt": by_prompt, "rejected": rejected, "teacher": manifest.get("teacher", {})}


def _summary(v: dict[str, Any], refusal: Refusal) -> dict[str, Any]:
    recs = [r for rs in v["by_prompt"].values() for r in rs]
    lengths = [len(answer_text(r)) for r in recs]
    out = {
        "dir": v["dir"],
        "teacher": {k: v["teacher"].get(k) for k in ("backend", "model", "base_url", "fingerprint")},
        "records": len(recs),
        "prompts": len(v["by_prompt"]),
        "answer_chars_mean": round(statistics.mean(lengths), 1) if lengths else 0,
        "answer_chars_median": statistics.median(lengths) if lengths else 0,
        "refusal_rate": round(sum(refusal(r) is not None for r in recs) / max(len(recs), 1), 4),
    }
    if v["rejected"] is not None:
        out["rejection_rate"] = round(sum(r["id"] in v["rejected"] for r in recs) / max(len(recs), 1), 4)
    return out


def run_diff(a_dir: str | Path, b_dir: str | Path, out_dir: str | Path | None = None, top: int = 10) -> dict[str, Any]:
    a, b = _load(Path(a_dir)), _load(Path(b_dir))
    refusal = Refusal({}, "diff")
    common = sorted(set(a["by_prompt"]) & set(b["by_prompt"]))
    changes = []
    for key in common:
        ra, rb = a["by_prompt"][key][0], b["by_prompt"][key][0]  # sample 0 of each (ids sort stably)
        ans_a, ans_b = answer_text(ra), answer_text(rb)
        changes.append({
            "prompt": prompt_text(ra)[:200],
            "similarity": round(rouge_l(ans_a, ans_b), 4),
            "chars_a": len(ans_a),
            "chars_b": len(ans_b),
            "answer_a": ans_a[:200],
            "answer_b": ans_b[:200],
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
    target = Path(out_dir) if out_dir else Path(b_dir)
    target.mkdir(parents=True, exist_ok=True)
    (target / "diff.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (target / "diff.md").write_text(_markdown(report), encoding="utf-8")
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
    lines += ["", f"{r['prompts_in_both']} prompts in both ({r['only_in_a']} only in A, {r['only_in_b']} only in B); "
              f"mean ROUGE-L between the two answers: {r['mean_answer_similarity']}.", "",
              "## Prompts whose answers changed most", "", "| similarity | prompt | A | B |", "| --- | --- | --- | --- |"]
    for c in r["changed_most"]:
        cell = lambda t: t.replace("|", "\\|").replace("\n", " ")[:80]  # noqa: E731
        lines.append(f"| {c['similarity']:.3f} | {cell(c['prompt'])} | {cell(c['answer_a'])} | {cell(c['answer_b'])} |")
    return "\n".join(lines) + "\n"
