"""Bad input through the real CLI: one line naming the file/line/field and the fix, exit 2,
and nothing already written is touched. None of these start an engine."""

import subprocess
import sys

import pytest

from conftest import HANG_S, make_recipe, write_jsonl

SYNTH = [sys.executable, "-m", "synth.cli"]


def _run(*args):
    return subprocess.run([*SYNTH, *map(str, args)], capture_output=True, text=True, timeout=HANG_S)


@pytest.fixture
def prior_run(tmp_path, tiny_model):
    """A recipe whose output dir already holds a finished record from an earlier run."""
    recipe = make_recipe(tmp_path, tiny_model)
    out = tmp_path / "out"
    out.mkdir()
    raw = write_jsonl(out / "raw.jsonl", [{"id": "earlier", "messages": []}])
    return recipe, raw, raw.read_bytes()


def _assert_one_line_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stderr)
    err = res.stderr.strip()
    assert err.startswith("synth: error: ") and "\n" not in err, err
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in err, (needle, err)


def test_malformed_seed_line(tmp_path, prior_run):
    recipe, raw, before = prior_run
    (tmp_path / "seeds.jsonl").write_text('{"question": "ok"}\n{"question": \n')
    res = _run("generate", recipe)
    _assert_one_line_error(res, "seeds.path", "seeds.jsonl line 2", "not valid JSON")
    assert raw.read_bytes() == before


def test_missing_column(tmp_path, prior_run):
    recipe, raw, before = prior_run
    res = _run("generate", recipe, "--set", "seeds.fields.question=text")
    _assert_one_line_error(res, "seeds.fields.question", "line 1", "no column 'text'")
    assert raw.read_bytes() == before


def test_unknown_template_variable(tmp_path, prior_run):
    recipe, raw, before = prior_run
    (tmp_path / "answer.j2").write_text("{{ questoin }}")
    res = _run("generate", recipe)
    _assert_one_line_error(res, "template.path", "'questoin'", "seeds.jsonl line 1", "available: question")
    assert raw.read_bytes() == before


@pytest.mark.parametrize("content", [None, ""])
def test_missing_or_empty_seed_file(tmp_path, prior_run, content):
    recipe, raw, before = prior_run
    seeds = tmp_path / "seeds.jsonl"
    if content is None:
        seeds.unlink()
        needles = ("seeds.path", "does not exist")
    else:
        seeds.write_text(content)
        needles = ("seeds.path", "has no seed rows")
    _assert_one_line_error(_run("generate", recipe), *needles)
    assert raw.read_bytes() == before


def test_unknown_backend(prior_run):
    recipe, raw, before = prior_run
    _assert_one_line_error(_run("generate", recipe, "--set", "teacher.backend=vlm"), "teacher.backend: unknown 'vlm'", "vllm")
    assert raw.read_bytes() == before


def test_model_path_that_does_not_exist(tmp_path, prior_run):
    recipe, raw, before = prior_run
    res = _run("generate", recipe, "--set", f"teacher.model={tmp_path}/models/missing")
    _assert_one_line_error(res, "teacher.model", "missing does not exist")
    assert raw.read_bytes() == before


def test_invalid_sampling_value(prior_run):
    recipe, raw, before = prior_run
    _assert_one_line_error(_run("generate", recipe, "--set", "sampling.top_p=1.5"), "sampling.top_p: must be in (0, 1]")
    assert raw.read_bytes() == before


def test_recipe_key_that_does_not_exist(prior_run):
    recipe, raw, before = prior_run
    res = _run("generate", recipe, "--set", "sampling.max_token=10")
    _assert_one_line_error(res, "sampling.max_token: unknown key", "Did you mean 'max_tokens'?")
    assert raw.read_bytes() == before


def test_missing_recipe_file(tmp_path):
    _assert_one_line_error(_run("generate", tmp_path / "nope.yaml"), "recipe:", "does not exist")


def test_corrupt_raw_log_is_named_and_left_alone(prior_run):
    recipe, raw, _ = prior_run
    raw.write_text('{"id": "a"}\ngarbage\n{"id": "b"}\n')
    before = raw.read_bytes()
    _assert_one_line_error(_run("generate", recipe), "raw.jsonl line 2 is not valid JSON")
    assert raw.read_bytes() == before
