"""Check a code answer by running it with its tests, in the sandbox (synth.sandbox).

The code is the answer's fenced block (```python ... ```; which block, and which language, are
options); the tests are the seed's `tests` field: a list of snippets (each usually one
`assert`), or one text with a test per line. A harness loads the code, then runs each test
in its own copy of the code's namespace and reports, per test, pass or the error; the code
failing to load fails every test, with the error. A run killed by a limit (CPU or wall time,
output, memory) fails the test it was in and the ones after it.

Used three ways: the `code_exec` filter (keeps the records whose tests pass, or ranks them),
and two verifier functions for `verifier`, `best_of_n` and `sft.eval_verifier`:
`synth.codeexec:passes` (True, or False with the failing test and the end of its error) and
`synth.codeexec:tests_passed` (the share of tests passed, a `best_of_n` score).

The harness marks its report with a random token the code cannot read (it is removed before
the code runs); code written to fool its tests on purpose (inspecting the harness's frames)
is out of scope: this checks a teacher's answers, it does not grade an adversary.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from synth import sandbox

FENCE = re.compile(r"```([\w+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)

HARNESS = r'''
import json, os, sys, traceback
token = open("token").read(); os.remove("token")
tests = json.load(open("tests.json"))
def say(obj):
    sys.stdout.write("\n" + token + json.dumps(obj) + "\n"); sys.stdout.flush()
ns = {"__name__": "solution"}
try:
    exec(compile(open("solution.py").read(), "solution.py", "exec"), ns)
except BaseException as e:
    say({"load": "".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next))[-800:]})
    raise SystemExit(0)
for i, test in enumerate(tests):
    say({"start": i})
    try:
        exec(compile(test, "test", "exec"), dict(ns))
        say({"test": i, "error": None})
    except BaseException as e:
        say({"test": i, "error": "".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next))[-800:]})
'''


@dataclass
class Report:
    """What running a piece of code with its tests gave."""

    total: int
    passed: int
    failures: list[tuple[str, str]] = field(default_factory=list)  # (test, the end of its error)

    @property
    def score(self) -> float:
        return self.passed / self.total if self.total else 0.0

    def reason(self) -> str | None:
        """None when every test passed, else the first failing test and the last lines of its error."""
        if self.total and self.passed == self.total:
            return None
        if not self.failures:
            return "no tests to run"
        test, error = self.failures[0]
        tail = " | ".join(line.strip() for line in error.strip().splitlines()[-3:])
        return f"{self.passed}/{self.total} tests passed; failed: {test.strip()[:120]!r}: {tail[:300]}"


def extract_code(text: str, language: str = "python", block: str = "last") -> str | None:
    """The code of a fenced block in `text` tagged `language` (or untagged); `block`: first,
    last or all (joined). None when there is none."""
    blocks = [body for lang, body in FENCE.findall(text) if lang.lower() in (language.lower(), "")]
    if not blocks:
        return None
    return {"first": blocks[0], "last": blocks[-1]}.get(block, "\n\n".join(blocks))


def split_tests(value: Any) -> list[str]:
    """The tests of a seed's field: a list of snippets, or one text with a test per line."""
    if isinstance(value, list):
        return [str(t) for t in value if str(t).strip()]
    if isinstance(value, str):
        return [line for line in value.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return []


def run_tests(code: str, tests: list[str], limits: sandbox.Limits | None = None) -> Report:
    """Run `code` with `tests` in the sandbox."""
    token = f"@@{secrets.token_hex(8)}@@"
    out = sandbox.run([sandbox.PYTHON, "harness.py"], {"harness.py": HARNESS, "solution.py": code, "token": token,
                                                       "tests.json": json.dumps(tests)}, limits)
    events = [json.loads(line[len(token):]) for line in out.stdout.split("\n") if line.startswith(token)]
    failures, results = [], {}
    for event in events:
        if "load" in event:
            return Report(len(tests), 0, [("(loading the code)", event["load"])])
        if "test" in event:
            results[event["test"]] = event["error"]
    started = [e["start"] for e in events if "start" in e]
    for i, test in enumerate(tests):
        if i in results and results[i] is not None:
            failures.append((test, results[i]))
        elif i not in results:
            why = out.reason or (f"exit {out.returncode}" if out.returncode else "the code ended the process")
            where = "killed in this test" if started and started[-1] == i else "not run"
            failures.append((test, f"{where}: {why}\n{out.stderr.strip()[-300:]}"))
    return Report(len(tests), sum(1 for e in results.values() if e is None), failures)


def check_record(rec: dict[str, Any], tests_field: str = "tests", language: str = "python", block: str = "last",
                 limits: sandbox.Limits | None = None) -> Report:
    """Run a record's answer with its seed's tests."""
    fields = (rec.get("seed") or {}).get("fields") or {}
    tests = split_tests(fields.get(tests_field))
    if not tests:
        return Report(0, 0, [("(no tests)", f"the seed has no '{tests_field}' field with tests")])
    last = rec["messages"][-1]
    code = extract_code(last["content"] if last["role"] == "assistant" else "", language, block)
    if code is None:
        return Report(len(tests), 0, [("(no code)", f"the answer has no ```{language} block")])
    return run_tests(code, tests, limits)


def passes(rec: dict[str, Any]) -> tuple[bool, str | None]:
    """A verifier (`module:function`): True when every test of the seed passes."""
    report = check_record(rec)
    return report.reason() is None, report.reason()


def tests_passed(rec: dict[str, Any]) -> tuple[float, str | None]:
    """A best_of_n score: the share of the seed's tests the answer passes."""
    report = check_record(rec)
    return report.score, report.reason()
