"""A raw log of short synthetic records and a recipe to curate it (bench/curate_memory.py,
bench/audit_page.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any


def write_raw(path: Path, records: int, marked: bool = False) -> None:
    """`records` teacher records of 15-40 random words, 10% of them repeats of a recent one.
    marked: one new answer in a thousand carries an e-mail address, one in 100,000 the word
    'zanzibar', and every record names its seed line."""
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    answers: list[str] = []
    with path.open("w") as fh:
        for i in range(records):
            if answers and rng.random() < 0.1:
                answer = rng.choice(answers[-1000:])
            else:
                answer = " ".join(rng.choice(vocab) for _ in range(rng.randint(15, 40)))
                if marked and i % 1000 == 7:
                    answer += f" write to person{i}@example.com"
                if marked and i % 100_000 == 11:
                    answer += " zanzibar"
                answers.append(answer)
                if len(answers) > 2000:
                    del answers[:1000]
            rec: dict[str, Any] = {"id": f"{i:032x}", "messages": [{"role": "user", "content": f"question {i}"},
                                                                 {"role": "assistant", "content": answer}],
                                   "finish_reason": "stop"}
            if marked:
                rec["seed"] = {"source": "seeds.jsonl", "line": i + 1}
            fh.write(json.dumps(rec) + "\n")


def new_run(prefix: str) -> tuple[Path, Path]:
    """(a fresh work dir, its empty output dir)."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix=prefix))
    out = work / "out"
    out.mkdir()
    return work, out


def curate_recipe(work: Path, out: Path, filters: list[Any]):
    """A recipe that curates OUTPUT=out's raw log with `filters` (no teacher is called)."""
    from synth.config import Recipe
    from synth.configtools import from_dict

    seeds = work / "s.txt"
    seeds.write_text("x\n")
    (work / "t.j2").write_text("{{ prompt }}")
    return from_dict(Recipe, {
        "seeds": {"path": str(seeds)}, "template": {"path": str(work / "t.j2")},
        "teacher": {"model": "org/unused"}, "output": {"dir": str(out)},
        "curate": {"only_planned": False, "filters": filters},
    })
