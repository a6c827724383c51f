"""`synth compare A B [...]`: the students of several dataset versions on one held-out set.

Each `sft eval` scores its student against its own teacher on its own split, so two versions'
reports have no common yardstick. This stage puts them on one:

- the prompts: those held out by every version (the intersection of their eval.jsonl, by the
  rendered prompt; the split hashes the prompt's text, so versions of one recipe share it) and
  in none of their train.jsonl; or a JSONL the user gives (`--eval FILE`), with the same
  exclusion;
- the measure: one task check (`sft.eval_verifier` of the versions, which must agree, or
  `--verifier`), applied to each version's student (greedy, sft.generation) and to each
  version's teacher answer for the same prompt (from its eval.jsonl or raw.jsonl); and/or a
  pairwise judge (`sft.eval_judge` of the versions, or `--judge JUDGE.yaml`) asked, prompt by
  prompt, which of two students' answers is better: each version's against the first's, shown
  in a seeded random order (against position bias); identical answers are a tie without a
  call;
- the statistics: pass rates with standard errors, and for each version against the first,
  the paired difference (by prompt) with its standard error and a paired bootstrap 95%
  interval (for the judge: +1 where it prefers the version, -1 where it prefers the first, 0
  for a tie, so the mean is the win rate minus the loss rate); the verdict is "better" or
  "worse" when the interval excludes 0, else "no detectable difference at this sample size",
  with the prompts a difference of the observed size would need (80% power, two-sided 5%).

Writes compare.json and compare.md (default: into the last version). The students' answers
are cached in compare_answers.jsonl (by weights, prompt, length and engine), the judge's in
compare_judge.jsonl (by request id), and the stage is keyed: a rerun with nothing changed
generates nothing and calls no judge.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft.answers import cached_answers
from sft.data import read_conversations, verifier_record
from sft.generation import engine_for
from sft.stats import paired_difference, rate, verdict, verdict_line
from synth.config import Recipe
from synth.configtools import from_dict, load_yaml
from synth.filters.verifier import function_source_sha, load_function
from synth.fingerprint import fingerprint_dir
from synth.judging import PAIRWISE, PairwiseJudge, judge_preference, template_digest
from synth.layout import Layout
from synth.plan import Plan, resolve
from synth.rawlog import iter_records
from synth.runtime import canonical_json, file_sha256
from synth.stage import Stage, StageResult
from synth.versions import recorded_teacher

logger = logging.getLogger(__name__)

# ---- the versions -----------------------------------------------------------------------


@dataclass
class Version:
    """One output directory: its plan (from its config.yaml), teacher and student."""

    dir: Path
    plan: Plan

    @property
    def name(self) -> str:
        return str(self.dir)

    @property
    def teacher_model(self) -> str:
        return str(self.plan.teacher.get("model"))


def load_version(d: Path) -> Version:
    """The version in `d`, planned from the recipe it was generated with (its config.yaml)."""
    where = f"synth compare: {d}"
    if not d.is_dir():
        raise ValueError(f"{where} is not a directory; give output dirs of `synth run` (e.g. runs/dates runs/dates.v2)")
    config, teacher = d / "config.yaml", recorded_teacher(d)
    if not config.is_file() or teacher is None:
        raise ValueError(f"{where} has no config.yaml or teacher.json (written by `synth generate`); "
                         "give an output dir that `synth run` or `synth generate` wrote")
    data = load_yaml(config)
    data["output"]["dir"] = str(d)  # the directory as given, wherever the run was
    for section in ("curate", "card", "expand"):  # not needed to compare; their files may be gone
        data.pop(section, None)
    try:
        plan = resolve(from_dict(Recipe, data), teacher, versioned=False)
    except ValueError as exc:
        raise ValueError(f"{where}/config.yaml: {exc}") from None
    if plan.recipe.sft is None:
        raise ValueError(f"{where} has no sft section in its config.yaml: no student to compare; "
                         "train one with `sft train` on a recipe with an sft section")
    files = plan.student.files
    if not files.trained_marker.is_file():
        raise ValueError(f"{where}: its student is not trained yet (no {files.trained_marker}); "
                         f"run `sft train` (or `synth run`) with its recipe first")
    return Version(d, plan)


def _key(prompt: list[dict[str, Any]]) -> str:
    return hashlib.sha256(canonical_json([{"role": m["role"], "content": m["content"]} for m in prompt]).encode()).hexdigest()[:32]


def _split_prompts(path: Path, field: str) -> dict[str, tuple[list[dict[str, Any]], str]]:
    """prompt key -> (prompt, its answer, its seed row or None) of a JSONL of chats that end
    with an answer (a self-repair record as its first prompt and last answer)."""
    out = {}
    for chat in read_conversations(path, field, repairs="final"):
        turns = list(chat)
        out.setdefault(_key(turns[:-1]), (turns[:-1], turns[-1]["content"], chat.seed))
    return out


def _prompt_keys(path: Path) -> set[str]:
    """The prompts of a file of records (train.jsonl), fast: no validation beyond JSON."""
    keys = set()
    if path.is_file():
        for rec in iter_records(path):
            keys.add(_key(rec["messages"][:-1]))
    return keys


@dataclass
class HeldOut:
    """The prompts every version is scored on, and each version's teacher answer to them."""

    keys: list[str]
    prompts: list[list[dict[str, Any]]]
    seeds: list[dict[str, Any] | None]  # each prompt's seed row, for a check that reads it (synth.codeexec:passes)
    source: str
    excluded_trained: int
    teacher_answers: list[list[str | None]]  # per version, per prompt


def held_out_set(versions: list[Version], eval_file: Path | None, limit: int | None) -> HeldOut:
    """The common held-out prompts (see the module docstring), in a stable order."""
    evals = {}
    for v in versions:
        path = v.plan.sft.eval_path(v.plan.layout)  # sft.eval, or the curated eval.jsonl
        if path is not None and path.is_file():
            evals[v.name] = _split_prompts(path, f"synth compare: {v.name}: {path}")
        elif eval_file is None:
            raise ValueError(f"synth compare: {v.name} has no eval.jsonl (no held-out split: curate.eval_fraction "
                             "is 0); give --eval FILE with prompts none of the versions trained on")
    if eval_file is not None:
        given = _split_prompts(eval_file, f"synth compare: --eval {eval_file}")  # the answers are not a version's
        candidates, source = given, f"{eval_file} ({len(given)} prompts)"
    else:
        common = set.intersection(*(set(e) for e in evals.values()))
        if not common:
            names = ", ".join(v.name for v in versions)
            raise ValueError(f"synth compare: {names} have no held-out prompt in common (different tasks, seeds or "
                             "curate.eval_seed); give --eval FILE with prompts for all of them")
        candidates = {k: evals[versions[0].name][k] for k in common}
        source = "the held-out prompts of every version (" + ", ".join(f"{len(e)} in {n}" for n, e in evals.items()) + ")"
    trained = set().union(*(_prompt_keys(v.plan.sft.train_path(v.plan.layout)) for v in versions))
    keys = sorted(k for k in candidates if k not in trained)
    excluded = len(candidates) - len(keys)
    if not keys:
        raise ValueError(f"synth compare: every prompt of {source} is in a version's train.jsonl; "
                         "give --eval FILE with prompts none of them trained on")
    keys = keys[:limit] if limit else keys
    answers = []
    for v in versions:
        mine = {k: ref for k, (_, ref, _) in evals.get(v.name, {}).items()}
        missing = [k for k in keys if mine.get(k) is None]
        if missing and v.plan.layout.raw.is_file():
            wanted = set(missing)
            for rec in iter_records(v.plan.layout.raw):
                k = _key(rec["messages"][:-1])
                if k in wanted and rec.get("sample_index", 0) == 0:
                    mine[k] = rec["messages"][-1]["content"]
        answers.append([mine.get(k) for k in keys])
    return HeldOut(keys, [candidates[k][0] for k in keys], [candidates[k][2] for k in keys], source, excluded, answers)


# ---- the stage --------------------------------------------------------------------------


class Compare(Stage):
    """The students of `versions` on one held-out set (keyed; answers cached)."""

    name = "compare"

    def __init__(self, versions: list[Version], out: Path, verifier: str | None = None, eval_file: Path | None = None,
                 limit: int | None = None, max_new_tokens: int | None = None, progress: bool = True,
                 judge: str | None = None):
        super().__init__(versions[-1].plan, progress)
        if len(versions) < 2:
            raise ValueError("synth compare: give at least two output dirs (e.g. runs/dates runs/dates.v2)")
        self.versions, self.out = versions, out
        self.verifier = verifier or _common(versions, "eval_verifier", "--verifier module:function")
        self.judge = judge or _common(versions, "eval_judge", "--judge JUDGE.yaml")
        if self.verifier is None and self.judge is None:
            raise ValueError("synth compare: no version has sft.eval_verifier or sft.eval_judge; give --verifier "
                             "module:function (a task check that tells a right answer from a wrong one) or --judge "
                             "JUDGE.yaml (a judge model that says which of two answers is better)")
        if self.verifier is not None:
            load_function(self.verifier, "synth compare: --verifier")
        if self.judge is not None:
            if not Path(self.judge).is_file():
                raise ValueError(f"synth compare: --judge {self.judge} does not exist; give a JUDGE.yaml with a teacher "
                                 "block (see docs/guides/new-teacher.md)")
            self.judge_config = from_dict(PairwiseJudge, load_yaml(self.judge), prefix="judge")
        self.eval_file, self.limit = eval_file, limit
        self.max_new = max_new_tokens or max(v.plan.sft.eval_max_new_tokens for v in versions)
        self.held_out = held_out_set(versions, eval_file, limit)

    def stamp(self) -> Path:
        return Layout(self.out).stamp("compare")

    def outputs(self) -> tuple[Path, ...]:
        return (Layout(self.out).compare_json, Layout(self.out).compare)

    def key(self) -> dict[str, Any]:
        return {
            "versions": [{"dir": v.name, "weights": fingerprint_dir(v.plan.student.files.trained),
                          "student": v.plan.sft.model, "engine": engine_for(v.plan.sft)} for v in self.versions],
            "prompts": hashlib.sha256("".join(self.held_out.keys).encode()).hexdigest(),
            "teacher_answers": hashlib.sha256(canonical_json(self.held_out.teacher_answers).encode()).hexdigest(),
            "verifier": self.verifier and {"function": self.verifier, "source": function_source_sha(self.verifier)},
            "judge": self.judge and {"file": file_sha256(Path(self.judge)),
                                     "template": template_digest(self.judge_config, PAIRWISE)},
            "max_new_tokens": self.max_new,
        }

    def work(self, key: dict[str, Any] | None) -> StageResult:
        held = self.held_out
        check = load_function(self.verifier, "synth compare: --verifier") if self.verifier else None
        rows, answers = [], []
        for v, refs in zip(self.versions, held.teacher_answers, strict=True):
            answers.append(self._answers(v))
            row: dict[str, Any] = {"dir": v.name, "teacher_model": v.teacher_model}
            if check is not None:
                row["student_scores"] = [_score(check, self.verifier, p, s, a, f"{v.name}'s student")
                                         for p, s, a in zip(held.prompts, held.seeds, answers[-1], strict=True)]
                row["teacher_scores"] = [None if r is None else _score(check, self.verifier, p, s, r, f"{v.name}'s teacher")
                                         for p, s, r in zip(held.prompts, held.seeds, refs, strict=True)]
            rows.append(row)
        report = _report(rows, held, self.verifier, self.max_new)
        if self.judge is not None:
            report["judge"] = self._judged(answers)
            report["verdicts"] += [c["line"] for c in report["judge"]["comparisons"]]
        out = Layout(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        out.compare_json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        out.compare.write_text(markdown(report), encoding="utf-8")
        result = self.result(report["verdicts"][-1], lines(report, self.out), report)
        # judge calls that failed: the stage is not complete, and the next run asks them again
        result.complete = not any(c["failed"] for c in report.get("judge", {}).get("comparisons", []))
        return result

    def _judged(self, answers: list[list[str]]) -> dict[str, Any]:
        """The judge's preference between each version's student and the first's, prompt by
        prompt (identical answers: a tie, not asked), with the paired statistics."""
        base, prompts = answers[0], self.held_out.prompts
        comparisons = []
        for v, mine in zip(self.versions[1:], answers[1:], strict=True):
            differ = [i for i, (a, b) in enumerate(zip(base, mine, strict=True)) if a != b]
            asked = differ[: self.judge_config.limit]
            j = judge_preference([(prompts[i][-1]["content"], base[i], mine[i]) for i in asked], self.judge,
                                 Layout(self.out).compare_judge)
            outcome = {i: "tie" for i in set(range(len(base))) - set(differ)}  # identical answers
            outcome |= dict(zip(asked, j["winners"], strict=True))  # None: failed or no verdict
            won = {"b": 1.0, "tie": 0.5, "a": 0.0}
            scored = sorted(i for i, w in outcome.items() if w is not None)
            b_scores = [won[outcome[i]] for i in scored]
            diff = paired_difference([1 - s for s in b_scores], b_scores) if scored else None
            undecided = "no verdict: the judge decided no prompt"
            comparisons.append({
                "a": self.versions[0].name, "b": v.name, "identical": len(base) - len(differ), "judged": len(asked),
                "not_judged": len(differ) - len(asked), "a_wins": j["a"], "b_wins": j["b"], "ties": j["tie"],
                "unparseable": j["unparseable"], "failed": j["failed"], "calls_sent": j["calls_sent"],
                "preference": diff, "verdict": verdict(diff) if diff else undecided,
                "line": (verdict_line(v.name, self.versions[0].name, diff, what="judge preference") if diff
                         else f"{v.name} vs {self.versions[0].name}: {undecided}"),
                "per_prompt": [outcome.get(i) for i in range(len(base))]})
        return {"file": self.judge, "limit": self.judge_config.limit, "comparisons": comparisons}

    def _answers(self, v: Version) -> list[str]:
        """The version's student's greedy answers to the held-out prompts, through the cache."""
        return cached_answers(v.plan.sft, v.plan.student.files, self.held_out.prompts, self.max_new,
                              Layout(self.out).compare_answers, f"synth compare: {v.name}'s student", dir=v.name)


def _common(versions: list[Version], key: str, option: str) -> str | None:
    """The versions' sft.`key` (eval_verifier, eval_judge): None when no version sets it; an
    error when they differ (then `option` decides for all of them)."""
    found = {v.name: getattr(v.plan.sft, key) for v in versions}
    names = set(found.values()) - {None}
    if len(names) > 1 or (names and None in found.values()):
        listed = ", ".join(f"{d}: {f}" for d, f in found.items())
        raise ValueError(f"synth compare: the versions' sft.{key} differ ({listed}); give {option} to score all of "
                         "them the same way")
    return names.pop() if names else None


def _score(check: Any, spec: str, prompt: list[dict[str, Any]], seed: dict[str, Any] | None, answer: str, whose: str) -> float:
    record = verifier_record(prompt, answer, seed)
    try:
        result = check(record)
    except Exception as exc:
        raise ValueError(f"synth compare: the check {spec} raised {type(exc).__name__}: {exc} on {whose} answer "
                         f"{answer[:80]!r} to {prompt[-1]['content'][:80]!r}; a wrong answer should return False "
                         "(or (False, reason)), not raise: fix the check") from None
    ok = result[0] if isinstance(result, tuple) else result
    return float(ok) if not isinstance(ok, bool) else (1.0 if ok else 0.0)


def _report(rows: list[dict[str, Any]], held: HeldOut, verifier: str | None, max_new: int) -> dict[str, Any]:
    """The versions' rates and paired differences under the task check (none without one)."""
    comparisons, verdicts = [], []
    if verifier is not None:
        base = rows[0]
        for r in rows:
            known = [s for s in r["teacher_scores"] if s is not None]
            r["student"] = rate(r["student_scores"])
            r["teacher"] = rate(known) if known else None
            r["teacher_answers_found"] = len(known)
            r["student_over_teacher"] = (r["student"]["mean"] / r["teacher"]["mean"]
                                         if r["teacher"] and r["teacher"]["mean"] else None)
        for r in rows[1:]:
            diff = paired_difference(base["student_scores"], r["student_scores"])
            both = [(a, b) for a, b in zip(base["teacher_scores"], r["teacher_scores"], strict=True)
                    if a is not None and b is not None]
            teacher_diff = paired_difference([a for a, _ in both], [b for _, b in both]) if both else None
            comparisons.append({"a": base["dir"], "b": r["dir"], "student": diff, "verdict": verdict(diff),
                                "teacher": teacher_diff})
            verdicts.append(verdict_line(r["dir"], base["dir"], diff))
    return {"prompts": len(held.keys), "source": held.source, "excluded_as_trained": held.excluded_trained,
            "verifier": verifier, "max_new_tokens": max_new,
            "versions": [{k: v for k, v in r.items() if not k.endswith("_scores")} for r in rows],
            "prompt_texts": [p[-1]["content"] for p in held.prompts],  # the order of every per-prompt list
            "per_prompt": {r["dir"]: {"student": r["student_scores"], "teacher": r["teacher_scores"]}
                           for r in rows if "student_scores" in r},
            "comparisons": comparisons, "verdicts": verdicts}


def _pm(r: dict[str, float] | None) -> str:
    return "n/a" if r is None else f"{r['mean']:.3f} ± {r['se']:.3f}"


def _judge_counts(c: dict[str, Any]) -> str:
    return (f"{c['b']} preferred on {c['b_wins']}, {c['a']} on {c['a_wins']}, ties {c['ties']}, identical answers "
            f"{c['identical']}" + "".join(f", {k.replace('_', ' ')} {c[k]}" for k in ("unparseable", "failed", "not_judged")
                                         if c[k]) + (" (a rerun asks the failed calls again)" if c["failed"] else ""))


def lines(report: dict[str, Any], out: Path) -> list[str]:
    """What `synth compare` prints."""
    measures = ([f"check {report['verifier']}"] if report["verifier"] else []) + (
        [f"judge {report['judge']['file']}"] if report.get("judge") else [])
    out_lines = [f"synth compare: {report['prompts']} held-out prompts, from {report['source']}"
                 + (f", {report['excluded_as_trained']} left out as some version trained on them"
                    if report["excluded_as_trained"] else "")
                 + "; " + ", ".join(measures)]
    if report["verifier"]:
        for v in report["versions"]:
            ratio = f", student/teacher {v['student_over_teacher']:.2f}" if v["student_over_teacher"] is not None else ""
            out_lines.append(f"  {v['dir']} (teacher {v['teacher_model']}): teacher {_pm(v['teacher'])}, "
                             f"student {_pm(v['student'])}{ratio}")
    for c in report.get("judge", {}).get("comparisons", []):
        out_lines.append(f"  judge: {_judge_counts(c)}")
    out_lines += [f"  {line}" for line in report["verdicts"]]
    out_lines.append(f"  report: {out / 'compare.md'}, compare.json")
    return out_lines


def markdown(report: dict[str, Any]) -> str:
    """compare.md."""
    md = ["# Students compared", "",
          f"{report['prompts']} held-out prompts, from {report['source']}; "
          f"{report['excluded_as_trained']} left out because a version trained on them. Student answers greedy, at "
          f"most {report['max_new_tokens']} new tokens."]
    if report["verifier"]:
        md += ["", f"Every answer scored by `{report['verifier']}`. Rates with their standard error.", "",
               "| version | teacher | teacher pass rate | student pass rate | student / teacher |",
               "| --- | --- | --- | --- | --- |"]
        for v in report["versions"]:
            ratio = f"{v['student_over_teacher']:.2f}" if v["student_over_teacher"] is not None else "n/a"
            md.append(f"| `{v['dir']}` | {v['teacher_model']} | {_pm(v['teacher'])} | {_pm(v['student'])} | {ratio} |")
        md += ["", "## Paired differences (each version minus the first, prompt by prompt)", "",
               "| versions | student change | 95% CI (paired bootstrap) | prompts where they differ | teacher change | verdict |",
               "| --- | --- | --- | --- | --- | --- |"]
        for c in report["comparisons"]:
            s, t = c["student"], c["teacher"]
            teacher = f"{t['mean']:+.3f} ± {t['se']:.3f}" if t else "n/a"
            md.append(f"| `{c['b']}` vs `{c['a']}` | {s['mean']:+.3f} ± {s['se']:.3f} | {s['ci95'][0]:+.3f} to "
                      f"{s['ci95'][1]:+.3f} | {s['discordant']} | {teacher} | {c['verdict']} |")
    if report.get("judge"):
        j = report["judge"]
        md += ["", "## The judge's preference (each version's student against the first's)", "",
               f"`{j['file']}`, asked which of two answers is better, in a seeded random order; identical answers "
               f"count as a tie without a call; at most {j['limit']} prompts judged. Preference: the share of prompts "
               "where it prefers the version minus the share where it prefers the first.", "",
               "| versions | version preferred | first preferred | ties | identical | no verdict | preference | "
               "95% CI (paired bootstrap) | verdict |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for c in j["comparisons"]:
            p = c["preference"]
            pref, ci = (f"{p['mean']:+.3f} ± {p['se']:.3f}", f"{p['ci95'][0]:+.3f} to {p['ci95'][1]:+.3f}") if p else ("n/a", "n/a")
            md.append(f"| `{c['b']}` vs `{c['a']}` | {c['b_wins']} | {c['a_wins']} | {c['ties']} | {c['identical']} | "
                      f"{c['unparseable'] + c['failed']} | {pref} | {ci} | {c['verdict']} |")
    md += ["", *[f"- {line}" for line in report["verdicts"]]]
    return "\n".join(md) + "\n"


def run_compare(dirs: list[str | Path], out: str | Path | None = None, *, verifier: str | None = None,
                eval_file: str | Path | None = None, limit: int | None = None, max_new_tokens: int | None = None,
                force: bool = False, judge: str | Path | None = None) -> StageResult:
    """Compare the students of the output dirs `dirs` (the first is the baseline)."""
    versions = [load_version(Path(d)) for d in dirs]
    if len({v.dir.resolve() for v in versions}) < len(versions):
        raise ValueError("synth compare: the same output dir is given twice")
    if eval_file is not None and not Path(eval_file).is_file():
        raise ValueError(f"synth compare: --eval {eval_file} does not exist; give a JSONL of chats (messages)")
    stage = Compare(versions, Path(out) if out else versions[-1].dir, verifier, Path(eval_file) if eval_file else None,
                    limit, max_new_tokens, judge=str(judge) if judge else None)
    return stage.run(force=force)

