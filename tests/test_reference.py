"""The docs site: its generated reference pages are what the code says today, and it builds
with `mkdocs build --strict` (a broken link, a missing page or a page left out of the nav
fails)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from synth.config import Recipe
from synth.configtools import reference
from synth.filters import FILTERS
from synth.reference import PAGES, stale_pages

from conftest import HANG_S, REPO


def test_the_reference_pages_are_generated_from_the_code_byte_for_byte():
    assert stale_pages() == [], "docs/reference/ is out of date: run `make docs` (python -m synth.reference)"


def test_the_reference_names_every_recipe_key_filter_and_command():
    recipe, filters, cli = (PAGES[name]() for name in ("recipe.md", "filters.md", "cli.md"))
    assert all(f"`{key}`" in recipe for key, *_ in reference(Recipe))
    assert all(f"\n## {name}\n" in filters for name in FILTERS)
    for command in ("synth generate", "synth run", "synth view", "sft train", "sft eval", "sft dpo", "sft merge"):
        assert f"\n## {command}\n" in cli and f"usage: {command}" in cli, command


def test_the_site_builds_strict(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    res = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=REPO,
                         capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for page in ("index.html", "guides/new-teacher/index.html", "reference/filters/index.html",
                 "benchmarks/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    assert "RESULT" in (tmp_path / "site" / "benchmarks" / "index.html").read_text(), "bench/RESULTS.md is included"
