"""The `sft` command line. Training, merging and evaluation are not built yet (see the
student-training issue); until then the command says so instead of pretending."""

from __future__ import annotations

import argparse
import sys

from sft import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sft",
        description="Fine-tune a small student on curated data (LoRA via TRL + PEFT). "
        "Not implemented yet in this version: train, merge and eval are planned.",
    )
    parser.add_argument("--version", action="version", version=f"stillhouse {__version__}")
    parser.parse_args(argv)
    print("sft: no commands yet in stillhouse", __version__, "- training, merging and evaluation are planned", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
