"""A `math` verifier: is the answer's final mathematical result the reference's? By Hugging
Face's math-verify (the checker open-r1 and lighteval use): both sides are parsed (LaTeX,
\\boxed{...}, plain expressions; the answer's boxed or last result), then compared as sympy
expressions (1/2 = 0.5 = \\frac{1}{2}, sets, intervals, equations' right-hand sides).

The reference is the seed's `answer` field (or `solution`: a worked solution whose boxed
result counts). Used as a `verifier`, a `best_of_n` ranker or `sft.eval_verifier`:

    function: synth.mathcheck:correct

math-verify's own timeouts use SIGALRM, which works only in the main thread; stillhouse calls
verifiers from worker threads too, so they are off here (a pathological expression is bounded
by the curation's own process, not by the check).
"""

from __future__ import annotations

from typing import Any

REFERENCE_FIELDS = ("answer", "solution")


def _answer(rec: dict[str, Any]) -> str:
    last = rec["messages"][-1]
    return last["content"] if last["role"] == "assistant" and isinstance(last["content"], str) else ""


def reference(rec: dict[str, Any]) -> str | None:
    fields = (rec.get("seed") or {}).get("fields") or {}
    for name in REFERENCE_FIELDS:
        if fields.get(name) not in (None, ""):
            return str(fields[name])
    return None


def correct(rec: dict[str, Any]) -> tuple[bool, str | None]:
    """(True, None) when the answer's result equals the reference's, else (False, why)."""
    from math_verify import parse, verify

    ref = reference(rec)
    if ref is None:
        return False, f"the seed has no reference result (a field named {' or '.join(REFERENCE_FIELDS)})"
    # a bare reference ("1/2") parses as an expression; wrapped in $...$ it also parses as LaTeX
    gold = parse(ref if "$" in ref or "\\boxed" in ref else f"${ref}$", parsing_timeout=None)
    if not gold:
        return False, f"the reference {ref[:60]!r} is not a mathematical result math-verify can read"
    got = parse(_answer(rec), parsing_timeout=None)
    if not got:
        return False, "no mathematical result found in the answer"
    if verify(gold, got, timeout_seconds=None):
        return True, None
    return False, f"expected {gold[-1]}, got {got[-1]}"
