"""Knowledge distillation from the teacher's top-k logprobs (sft.distill)."""

import json

import pytest
import torch
import yaml

from sft.config import DistillOptions
from sft.distill import char_starts, cross_positions, last_assistant_span, token_map, topk_kl
from synth.config import load_recipe
from synth.plan import load_plan

from conftest import HANG_S, make_recipe, read_jsonl, write_jsonl


def test_topk_kl_is_zero_for_the_same_distribution_and_falls_as_the_student_learns():
    torch.manual_seed(0)
    teacher_logits = torch.randn(6, 50) * 3
    teacher = torch.log_softmax(teacher_logits, -1)
    logprobs, ids = teacher.topk(5, dim=-1)
    for tail in (True, False):
        assert float(topk_kl(teacher_logits.clone(), ids, logprobs, 1.0, tail)) == pytest.approx(0.0, abs=1e-5)
    student = torch.zeros(6, 50, requires_grad=True)
    optimiser = torch.optim.Adam([student], lr=0.3)
    losses = []
    for _ in range(100):
        loss = topk_kl(student, ids, logprobs, 1.0, True)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[0] > 0.5 and losses[-1] < 0.05 * losses[0]
    # A position with fewer than k teacher tokens (-inf) counts only the ones it has.
    partial = logprobs.clone()
    partial[:, 3:] = float("-inf")
    assert torch.isfinite(topk_kl(student.detach(), ids, partial, 1.0, True))
    assert torch.isfinite(topk_kl(student.detach(), ids, partial, 2.0, False))


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_each_divergence_is_zero_at_the_teacher_and_its_gradient_finite_where_the_teacher_has_fewer_than_k(beta):
    torch.manual_seed(1)
    teacher_logits = torch.randn(6, 50) * 3
    logprobs, ids = torch.log_softmax(teacher_logits, -1).topk(5, dim=-1)
    for tail in (True, False):
        assert float(topk_kl(teacher_logits.clone(), ids, logprobs, 1.0, tail, beta)) == pytest.approx(0.0, abs=1e-5)
    partial = logprobs.clone()
    partial[:, 3:] = float("-inf")
    for temperature, tail in ((1.0, True), (2.0, False)):
        student = torch.randn(6, 50, requires_grad=True)
        loss = topk_kl(student, ids, partial, temperature, tail, beta)
        loss.backward()
        assert float(loss) > 0.01 and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    # A student with all its mass on the teacher's first choice: forward KL (mass-covering)
    # charges it for every other choice it dropped, reverse KL (mode-seeking) only -log p of its own.
    student = torch.full((6, 50), -30.0)
    student.scatter_(1, ids[:, :1], 0.0)  # all mass on the teacher's top token
    forward, reverse = (float(topk_kl(student, ids, logprobs, 1.0, True, b)) for b in (0.0, 1.0))
    assert forward > reverse > 0


def test_last_assistant_span():
    assert last_assistant_span([0, 1, 1, 0, 0, 1, 1, 1, 0]) == (5, 8)
    assert last_assistant_span([1, 1]) == (0, 2)
    assert last_assistant_span([0, 0]) is None


def _kd_recipe(tmp_path, tiny_model, student=None, **distill):
    return make_recipe(tmp_path, tiny_model, seeds=[{"question": f"Tell me about item {i}."} for i in range(24)],
                       sampling={"n": 1, "max_tokens": 12, "logprobs": 5, "temperature": 1.0},
                       extra={"curate": {"filters": ["empty"]},
                              "sft": {"model": str(student or tiny_model), "max_steps": 3, "batch_size": 8,
                                      "logging_steps": 1, "save_steps": 100, "max_length": 256, "learning_rate": 1e-3,
                                      "distill": {"top_k": 5, **distill}}})


@pytest.mark.slow
def test_distillation_trains_on_the_teachers_logprobs(tmp_path, tiny_model, vllm_backend):
    """Teacher and student are the same tiny model: before the first update the student's
    distribution is the teacher's, so the first KL is ~0; an answer edited after generation
    (as PII redaction does) falls back to cross-entropy and is counted."""
    from sft.train import run_train
    from synth.curate import run_curate
    from synth.generate import run_generate

    path = _kd_recipe(tmp_path, tiny_model)
    plan = load_plan(path)
    run_generate(plan, vllm_backend, progress=False)
    run_curate(plan, progress=False)
    train = tmp_path / "out" / "train.jsonl"
    rows = read_jsonl(train)
    rows[0]["messages"][-1]["content"] += " [REDACTED]"
    write_jsonl(train, rows)
    metrics = run_train(load_plan(path), progress=False)
    counts = metrics["data"]["distill"]
    assert counts["changed"] == 1 and counts.get("with", 0) + counts.get("partly aligned", 0) >= len(rows) // 2
    assert sum(counts.values()) == len(rows)
    kls = [h["kd_kl"] for h in metrics["log_history"] if "kd_kl" in h]
    assert len(kls) == 3 and kls[0] < 0.01, kls
    seen = [h["num_tokens"] for h in metrics["log_history"] if "num_tokens" in h]  # TRL's count goes on under KD
    assert len(seen) == 3 and 0 < seen[0] < seen[1] < seen[2], seen
    assert metrics["global_step"] == 3 and (tmp_path / "out" / "student" / "adapter" / "adapter_model.safetensors").exists()

    # Bad input: one clear error each.
    with pytest.raises(ValueError, match=r"sft.distill.top_k: 8 is more than the 5 logprobs captured"):
        run_train(load_plan(path, ["sft.distill.top_k=8"]), progress=False)
    with pytest.raises(ValueError, match=r"sft.distill.require: 1 training examples|sft.distill.require: \d+ training examples"):
        run_train(load_plan(path, ["sft.distill.require=true"]), progress=False)
    with pytest.raises(ValueError, match=r"sft.distill: .*nowhere.bin does not exist; generate with sampling.logprobs"):
        run_train(load_plan(path, [f"sft.distill.logprobs={tmp_path / 'nowhere.bin'}"]), progress=False)


def test_tokens_of_the_same_text_are_matched_across_vocabularies(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    from synth.tiny_model import build_tiny_model

    a = AutoTokenizer.from_pretrained(tiny_model)
    b = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "other", vocab_size=1024))
    mapping = token_map(a, b)
    va, vb = a.get_vocab(), b.get_vocab()
    assert len(mapping) == max(va.values()) + 1
    for text, i in va.items():
        assert mapping[i] == vb.get(text, -1), text
    assert (mapping >= 0).sum() > 100, "the two vocabularies share most short pieces"
    assert all(a.convert_ids_to_tokens(i) == b.convert_ids_to_tokens(int(j)) for i, j in enumerate(mapping) if j >= 0)


def test_two_tokenizations_line_up_where_tokens_start_at_the_same_character(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    from synth.tiny_model import build_tiny_model

    a = AutoTokenizer.from_pretrained(tiny_model)
    b = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "other", vocab_size=1024))
    text = "The quick brown fox jumps over the lazy dog, 2021-03-03."
    ids_a, ids_b = a(text, add_special_tokens=False)["input_ids"], b(text, add_special_tokens=False)["input_ids"]
    assert ids_a != ids_b, "two different tokenizations of one text"
    starts_a, starts_b = char_starts(a, ids_a), char_starts(b, ids_b)
    pairs = cross_positions(a, ids_a, b, ids_b)
    assert pairs and pairs[0] == (0, 0)
    assert all(starts_a[i] == starts_b[j] for i, j in pairs)
    assert len(pairs) == len(set(starts_a) & set(starts_b))
    # the offsets' answer (linear) is the prefixes' (quadratic), with special tokens and
    # non-ASCII text too
    for tok in (a, b):
        for sample in (text, "  Café — naïve 日付 2021-03-03\n", "x"):
            ids = [tok.all_special_ids[0], *tok(sample, add_special_tokens=False)["input_ids"], tok.all_special_ids[0]]
            prefixes = [len(tok.decode(ids[:i], skip_special_tokens=True)) for i in range(len(ids))]
            assert char_starts(tok, ids) == prefixes, sample
    # a text that parts: nothing lined up past the first different character
    cut = cross_positions(a, ids_a, b, b("The quick brown cat", add_special_tokens=False)["input_ids"])
    assert all(starts_a[i] < len("The quick brown ") for i, _ in cut)


@pytest.mark.slow
def test_a_teacher_with_another_vocabulary_is_refused_then_distilled_by_text(tmp_path, tiny_model, vllm_backend):
    """The teacher (the tiny model) and a student with another vocabulary: top-k KL on token ids
    is refused with the key that allows it named; with cross_tokenizer the student trains on
    the teacher's top k mapped to its own tokens, at the positions both tokenizations share."""
    from sft.train import run_train
    from synth.curate import run_curate
    from synth.generate import run_generate
    from synth.tiny_model import build_tiny_model

    other = build_tiny_model(tmp_path / "other-student", vocab_size=1024)
    path = _kd_recipe(tmp_path, tiny_model, student=other)
    plan = load_plan(path)
    run_generate(plan, vllm_backend, progress=False)
    run_curate(plan, progress=False)
    with pytest.raises(ValueError, match="use another vocabulary than the student") as err:
        run_train(plan, progress=False)
    assert "sft.distill.cross_tokenizer: true" in str(err.value)
    metrics = run_train(load_plan(path, ["sft.distill.cross_tokenizer=true"]), progress=False)
    counts = metrics["data"]["distill"]
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert counts.get("with", 0) + counts.get("partly aligned", 0) >= len(rows) // 2, counts
    kls = [h["kd_kl"] for h in metrics["log_history"] if "kd_kl" in h]
    assert len(kls) == 3 and all(0 < kl < 20 for kl in kls), kls
    # the teacher's tokenizer must be the one the logprobs were written in
    with pytest.raises(ValueError, match="not in the vocabulary of the teacher tokenizer given"):
        run_train(load_plan(path, ["sft.distill.cross_tokenizer=true", f"sft.distill.teacher={other}"]), progress=False)


def test_distill_options_are_validated(tmp_path, tiny_model):
    for override, message in [
        ("sft.distill.loss=reverse_kl", "sft.distill.loss: unknown 'reverse_kl'"),
        ("sft.distill.alpha=1.5", "sft.distill.alpha: must be in [0, 1]"),
        ("sft.distill={temperature: 2, tail: true}", "sft.distill.tail: the tail bucket needs temperature 1.0"),
        ("sft.distill.beta=-0.5", "sft.distill.beta: must be in [0, 1]"),
        ("sft.distill={cross_tokenizer: true, temperature: 2, tail: false}", "sft.distill.cross_tokenizer: matches the "
         "captured probabilities as they are"),
    ]:
        with pytest.raises(ValueError) as err:
            load_recipe(_kd_recipe(tmp_path, tiny_model), [override])
        assert message in str(err.value)
    data = yaml.safe_load(_kd_recipe(tmp_path, tiny_model).read_text())
    assert json.dumps(data["sft"]["distill"]) == '{"top_k": 5}'


def test_the_divergence_defaults_follow_the_loss_and_the_vocabulary(tmp_path, tiny_model):
    """topk_kl on the teacher's vocabulary: softened targets (temperature 2, the top k
    renormalised), the sweep's best; a tail bucket, another vocabulary or on-policy sampling:
    temperature 1. The train key holds the resolved values, so a changed default retrains."""
    from sft.train import train_key

    resolved = {
        (): (2.0, False, 0.0), (("tail", True),): (1.0, True, 0.0), (("temperature", 1.0),): (1.0, True, 0.0),
        (("cross_tokenizer", True),): (1.0, True, 0.0), (("loss", "on_policy"),): (1.0, True, 0.5),
        (("temperature", 3.0), ("beta", 1.0)): (3.0, False, 1.0),
    }
    for options, (temperature, tail, beta) in resolved.items():
        d = DistillOptions(**dict(options))
        assert (d.kd_temperature, d.kd_tail, d.divergence_beta) == (temperature, tail, beta), options
    path = _kd_recipe(tmp_path, tiny_model)
    assert train_key(load_plan(path))["divergence"] == {"temperature": 2.0, "tail": False, "beta": 0.0}
    assert train_key(load_plan(path, ["sft.distill.temperature=1.0"]))["divergence"]["tail"] is True


@pytest.mark.slow
def test_one_recipe_captures_and_distils_with_synth_run(tmp_path, tiny_model):
    """sampling.logprobs + sft.distill: `synth run` generates with logprobs, curates (a PII
    redaction breaks one answer's tie to its logprobs, and the card says so), trains with KD.
    Then, as docs/distillation.md's on-policy command does from the demo's student: `synth run`
    again with sft.model at the KD student, another sft.output_dir and sft.distill's loss
    on_policy: the data stages are skipped and the KD student learns from the teacher's scores
    of its own samples."""
    import subprocess
    import sys

    path = _kd_recipe(tmp_path, tiny_model)
    data = yaml.safe_load(path.read_text())
    seeds = [{"question": f"Tell me about item {i}."} for i in range(23)] + [{"question": "Mail jane.doe@example.com?"}]
    write_jsonl(tmp_path / "seeds.jsonl", seeds)
    data["curate"] = {"filters": ["empty", {"name": "pii"}], "eval_fraction": 0.2}
    data["sft"].update(eval_limit=2, eval_max_new_tokens=4, eval_engine="transformers", full_finetune=True)
    path.write_text(yaml.safe_dump(data))
    res = subprocess.run([sys.executable, "-m", "synth.cli", "run", str(path), "--no-progress"],
                         capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "out"
    report = {s["stage"]: s for s in json.loads((out / "report.json").read_text())["stages"]}
    assert all(s["status"] == "done" for s in report.values()), report
    stats = json.loads((out / "stats.json").read_text())
    assert stats["logprobs"] == {"ok": stats["kept"] - 1, "changed": 1, "missing": 0}, "the redacted chat is changed"
    assert "teacher logprobs (`logprobs.bin`, the top 5 per answer token, captured" in (out / "README.md").read_text()
    metrics = json.loads((out / "student" / "metrics.json").read_text())
    assert sum(metrics["data"]["distill"].values()) == stats["train"]
    assert any("kd_kl" in h for h in metrics["log_history"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["logprobs"]["bytes_per_1k_answer_tokens"] > 0

    on_policy = ["--set", f"sft.model={out / 'student' / 'model'}", "--set", f"sft.output_dir={out / 'student-onpolicy'}",
                 "--set", "sft.max_steps=2", "--set", "sft.learning_rate=0.0002",
                 "--set", "sft.distill={loss: on_policy, max_new_tokens: 4}"]
    res = subprocess.run([sys.executable, "-m", "synth.cli", "run", str(path), "--no-progress", *on_policy],
                         capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-3000:]
    report = {s["stage"]: s for s in json.loads((out / "report.json").read_text())["stages"]}
    assert ", 0 new, 0 failed" in report["generate"]["summary"] and report["curate"]["status"] == "skipped", report
    assert report["train"]["status"] == report["eval"]["status"] == "done", report
    metrics = json.loads((out / "student-onpolicy" / "metrics.json").read_text())
    assert metrics["data"]["distill"] == {"on_policy prompts": stats["train"]} and metrics["global_step"] == 2
    assert (out / "student-onpolicy" / "model" / "model.safetensors").is_file()


def test_cross_tokenizer_logprobs_must_name_their_vocabulary(tmp_path, tiny_model):
    """Logprobs written without a vocabulary digest (an API teacher's) cannot be mapped to the
    student's tokens: one error naming how to capture them again."""
    from transformers import AutoTokenizer

    from sft.distill import build_targets
    from synth.logprobs import UNKNOWN_VOCAB, LogprobAppender, TopK, vocab_digest

    tok = AutoTokenizer.from_pretrained(tiny_model)
    messages = [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "4"}]
    answer = tok("4", add_special_tokens=False)["input_ids"]
    topk = TopK.from_lists(answer, [[(answer[0], -0.1)]], 1)
    opts = DistillOptions(top_k=1, cross_tokenizer=True)
    for vocab, error in ((UNKNOWN_VOCAB, "do not say which vocabulary"), (b"\1" * 8, "not in the vocabulary of the teacher")):
        sidecar = tmp_path / f"{vocab.hex()}.bin"
        with LogprobAppender(sidecar) as sink:
            sink.append("ab" * 16, messages, topk, vocab)
        with pytest.raises(ValueError, match=error):
            build_targets(opts, sidecar, [(messages, "ab" * 16)], tok, tok)
    sidecar = tmp_path / "right.bin"
    with LogprobAppender(sidecar) as sink:
        sink.append("ab" * 16, messages, topk, vocab_digest(tok))
    assert build_targets(opts, sidecar, [(messages, "ab" * 16)], tok, tok).counts["with"] == 1
