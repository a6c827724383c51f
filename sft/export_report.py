"""How an evaluation of exported files reads: the lines `sft export` and `synth run` print and
the table eval_report.md gains (sft.export_eval writes the numbers, STUDENT/export/eval.json)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from synth.runtime import read_json


def human_size(n: float) -> str:
    """Bytes as B, KB, MB or GB (powers of 1000, as file sizes are shown)."""
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def disk_size(path: Path) -> int:
    """Bytes on disk of a file, or of every file under a directory."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def paired_change(after: list[float], before: list[float]) -> tuple[float, float]:
    """Mean of after - before over paired items, and its standard error."""
    d = [a - b for a, b in zip(after, before, strict=True)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / n)


def export_summary(report: dict[str, Any]) -> str:
    """One line: each export's score and speed."""
    parts = [f"{r['quant']} {r['score']:.3f} at {r['tokens_per_s']} tok/s ({_engine(r)})" for r in report["exports"]]
    return f"{report['metric']} on {report['examples']} held-out prompts, as served: " + ", ".join(parts)


def _engine(row: dict[str, Any]) -> str:
    return row.get("engine", "llama-server")  # reports written before vLLM exports have no engine


def export_lines(report: dict[str, Any]) -> list[str]:
    """What `sft export` prints after the evaluation."""
    base = report["student_score"]
    lines = [f"exported student as served, {report['examples']} held-out prompts ({report['metric']}):"]
    if base is not None:
        lines.append(f"  trained student ({report['student_engine']}): {base:.3f}")
    for r in report["exports"]:
        change = f", change {r['change']:+.3f} ± {r['change_se']:.3f}" if "change" in r else ""
        lines.append(f"  {r['file']}: {human_size(r['bytes'])} on disk, {r['tokens_per_s']} tokens/s under {_engine(r)}, "
                     f"{r['score']:.3f}{change}")
    return lines


def export_markdown(report: dict[str, Any]) -> list[str]:
    """The table eval_report.md gains."""
    lines = ["", "## The exported student, as served", "",
             f"{report['examples']} held-out prompts, greedy, sent to the engine that serves each artifact: llama-server "
             f"({report['concurrency']} in flight) for a GGUF file, vLLM (all at once, bfloat16) for a checkpoint; "
             f"score: {report['metric']}; change: vs the trained student ({report['student_engine']}), paired by prompt, "
             "± one standard error.", "",
             "| artifact | engine | size | tokens/s | score | change vs student |", "| --- | --- | --- | --- | --- | --- |"]
    if report["student_score"] is not None:
        lines.append(f"| trained student | {report['student_engine']} | | | {report['student_score']:.3f} | |")
    for r in report["exports"]:
        change = f"{r['change']:+.3f} ± {r['change_se']:.3f}" if "change" in r else ""
        lines.append(f"| {r['file']} | {_engine(r)} | {human_size(r['bytes'])} | {r['tokens_per_s']} | {r['score']:.3f} | "
                     f"{change} |")
    return lines


def read_export_report(path: Path) -> dict[str, Any] | None:
    """STUDENT/export/eval.json, or None."""
    data = read_json(path)
    return data if isinstance(data, dict) and "exports" in data else None


