"""The recipe is resolved once per command: one teacher identity (for a local teacher, a
fingerprint of its weights) and one request planning per `synth run`, however many stages
read them."""

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from synth.examples.dates import prepare
from synth.plan import load_plan

from conftest import HANG_S, REPO, read_jsonl

PRE_PLAN_RUN = REPO / "tests" / "data" / "pre-plan-run"  # written by af6fece, before the plan (its README)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _within(old, new) -> bool:
    """Every key and value of `old` is in `new` (dicts may gain keys)."""
    if isinstance(old, dict):
        return isinstance(new, dict) and all(k in new and _within(v, new[k]) for k, v in old.items())
    return old == new


@pytest.mark.parametrize("recipe, out, keyed", [
    ("recipe.yaml", "out", {"curate", "train", "eval", "pairs", "dpo", "dpo eval"}),
    ("conversation.yaml", "out-conversations", {"curate"}),
])
def test_a_run_made_before_the_plan_is_reused_whole(tmp_path, monkeypatch, recipe, out, keyed):
    """Today's code plans the same request ids and computes the same stage keys as the code
    that made the run: `synth run` sends nothing, skips every keyed stage and changes no file
    but the card and the report."""
    work = tmp_path / "run"
    shutil.copytree(PRE_PLAN_RUN, work)
    before = _files(work / out)
    raw_ids = [r["id"] for r in read_jsonl(work / out / "raw.jsonl")]
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))  # the verifier's module, as `python -m synth.cli` finds it
    assert load_plan(recipe).request_ids == set(raw_ids), "the same request ids"

    res = subprocess.run([sys.executable, "-m", "synth.cli", "run", recipe, "--no-progress"], cwd=work,
                         capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-3000:]
    stages = {s["stage"]: s for s in json.loads((work / out / "report.json").read_text())["stages"]}
    assert {name for name, s in stages.items() if s["status"] == "skipped"} == keyed, stages
    assert all(s["why"] == "inputs unchanged since it last finished" for name, s in stages.items() if name in keyed)
    assert f"{len(raw_ids)} of {len(raw_ids)} answered, 0 new, 0 failed" == stages["generate"]["summary"]
    after = _files(work / out)
    rebuilt = {"README.md", "report.md", "report.json", "manifest.json", "lengths.png", "funnel.png", "run.log", ".lock"}
    assert {name: data for name, data in after.items() if name not in rebuilt | {"config.yaml"}} == \
        {name: data for name, data in before.items() if name not in rebuilt | {"config.yaml"}}, "no other file changed"
    # The resolved config is rewritten with the keys added since (at their defaults); every
    # value the old run recorded is unchanged.
    assert _within(yaml.safe_load(before["config.yaml"]), yaml.safe_load(after["config.yaml"])), "the same config"


# Runs `synth run` in a process of its own (its engine must not share this test session's
# vLLM state), counting the calls that compute the teacher's identity and plan the requests.
COUNTING_RUN = """
import json, sys
from synth.backends.vllm_engine import VllmBackend
from synth.plan import Plan, load_plan
from synth.run import run_all

counts = {"identity": 0, "planning": 0}
identity_for, plan = VllmBackend.identity_for, Plan._plan

def counted_identity(cfg):
    counts["identity"] += 1
    return identity_for(cfg)

def counted_plan(self):
    counts["planning"] += 1
    return plan(self)

VllmBackend.identity_for = staticmethod(counted_identity)
Plan._plan = counted_plan
if __name__ == "__main__":
    report = run_all(load_plan(sys.argv[1], sys.argv[2:]), progress=False)
    print(json.dumps({"counts": counts, "stages": {s["stage"]: s["status"] for s in report["stages"]}}))
"""


@pytest.mark.slow
def test_one_identity_and_one_planning_per_synth_run_of_the_dates_recipe(tmp_path, capsys):
    paths = prepare(tmp_path / "dates", prompts=24, teacher_examples=8)
    overrides = [f"seeds.path={paths['prompts']}", f"teacher.model={paths['teacher_init']}",
                 f"sft.model={paths['student_init']}", f"output.dir={tmp_path / 'out'}", "sft.max_steps=2",
                 "sft.save_steps=2", "sft.logging_steps=1", "sft.eval_limit=3", "sft.eval_engine=transformers",
                 "curate.eval_fraction=0.2", "curate.filters=[empty]"]  # an untrained teacher: every answer runs to max_tokens
    script = tmp_path / "counting_run.py"
    script.write_text(COUNTING_RUN)
    for run in ("first", "second"):
        res = subprocess.run([sys.executable, str(script), str(REPO / "prompts" / "dates" / "recipe.yaml"), *overrides],
                             capture_output=True, text=True, timeout=HANG_S)
        assert res.returncode == 0, res.stderr[-3000:]
        result = json.loads(res.stdout.strip().splitlines()[-1])
        counts, statuses = result["counts"], result["stages"]
        with capsys.disabled():
            print(f"\nsynth run of the dates recipe ({run}): {counts['identity']} teacher identity computation(s), "
                  f"{counts['planning']} request planning(s); stages {statuses}")
        assert counts == {"identity": 1, "planning": 1}, (run, counts)
    assert statuses == {"generate": "done", "curate": "skipped", "card": "done", "train": "skipped", "eval": "skipped",
                        "export f16": "skipped", "export q8_0": "skipped", "export eval": "skipped"}
