"""Pass rates with their standard errors, and paired differences with a bootstrap interval
and a verdict: the statistics of `synth compare` and of the harness regression checks."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Z95, Z80 = 1.959964, 0.841621  # two-sided 5%, and 80% power
RESAMPLES = 10_000


def rate(scores: list[float]) -> dict[str, float]:
    """Mean of 0/1 (or graded) scores with its standard error."""
    n = len(scores)
    mean = sum(scores) / n
    var = sum((s - mean) ** 2 for s in scores) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "se": math.sqrt(var / n)}


def paired_difference(a: list[float], b: list[float], seed: int = 0) -> dict[str, Any]:
    """B minus A, paired by prompt: the mean, its standard error, a percentile bootstrap 95%
    interval (RESAMPLES resamples of the prompts, seeded), and the prompts a difference of this
    size would need to be detected (None when there is no difference or no variance)."""
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    n = len(d)
    mean = float(d.mean())
    var = float(d.var(ddof=1)) if n > 1 else 0.0
    rng = np.random.default_rng(seed)
    means = np.concatenate([d[rng.integers(0, n, size=(1000, n))].mean(axis=1) for _ in range(RESAMPLES // 1000)])
    low, high = (float(x) for x in np.percentile(means, [2.5, 97.5]))
    needed = math.ceil((Z95 + Z80) ** 2 * var / mean**2) if mean != 0 and var > 0 else None
    return {"n": n, "mean": mean, "se": math.sqrt(var / n) if n else 0.0, "ci95": [low, high],
            "discordant": int((d != 0).sum()), "prompts_needed": needed}


def verdict(diff: dict[str, Any]) -> str:
    """'better', 'worse', or 'no detectable difference at this sample size'."""
    low, high = diff["ci95"]
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no detectable difference at this sample size"


def verdict_line(name_b: str, name_a: str, diff: dict[str, Any], what: str = "student", unit: str = "prompts") -> str:
    """One line: is B better than A (`what`: the student, a metric), with the interval."""
    low, high = diff["ci95"]
    said = verdict(diff)
    line = (f"{name_b} vs {name_a}: {said}: {what} {diff['mean']:+.3f} (95% CI {low:+.3f} to {high:+.3f}, "
            f"paired over {diff['n']} {unit})")
    if said.startswith("no detectable"):
        if diff["discordant"] == 0:
            line += f"; the two score the same on every one of the {unit}"
        elif diff["prompts_needed"]:
            line += f"; a difference of this size needs about {diff['prompts_needed']:,} {unit}"
    return line
