"""Is the new teacher's student better? `synth compare` on the dates task, where the answer is
known: a weaker teacher (trained 200 steps instead of 600) should give a worse student, and a
second student of the same teacher (another training seed, another output dir) no detectable
difference.

Needs `make demo` first (runs/dates: the demo teacher's data and student). Then:

    python bench/compare_students.py

1. `sft train prompts/dates/teacher.yaml` into .demo/dates/teacher-b with sft.max_steps=200,
   then `synth run prompts/dates/recipe.yaml --set teacher.model=.demo/dates/teacher-b/model`:
   the version runs/dates.v2, with its own student (the docs' new-teacher guide, step 5);
2. `synth run` with the demo's teacher into runs/dates-seed1 with sft.seed=1: the same teacher's
   data (greedy: the same answers), a student trained with another seed;
3. `synth compare runs/dates runs/dates.v2 runs/dates-seed1`: one held-out set, one check.

Each step skips what is already done (rerun it after an interruption).
Last line: RESULT compare_students prompts=.. weaker_diff=.. weaker_low=.. weaker_high=.. weaker_verdict=..
same_diff=.. same_low=.. same_high=.. same_verdict=..
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run([str(BIN / args[0]), *args[1:]], cwd=REPO, check=True)


def main() -> int:
    if not (REPO / "runs" / "dates" / "student" / "model" / "config.json").is_file():
        sys.exit("bench/compare_students.py: run `make demo` first (runs/dates has no trained student)")
    run("sft", "train", "prompts/dates/teacher.yaml", "--set", "sft.output_dir=.demo/dates/teacher-b",
        "--set", "sft.max_steps=200", "--no-progress")
    run("synth", "run", "prompts/dates/recipe.yaml", "--set", "teacher.model=.demo/dates/teacher-b/model",
        "--set", "export=null", "--no-progress")
    run("synth", "run", "prompts/dates/recipe.yaml", "--set", "output.dir=runs/dates-seed1", "--set", "sft.seed=1",
        "--set", "export=null", "--no-progress")
    run("synth", "compare", "runs/dates", "runs/dates.v2", "runs/dates-seed1", "--out", ".bench/compare")
    report = json.loads((REPO / ".bench" / "compare" / "compare.json").read_text())
    weaker, same = report["comparisons"]
    fields = [f"prompts={report['prompts']}"]
    for name, c in (("weaker", weaker), ("same", same)):
        s = c["student"]
        fields += [f"{name}_diff={s['mean']:+.3f}", f"{name}_low={s['ci95'][0]:+.3f}", f"{name}_high={s['ci95'][1]:+.3f}",
                   f"{name}_verdict={c['verdict'].split(' ')[0]}"]
    print("RESULT compare_students " + " ".join(fields))
    return 0


if __name__ == "__main__":
    sys.exit(main())
