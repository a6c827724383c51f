"""`import synth` and `synth --help` must stay instant: no torch, vllm, transformers, datasets."""

import subprocess
import sys

HEAVY = ("torch", "vllm", "transformers", "datasets", "trl", "peft", "openai")

PROBE = """
import sys
import synth, synth.cli, synth.config, synth.generate, synth.seeds, synth.templates, synth.backends
import sft, sft.cli, sft.config, sft.data, sft.train, synth.curate, synth.filters
try:
    synth.cli.main(["--help"])
except SystemExit as exc:
    assert exc.code == 0, exc.code
try:
    synth.cli.main(["generate", "--help"])
except SystemExit as exc:
    assert exc.code == 0, exc.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:]))
print("HEAVY:" + ",".join(heavy))
"""


def test_import_and_help_do_not_load_heavy_packages():
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *HEAVY], capture_output=True, text=True, check=True
    ).stdout
    assert "usage: synth" in out
    assert "HEAVY:\n" in out or out.rstrip().endswith("HEAVY:"), out


def test_console_scripts_answer_help():
    bindir = __import__("pathlib").Path(sys.executable).parent
    for script in ("synth", "sft"):
        res = subprocess.run([str(bindir / script), "--help"], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert f"usage: {script}" in res.stdout
