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

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

from synth.config import Recipe
from synth.layout import Layout
from synth.runtime import read_json, write_json_atomically

logger = logging.getLogger(__name__)


def teacher_identity(recipe: Recipe) -> dict[str, Any]:
    """What identifies the recipe's teacher (the identity that goes into request ids)."""
    from synth.backends import load_backend_class

    return load_backend_class(recipe.teacher.backend).identity_for(recipe.teacher)


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


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same teacher: equal identities; a local model is known by its weights fingerprint, so
    the same directory named by another path (relative, absolute) is the same teacher."""
    keys = set(a) | set(b)
    if a.get("fingerprint") and b.get("fingerprint"):
        keys.discard("model")
    return all(a.get(k) == b.get(k) for k in keys)


def resolve_version(recipe: Recipe) -> Recipe:
    """The recipe with output.dir pointing at this teacher's version of the dataset."""
    base = Path(recipe.output.dir)
    if not recipe.output.version_by_teacher:
        return recipe
    owner = recorded_teacher(base)
    if owner is None:
        return recipe
    try:
        mine = teacher_identity(recipe)
    except (ValueError, ImportError) as exc:
        if len(versions_of(base)) > 1:  # cannot tell which version is meant: never guess
            raise ValueError(
                f"output.dir: {base} has versions for several teachers and this recipe's teacher cannot be "
                f"identified ({exc}); set output.dir to the version you mean"
            ) from None
        return recipe  # one version: the stage that needs the teacher reports the problem
    if _same(owner, mine):
        return recipe
    n = 2
    while True:
        candidate = base.with_name(f"{base.name}.v{n}")
        other = recorded_teacher(candidate)
        if other is None or _same(other, mine):
            break
        n += 1
    logger.warning(
        "teacher %s differs from the one whose data is in %s (%s): this run uses the version %s "
        "(compare them with `synth diff %s %s`)",
        mine.get("model"), base, owner.get("model"), candidate, base, candidate,
    )
    return dataclasses.replace(recipe, output=dataclasses.replace(recipe.output, dir=str(candidate)))


def claim(recipe: Recipe, identity: dict[str, Any] | None = None) -> None:
    """Record the recipe's teacher as the owner of output.dir (once; never overwritten).

    Refuses to write one teacher's data into another teacher's directory (a recipe built
    without `load_recipe`, which resolves the version), unless output.version_by_teacher is
    false."""
    out = Path(recipe.output.dir)
    data = identity if identity is not None else teacher_identity(recipe)
    owner = recorded_teacher(out)
    if owner is not None:
        if recipe.output.version_by_teacher and not _same(owner, data):
            raise ValueError(
                f"output.dir: {out} holds the data of teacher {owner.get('model')}, not {data.get('model')}; "
                f"load the recipe with synth.config.load_recipe (it picks the version {out.name}.vN for a new teacher), "
                "give another output.dir, or set output.version_by_teacher: false to mix them"
            )
        return
    write_json_atomically(Layout(out).teacher, data)


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
