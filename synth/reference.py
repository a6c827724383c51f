"""The generated reference pages of the docs site: the recipe's keys and every filter's
options from the config dataclasses' help, and the command lines from the argparse parsers.

    python -m synth.reference            # (make docs) writes docs/reference/*.md
    python -m synth.reference --check    # exits 1, naming the pages, when they differ

tests/test_reference.py compares the files with what this module writes, byte for byte, so
the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

from sft.cli import build_parser as sft_parser
from synth.cli import build_parser as synth_parser
from synth.config import Recipe
from synth.configtools import reference
from synth.filters import FILTERS, filter_class

DOCS = Path(__file__).resolve().parent.parent / "docs" / "reference"
WIDTH = 100  # the width help text is wrapped to, whatever the terminal


def _table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, tp, default, text in rows:
        text = text.replace("|", r"\|")  # a pipe inside a cell would end it
        lines.append(f"| `{key}` | {tp} | `{default}` | {text} |")
    return lines


def recipe_page() -> str:
    """Every key of a recipe, section by section."""
    lines = ["# Recipe reference", "",
             "Every key of a recipe YAML, with its type, default and meaning, generated from the config",
             "dataclasses (`synth/config.py`, `sft/config.py`) by `make docs`. Override any of them on the",
             "command line with `--set section.key=value`. A filter's options are in [Filters](filters.md).", ""]
    rows = reference(Recipe)
    for f in dataclasses.fields(Recipe):
        section = [r for r in rows if r[0] == f.name or r[0].startswith(f.name + ".")]
        lines += [f"## {f.name}", "", f.metadata.get("help", ""), "", *_table(section), ""]
    return "\n".join(lines)


def filters_page() -> str:
    """Every curation filter: what it does and its options."""
    lines = ["# Filters reference", "",
             "Every curation filter, by the name `curate.filters` takes (a name, or a mapping with `name` and",
             "the options below), generated from the filters' classes (`synth/filters/`) by `make docs`.",
             "How curation runs them is in [Curation](../curation.md).", ""]
    for name in sorted(FILTERS):
        cls = filter_class(name)
        doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        rows = reference(cls.Options)
        lines += [f"## {name}", "", doc, ""]
        lines += [*_table(rows), ""] if rows else ["No options.", ""]
    return "\n".join(lines)


def _fixed_width(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=WIDTH)
    for action in parser._actions:  # argparse keeps its subcommands' parsers only here
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _fixed_width(sub)


def _commands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(parser.prog, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [(sub.prog, sub) for sub in action.choices.values()]
    return found


def cli_page() -> str:
    """Every command's --help, as the command prints it."""
    lines = ["# Command-line reference", "",
             "The `--help` of every `synth` and `sft` command, generated from their argparse parsers",
             "(`synth/cli.py`, `sft/cli.py`) by `make docs`.", ""]
    for build in (synth_parser, sft_parser):
        parser = build()
        _fixed_width(parser)
        for prog, command in _commands(parser):
            lines += [f"## {prog}", "", "```text", command.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


PAGES: dict[str, Callable[[], str]] = {"recipe.md": recipe_page, "filters.md": filters_page, "cli.md": cli_page}


def stale_pages(folder: Path = DOCS) -> list[str]:
    """The reference pages whose file differs from what the code generates."""
    return [name for name, page in PAGES.items()
            if not (folder / name).is_file() or (folder / name).read_text(encoding="utf-8") != page()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m synth.reference", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when a page is out of date")
    args = ap.parse_args(argv)
    if args.check:
        stale = stale_pages()
        for name in stale:
            print(f"docs/reference/{name} is out of date: run `make docs`", file=sys.stderr)
        return 1 if stale else 0
    DOCS.mkdir(parents=True, exist_ok=True)
    for name, page in PAGES.items():
        (DOCS / name).write_text(page(), encoding="utf-8")
        print(f"wrote docs/reference/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
