"""Dataset versions: a new teacher writes beside the old data, never over it.

The first `synth generate` into `output.dir` records the teacher's identity there
(`teacher.json`: backend, model, revision, endpoint, weights fingerprint, dtype, ...; no key). When a recipe's teacher differs from the one recorded,
its data goes to a sibling version instead: `OUTPUT.v2`, `OUTPUT.v3`, ... (the first
sibling that holds this teacher's data, else the first free one). Every command that reads
the recipe resolves the same directory, so `synth run`, `synth curate`, `sft train` and
`sft eval` with the new teacher all work on the new version, and `synth diff OUTPUT
OUTPUT.v2` compares the two. `output.version_by_teacher: false` turns this off.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from synth.layout import Layout
from synth.runtime import read_json, write_json_atomically

logger = logging.getLogger(__name__)


def recorded_teacher(directory: Path) -> dict[str, Any] | None:
    """The teacher whose data `directory` holds: its teacher.json, or for directories written
    before versions existed, the teacher in its generate manifest; None when unclaimed."""
    layout = Layout(directory)
    for path, key in ((layout.teacher, None), (layout.manifest, "teacher")):
        data = read_json(path)
        if not isinstance(data, dict):
            continue
        found = data.get(key) if key else data
        if isinstance(found, dict) and found.get("backend"):
            return found
    return None


def same_teacher(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same teacher: equal identities; a local model is known by its weights fingerprint, so
    the same directory named by another path (relative, absolute) is the same teacher."""
    keys = set(a) | set(b)
    if a.get("fingerprint") and b.get("fingerprint"):
        keys.discard("model")
    return all(a.get(k) == b.get(k) for k in keys)


def resolve_version(base: Path, identity: Callable[[], dict[str, Any]]) -> Path:
    """The directory of this teacher's version of the dataset whose first version is `base`:
    `base` itself when it is unclaimed or holds this teacher's data, else the first sibling
    `base.vN` that does (or the first free one). `identity` gives the teacher's identity; it
    is asked only when `base` is claimed."""
    owner = recorded_teacher(base)
    if owner is None:
        return base
    try:
        mine = identity()
    except (ValueError, ImportError) as exc:
        if len(versions_of(base)) > 1:  # cannot tell which version is meant: never guess
            raise ValueError(
                f"output.dir: {base} has versions for several teachers and this recipe's teacher cannot be "
                f"identified ({exc}); set output.dir to the version you mean"
            ) from None
        return base  # one version: the stage that needs the teacher reports the problem
    if same_teacher(owner, mine):
        return base
    n = 2
    while True:
        candidate = base.with_name(f"{base.name}.v{n}")
        other = recorded_teacher(candidate)
        if other is None or same_teacher(other, mine):
            break
        n += 1
    logger.warning(
        "teacher %s differs from the one whose data is in %s (%s): this run uses the version %s "
        "(compare them with `synth diff %s %s`)",
        mine.get("model"), base, owner.get("model"), candidate, base, candidate,
    )
    return candidate


def claim(out: Path, identity: dict[str, Any], version_by_teacher: bool = True) -> None:
    """Record the teacher `identity` as the owner of `out` (once; never overwritten).

    Refuses to write one teacher's data into another teacher's directory (a recipe planned
    without versions, synth.plan.resolve(..., versioned=False)), unless `version_by_teacher`
    is false (output.version_by_teacher)."""
    owner = recorded_teacher(out)
    if owner is not None:
        if version_by_teacher and not same_teacher(owner, identity):
            raise ValueError(
                f"output.dir: {out} holds the data of teacher {owner.get('model')}, not {identity.get('model')}; "
                f"resolve the recipe with synth.plan.resolve (it picks the version {out.name}.vN for a new teacher), "
                "give another output.dir, or set output.version_by_teacher: false to mix them"
            )
        return
    write_json_atomically(Layout(out).teacher, identity)


def versions_of(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every version of the dataset that `directory` belongs to (the base first, then .v2,
    .v3, ...), each with the teacher recorded in it."""
    base_name = re.sub(r"\.v\d+$", "", directory.name)
    base = directory.with_name(base_name)
    numbered = []
    if base.parent.is_dir():
        for d in base.parent.iterdir():
            m = re.fullmatch(re.escape(base_name) + r"\.v(\d+)", d.name)
            if m and d.is_dir():
                numbered.append((int(m.group(1)), d))
    found = []
    for d in [base, *(d for _, d in sorted(numbered))]:
        teacher = recorded_teacher(d)
        if teacher is not None:
            found.append((d, teacher))
    return found
