"""Stages: every step of the loop is one kind of object (luigi's Task, with an input key).

A stage has its plan (synth.plan), and states:
- `key()`: what its work depends on (digests of the files it reads, the settings that change
  its result), or None for a stage keyed item by item (expand and generate: every teacher
  call has a request id, and the logs are the cache) or rebuilt every run (the card);
- `stamp()`: where it records the key it last finished with (written last, so its presence
  means "complete for this key"), and `outputs()`: files that must still be there;
- `work(key)`: the work, returning a StageResult (`complete=False` when part of it failed and
  the next run should try again: then no stamp is written);
- `why_not_applicable()`: why the stage does not apply to this recipe (no held-out split), or None.

`run()` decides: a keyed stage whose key equals its stamp and whose outputs exist is
skipped (unless forced: `synth curate` always curates); otherwise it works, under the output
dir's lock, and writes the stamp. `synth run` is a loop over the recipe's stages
(synth.run); `sft train` is the train stage run alone. Each result prints the same way in
the run report, the console summary and the stage's own command.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from synth.plan import Plan
from synth.rawlog import DirLock
from synth.runtime import FILE_ONLY, is_main_process, read_json, utc_now, write_json_atomically

logger = logging.getLogger(__name__)


@dataclass
class StageResult:
    """What a stage did: `summary` is its one line in `synth run`'s report, `lines` what its
    own command prints, `details` its full result (the manifest, stats or metrics it wrote)."""

    stage: str
    status: str  # "done" or "skipped"
    why: str  # why it ran, or why it was skipped
    summary: str = ""
    lines: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    wall_s: float | None = None
    complete: bool = True  # False: some of the work failed; no stamp, so the next run does it again

    def report_entry(self) -> dict[str, Any]:
        """The stage's entry in report.json."""
        entry: dict[str, Any] = {"stage": self.stage, "status": self.status, "why": self.why}
        if self.status == "done":
            entry.update(summary=self.summary, wall_s=self.wall_s)
        return entry


class Stage:
    """Base of every stage (see the module docstring)."""

    name: ClassVar[str]
    always_runs: ClassVar[str] = ""  # why a stage without a key runs every time

    def __init__(self, plan: Plan, progress: bool = True):
        self.plan = plan
        self.progress = progress

    def why_not_applicable(self) -> str | None:
        return None

    def key(self) -> dict[str, Any] | None:
        return None

    def stamp(self) -> Path | None:
        return None

    def outputs(self) -> tuple[Path, ...]:
        return ()

    def work(self, key: dict[str, Any] | None) -> StageResult:
        raise NotImplementedError

    def result(self, summary: str, lines: list[str], details: dict[str, Any]) -> StageResult:
        """The result of this stage's work (status and timing are filled in by `run`)."""
        return StageResult(self.name, "done", "", summary, lines, details)

    def run(self, force: bool = False, announce: bool = False) -> StageResult:
        """Skip the stage when its inputs are unchanged (unless `force`), else do its work
        under the output dir's lock and record its key last. `announce`: say on the console
        (not only in the log file) that it runs or why it is skipped, as `synth run` does."""
        extra = {} if announce else FILE_ONLY
        absent = self.why_not_applicable()
        if absent is not None:
            return self._skipped(absent, extra)
        key = self.key()
        if key is None:
            why = self.always_runs
        else:
            stamp = self.stamp()
            assert stamp is not None, f"{self.name}: a keyed stage records its key"
            why = why_run(read_stamp(stamp), key, all(p.exists() for p in self.outputs()))
            if why is None and not force:
                return self._skipped("inputs unchanged since it last finished", extra)
            why = why or "run on request"
        logger.info("%s: running (%s)", self.name, why, extra=extra)
        started = time.monotonic()
        with DirLock(self.plan.layout.root):
            result = self.work(key)
            if key is not None and is_main_process():
                if result.complete:
                    write_stamp(self.stamp(), key)  # last: the stage is complete for this key
                else:
                    self.stamp().unlink(missing_ok=True)  # an earlier run's stamp would skip the next run
        result.why, result.wall_s = why, round(time.monotonic() - started, 1)
        return result

    def _skipped(self, why: str, extra: dict[str, Any]) -> StageResult:
        logger.info("%s: skipped (%s)", self.name, why, extra=extra)
        return StageResult(self.name, "skipped", why)


# ---- stamps -----------------------------------------------------------------------------


def read_stamp(path: Path) -> dict[str, Any] | None:
    """The key a stage last finished with, or None."""
    data = read_json(path)
    return data.get("key") if isinstance(data, dict) else None


def write_stamp(path: Path, key: dict[str, Any]) -> None:
    """Record that a stage finished with `key` (its last write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, {"key": key, "finished_at": utc_now()})


def changed(old: dict[str, Any] | None, new: dict[str, Any], prefix: str = "") -> list[str]:
    """The inputs whose value differs, as dotted names (config keys down to the field)."""
    if old is None:
        return []
    out = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        where = f"{prefix}{name}"
        if isinstance(a, dict) and isinstance(b, dict) and name in ("sft", "curate", "lora"):
            out += changed(a, b, where + ".") or [where]
        else:
            out.append(where)
    return out


def why_run(old: dict[str, Any] | None, new: dict[str, Any], outputs_exist: bool) -> str | None:
    """Why a keyed stage must run, or None when its earlier work is still valid."""
    if old is None:
        return "no earlier run finished"
    diff = changed(old, new)
    if diff:
        return "changed: " + ", ".join(diff)
    if not outputs_exist:
        return "outputs missing"
    return None
