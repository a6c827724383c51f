"""Stages never reuse stale work, every command sees one validated recipe, and the output
dir stays whole. None of these start an engine."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from sft.evaluate import eval_key
from sft.train import train_key
from synth.backends import Completion
from synth.config import load_recipe
from synth.curate import curate_key, run_curate
from synth.generate import run_generate
from synth.plan import load_plan, resolve
from synth.records import make_record
from synth.stage import changed, why_run

from conftest import HANG_S, REPO, make_recipe, read_jsonl, write_jsonl
from curate_data import build_raw, real_rows

SYNTH = [sys.executable, "-m", "synth.cli"]


def _synth(*args, **kw):
    return subprocess.run([*SYNTH, *map(str, args)], capture_output=True, text=True, timeout=HANG_S, **kw)


def _one_line_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    err = res.stderr.strip()
    assert err.startswith("synth: error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.mark.parametrize("override, message", [
    ("sft.lerning_rate=0.1", "sft.lerning_rate: unknown key. Did you mean 'learning_rate'?"),
    ("sft.lora.alpah=8", "sft.lora.alpah: unknown key. Did you mean 'alpha'?"),
    ("curate.filters=[{name: near_dedup, treshold: 0.5}]", "curate.filters[0].treshold: unknown key. Did you mean 'threshold'?"),
    ("curate.filters=[{name: regex, block: ['(unclosed']}]", "curate.filters[0].block[0]: invalid regex"),
    ("expand.metod=evol_instruct", "expand.metod: unknown key. Did you mean 'method'?"),
    ("sft.eval_verifier=no_such_module:check", "sft.eval_verifier: cannot import no_such_module"),
])
def test_a_typo_anywhere_in_the_recipe_fails_before_generation(tmp_path, tiny_model, override, message):
    path = make_recipe(tmp_path, tiny_model, extra={"sft": {"model": str(tiny_model)}})
    res = _synth("generate", path, "--set", override)
    _one_line_error(res, message)
    assert not (tmp_path / "out").exists(), "nothing was started or written"


def test_generate_keeps_the_curate_section_of_the_manifest(tmp_path, tiny_model):
    path, plan, _ = build_raw(tmp_path, tiny_model, real_rows(4), {"filters": ["empty"]})
    run_curate(plan, progress=False)
    manifest = tmp_path / "out" / "manifest.json"
    curated = json.loads(manifest.read_text())["curate"]
    # Every request is answered already: generate sends nothing and starts no engine.
    result = run_generate(load_plan(path), progress=False)
    assert result["counts"]["generated"] == 0 and result["status"] == "complete"
    after = json.loads(manifest.read_text())
    assert after["curate"] == curated and after["counts"]["requests"] == 4


def test_a_repeated_request_in_the_raw_log_is_one_clear_error(tmp_path, tiny_model):
    path, _, _ = build_raw(tmp_path, tiny_model, real_rows(3), {"filters": ["empty"]})
    raw = tmp_path / "out" / "raw.jsonl"
    lines = raw.read_text().splitlines()
    raw.write_text("\n".join([*lines, lines[0]]) + "\n")
    before = raw.read_bytes()
    for command in ("generate", "curate"):
        _one_line_error(_synth(command, path), "raw.jsonl line 4 repeats request", "of line 1", "delete one of the two lines")
    assert raw.read_bytes() == before


def test_every_writing_command_refuses_a_dir_another_process_holds(tmp_path, tiny_model):
    path, _, _ = build_raw(tmp_path, tiny_model, real_rows(3), {"filters": ["empty"]})
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom pathlib import Path\nfrom synth.rawlog import DirLock\n"
         "with DirLock(Path(sys.argv[1])):\n    print('held', flush=True)\n    sys.stdin.read()\n", str(tmp_path / "out")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for command in ("curate", "run", "generate"):
            _one_line_error(_synth(command, path, "--no-progress"), f"output.dir: {tmp_path / 'out'} is in use by pid {holder.pid}")
        assert not (tmp_path / "out" / "train.jsonl").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert _synth("curate", path, "--no-progress").returncode == 0


def _version_dir(tmp_path, name, teacher, answers_by_sample, stale_answer=None):
    """An output dir as `synth generate` leaves it: config.yaml, teacher.json and a raw log
    written in completion order (sample 1 before sample 0), plus records of an older
    sampling config when `stale_answer` is given."""
    seeds = [{"question": f"Question {i}?"} for i in range(3)]
    (tmp_path / name).mkdir()
    path = make_recipe(tmp_path / name, "org/model", seeds=seeds, sampling={"n": 2, "max_tokens": 8}, out="out")
    out = tmp_path / name / "out"
    out.mkdir()
    (out / "config.yaml").write_text(path.read_text())
    (out / "teacher.json").write_text(json.dumps(teacher))
    records = []
    for req in resolve(load_recipe(path), teacher, versioned=False).requests.requests:
        text = answers_by_sample[req.sample_index](req.messages[-1]["content"])
        records.append(make_record(Completion(req, text, "stop", 5, 5, 0.1), teacher))
    if stale_answer is not None:
        old = load_recipe(path, ["sampling.max_tokens=4"])
        for req in resolve(old, teacher, versioned=False).requests.requests:
            records.append(make_record(Completion(req, stale_answer, "stop", 5, 5, 0.1), teacher))
    records.sort(key=lambda r: -r["sample_index"])  # completion order is not sample order
    write_jsonl(out / "raw.jsonl", records)
    return out


def test_diff_compares_sample_0_of_the_current_config(tmp_path):
    from synth.diff import run_diff

    teacher_a = {"backend": "vllm", "model": "org/model", "revision": None, "fingerprint": None, "dtype": "float32", "quantization": None}
    teacher_b = {**teacher_a, "model": "org/better"}
    a = _version_dir(tmp_path, "a", teacher_a, {0: lambda q: f"alpha zero answer to {q}", 1: lambda q: "alpha one"},
                     stale_answer="STALE answer of an older config")
    b = _version_dir(tmp_path, "b", teacher_b, {0: lambda q: f"beta zero reply for {q}", 1: lambda q: "beta one"})
    report = run_diff(a, b)
    assert report["prompts_in_both"] == 3 and report["only_in_a"] == report["only_in_b"] == 0
    assert report["a"]["records"] == 6 and report["a"]["records_of_other_configs"] == 6
    for change in report["changed_most"]:
        assert change["answer_a"].startswith("alpha zero") and change["answer_b"].startswith("beta zero"), change
    assert "STALE" not in (b / "diff.md").read_text()


def test_eval_puts_the_students_models_on_the_gpu_when_there_is_one(tmp_path, tiny_model, monkeypatch):
    """sft eval's transformers models (perplexity, generate) go where the GPU is: checked on
    this CPU machine by having torch report a GPU and recording where the models are moved."""
    import torch

    from sft.config import SftConfig
    from sft.generation import load_student_models
    from synth.tiny_model import build_tiny_model

    trained = build_tiny_model(tmp_path / "trained", seed=3)
    moved = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append((type(self).__name__, a, k)) or self)
    cfg = SftConfig(model=str(tiny_model), full_finetune=True)
    models = load_student_models(cfg, str(tiny_model), trained)
    assert len(moved) == 2 and all(a == ("cuda",) for _, a, _ in moved), moved
    assert models.base.dtype == torch.bfloat16


def test_the_packaged_prompts_ship_in_the_wheel_and_load_from_any_directory(tmp_path):
    """Expansion and judge templates are package data: a wheel carries them and an installed
    (not editable) copy finds them whatever the working directory."""
    wheels = tmp_path / "wheels"
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
                         capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-2000:]
    (wheel,) = wheels.glob("stillhouse-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for template in ("expand/self_instruct.j2", "expand/evol_in_depth.j2", "expand/evol_in_breadth.j2",
                     "judge/rubric.j2", "judge/pairwise.j2"):
        assert f"synth/prompts/{template}" in names, template
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = ("import synth, sys\nfrom synth.filters.judge import RUBRIC, JudgeOptions\nfrom synth.layout import packaged_prompt\n"
             "assert synth.__file__.startswith(sys.argv[1]), synth.__file__\n"
             "o = JudgeOptions(teacher=None)\nassert o.template_path(RUBRIC).is_file(), o.template_path(RUBRIC)\n"
             "assert packaged_prompt('expand/self_instruct.j2').is_file()\nprint('ok')\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r})\n" + probe, str(site)],
                         capture_output=True, text=True, timeout=HANG_S, cwd=elsewhere)
    assert res.stdout.strip() == "ok", res.stderr[-2000:]


def test_stage_keys_name_exactly_their_inputs(tmp_path, tiny_model):
    path, _, _ = build_raw(tmp_path, tiny_model, real_rows(3), {"filters": ["empty"], "eval_fraction": 0.3})
    data = yaml.safe_load(path.read_text())
    data["sft"] = {"model": str(tiny_model), "max_steps": 4}
    path.write_text(yaml.safe_dump(data))
    write_jsonl(tmp_path / "out" / "train.jsonl", [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])

    def keys(*overrides):
        plan = load_plan(path, list(overrides))
        return curate_key(plan), train_key(plan), eval_key(plan, plan.student)

    base = keys()
    # Bookkeeping (logging, checkpoint cadence) changes no key; eval settings only eval's.
    assert keys("sft.logging_steps=1", "sft.save_steps=7", "sft.save_total_limit=5") == base
    cur, train, ev = keys("sft.eval_limit=2", "sft.eval_max_new_tokens=9")
    assert (cur, train) == base[:2] and changed(base[2], ev) == ["sft.eval_limit", "sft.eval_max_new_tokens"]
    cur, train, ev = keys("sft.learning_rate=0.1", "sft.lora.r=4")
    assert cur == base[0] and ev == base[2] and changed(base[1], train) == ["sft.learning_rate", "sft.lora.r"]
    # Curation: the raw bytes, the curate section, the requests the recipe plans.
    cur, train, _ = keys("curate.eval_seed=3")
    assert changed(base[0], cur) == ["curate.eval_seed"] and train == base[1]
    cur, _, _ = keys("sampling.temperature=0.1")
    assert changed(base[0], cur) == ["requests"]
    with (tmp_path / "out" / "raw.jsonl").open("a") as fh:
        fh.write("\n")
    assert changed(base[0], keys()[0]) == ["raw"]
    # Logprobs scored after curation (`synth score`): curation counts them, so it reruns.
    after_raw = keys()[0]
    (tmp_path / "out" / "logprobs.bin").write_bytes(b"entry")
    assert changed(after_raw, keys()[0]) == ["logprobs"]
    # Why a stage runs, in words.
    assert why_run(None, base[1], True) == "no earlier run finished"
    assert why_run(base[1], base[1], False) == "outputs missing"
    assert why_run(base[1], base[1], True) is None


def test_a_verifiers_code_is_part_of_curations_key(tmp_path, tiny_model, monkeypatch):
    module = tmp_path / "my_checks.py"
    module.write_text("def ok(record):\n    return True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path, plan, _ = build_raw(tmp_path, tiny_model, real_rows(2), {"filters": [{"name": "verifier", "function": "my_checks:ok"}]})
    before = curate_key(plan)
    module.write_text("def ok(record):\n    return False\n")
    assert changed(before, curate_key(load_plan(path))) == ["filters"]


def test_expanded_prompts_are_what_every_command_plans(tmp_path, tiny_model):
    """With an expand section, generate and curate read OUTPUT/expanded.jsonl (seeds first,
    then new prompts) under the template's variable; before expansion, a clear error."""
    path = make_recipe(tmp_path, tiny_model, sampling={"n": 1}, extra={"expand": {"field": "question"}})
    with pytest.raises(ValueError, match=r"expand: .*expanded.jsonl does not exist yet; run `synth expand RECIPE` first"):
        _ = load_plan(path).requests
    out = tmp_path / "out"
    out.mkdir()
    seeds = [json.loads(line)["question"] for line in (tmp_path / "seeds.jsonl").read_text().splitlines()]
    write_jsonl(out / "expanded.jsonl", [{"prompt": q, "origin": {"method": "seed"}} for q in seeds]
                + [{"prompt": "A brand new prompt about tides?", "origin": {"method": "self_instruct"}}])
    plan = load_plan(path).requests
    assert [r.messages[-1]["content"] for r in plan.requests] == [*seeds, "A brand new prompt about tides?"]


def test_standalone_curate_keeps_the_records_of_expanded_prompts(tmp_path, tiny_model):
    path = make_recipe(tmp_path, tiny_model, sampling={"n": 1}, extra={"expand": {"field": "question"}, "curate": {"filters": ["empty"]}})
    out = tmp_path / "out"
    out.mkdir()
    seeds = [json.loads(line)["question"] for line in (tmp_path / "seeds.jsonl").read_text().splitlines()]
    new = ["A brand new prompt about tides?", "Another new prompt about volcanoes?"]
    write_jsonl(out / "expanded.jsonl", [{"prompt": q, "origin": {"method": "seed" if q in seeds else "evol_instruct"}}
                                         for q in [*seeds, *new]])
    plan = load_plan(path)
    write_jsonl(out / "raw.jsonl", [make_record(Completion(r, "An answer.", "stop", 3, 3, 0.1), plan.teacher)
                                    for r in plan.requests.requests])
    res = _synth("curate", path, "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["records"] == stats["kept"] == len(seeds) + len(new) and stats["records_of_other_configs"] == 0
    assert {r["messages"][-2]["content"] for r in read_jsonl(out / "train.jsonl")} >= set(new)


def test_packaged_prompt_dirs_exist_in_the_source_tree():
    for name in ("expand", "judge"):
        assert (REPO / "synth" / "prompts" / name).is_dir()
    assert not Path(REPO / "prompts" / "judge").exists(), "one copy of the packaged prompts"
