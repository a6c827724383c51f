"""Best-of-n (docs/distillation.md): with `sampling.n > 1`, keep the best
`k` samples of each prompt by a verifier or a judge score, and say how often the teacher
passes (pass@1, pass@n, prompts with no passing sample).

A batch filter: it scores every sample that reaches it, groups them by prompt (the seed's
fields, the template and the chat up to the first user turn), and keeps the `k` with the
highest scores among those that pass (`min_score`); ties go to the lower sample index, then
the lower id, so the choice is deterministic. Samples rejected by filters before it count as
not reaching it: put it last to rank what the other filters kept.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.configtools import help_field
from synth.filters.base import Filter
from synth.filters.verifier import function_source_sha, load_function

BY = ("verifier", "judge")


@dataclass
class BestOfNOptions:
    by: str = help_field("verifier", help="what ranks the samples: verifier (`function`, called with the record: bool, a number, or either with a reason) or judge (scores.judge, from a judge filter before this one: give it a low threshold, so every sample reaches the ranking)")
    function: str | None = help_field(None, help="with by: verifier, 'package.module:function'")
    k: int = help_field(1, help="samples kept per prompt")
    min_score: float | None = help_field(None, help="a sample passes at or above it (default: 1, i.e. true, for a verifier; 7 for a judge); samples that do not pass are never kept")

    def __post_init__(self) -> None:
        if self.by not in BY:
            raise ValueError(f"by: verifier or judge, got {self.by!r}")
        if self.by == "verifier":
            if not self.function:
                raise ValueError("function: by: verifier needs the function that checks a sample ('module:function')")
            load_function(self.function, "function")
        elif self.function:
            raise ValueError("function: only with by: verifier (by: judge reads scores.judge)")
        if self.k < 1:
            raise ValueError(f"k: must be at least 1, got {self.k}")

    @property
    def threshold(self) -> float:
        return self.min_score if self.min_score is not None else (1.0 if self.by == "verifier" else 7.0)


def prompt_key(rec: dict[str, Any]) -> str:
    """Which prompt a sample answers: the same for the n samples of a seed row."""
    first_user = next((i for i, m in enumerate(rec["messages"]) if m["role"] == "user"), len(rec["messages"]) - 1)
    payload = {"seed": (rec.get("seed") or {}).get("fields"), "template": (rec.get("template") or {}).get("sha256"),
               "chat": rec["messages"][: first_user + 1]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]


def score_with(func: Any, rec: dict[str, Any]) -> tuple[float, str | None]:
    """A verifier's verdict as (score, reason): True/False are 1/0; an exception scores 0."""
    try:
        result = func(rec)
    except Exception as exc:  # a verifier's bug fails the sample, with the error as reason
        return 0.0, f"raised {type(exc).__name__}: {exc}"
    value, reason = result if isinstance(result, tuple) else (result, None)
    if isinstance(value, bool) or value is None:
        return (1.0 if value else 0.0), reason
    return float(value), reason


class BestOfN(Filter):
    """With `sampling.n > 1`, keep the best `k` samples of each prompt by a verifier or a judge
    score (ties: the lower sample index, then the lower id); stats.json says how often the
    teacher passes (pass@1, pass@n, prompts with no passing sample). Put it last."""

    name = "best_of_n"
    Options = BestOfNOptions
    batch = True

    @classmethod
    def inputs(cls, o: BestOfNOptions) -> dict[str, Any]:
        return {"source": function_source_sha(o.function)} if o.function else {}

    def setup(self) -> None:
        self.func = load_function(self.options.function, f"{self.where}.function") if self.options.by == "verifier" else None
        self.decisions: dict[str, str | None] = {}
        self.scores: dict[str, float] = {}
        self.summary: dict[str, Any] = {}

    def score(self, rec: dict[str, Any]) -> tuple[float, str | None]:
        if self.func is not None:
            return score_with(self.func, rec)
        judged = (rec.get("scores") or {}).get("judge")
        if judged is None:
            raise ValueError(f"{self.where}: by: judge needs scores.judge on every record: put a judge filter before "
                             f"best_of_n (record {rec['id']} has none)")
        return float(judged), None

    def prepare(self, records: Iterable[dict[str, Any]], out_dir: Path) -> None:
        groups: dict[str, list[tuple[float, int, str, str | None]]] = {}
        for rec in records:
            score, reason = self.score(rec)
            self.scores[rec["id"]] = score
            groups.setdefault(prompt_key(rec), []).append((score, int(rec.get("sample_index") or 0), rec["id"], reason))
        cut, k = self.options.threshold, self.options.k
        passing_share, any_pass = [], 0
        for samples in groups.values():
            samples.sort(key=lambda s: (-s[0], s[1], s[2]))
            passed = [s for s in samples if s[0] >= cut]
            passing_share.append(len(passed) / len(samples))
            any_pass += bool(passed)
            best = samples[0][0]
            for rank, (score, _, rid, reason) in enumerate(samples):
                if score < cut:
                    self.decisions[rid] = (f"score {score:g} below min_score {cut:g}" + (f": {reason}" if reason else "")
                                           + ("" if passed else f" (no sample of its {len(samples)} passes)"))
                elif rank >= k:
                    self.decisions[rid] = f"not among the best {k} of the {len(samples)} samples of its prompt (score {score:g}, best {best:g})"
                else:
                    self.decisions[rid] = None
        n = len(groups)
        self.summary = {"by": self.options.by, "k": k, "min_score": cut, "prompts": n,
                        "samples": sum(len(g) for g in groups.values()),
                        "pass@1": round(sum(passing_share) / n, 4) if n else None,
                        "pass@n": round(any_pass / n, 4) if n else None,
                        "prompts_without_pass": n - any_pass}

    def check(self, rec: dict[str, Any]) -> str | None:
        # The score goes on kept and rejected samples alike (`synth pairs` reads both).
        rec["scores"] = {**(rec.get("scores") or {}), self.options.by: self.scores[rec["id"]]}
        return self.decisions[rec["id"]]
