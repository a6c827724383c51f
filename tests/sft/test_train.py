"""sft train on CPU: a real TRL + PEFT run on the tiny local model with real teacher text."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from sft.train import prepare, run_train
from synth.plan import load_plan

from conftest import HANG_S, TEST_DATA, _free_port, make_recipe, write_jsonl

pytestmark = pytest.mark.slow


def teacher_rows(n: int, max_chars: int = 400):
    rows = []
    for line in (TEST_DATA / "text-davinci-003_predictions.jsonl").read_text().splitlines():
        r = json.loads(line)
        if len(r["prompt"]) + len(r["response"]) < max_chars and r["response"].strip():
            rows.append({"messages": [{"role": "user", "content": r["prompt"]},
                                      {"role": "assistant", "content": r["response"].strip()}]})
        if len(rows) == n:
            break
    return rows


def sft_recipe(tmp_path, tiny_model, rows=None, **sft):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    write_jsonl(out / "train.jsonl", rows if rows is not None else teacher_rows(40))
    path = make_recipe(tmp_path, tiny_model)
    data = yaml.safe_load(path.read_text())
    data["sft"] = {"model": str(tiny_model), "max_steps": 30, "batch_size": 8, "learning_rate": 3e-3,
                   "logging_steps": 5, "save_steps": 100, "max_length": 512, "warmup_ratio": 0.0, **sft}
    path.write_text(yaml.safe_dump(data))
    return path


def _dir_digest(path):
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def test_lora_training_lowers_the_loss_and_leaves_the_base_alone(tmp_path, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_digest = _dir_digest(tiny_model)
    metrics = run_train(load_plan(sft_recipe(tmp_path, tiny_model)), progress=False)
    assert metrics["global_step"] == 30
    assert metrics["last_loss"] < metrics["first_loss"] - 0.3, (metrics["first_loss"], metrics["last_loss"])
    student = tmp_path / "out" / "student"
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/chat_template.jinja",
                 "sft_config.yaml", "metrics.json", "loss.png"):
        assert (student / name).exists(), name
    assert _dir_digest(tiny_model) == base_digest, "the base model's files must not change"

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, student / "adapter")
    lora = {n: p for n, p in tuned.named_parameters() if "lora_" in n}
    assert lora and any(p.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n), "LoRA B starts at 0: it must have moved"
    fresh_params = dict(fresh.named_parameters())
    for name, param in tuned.base_model.model.named_parameters():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        assert torch.equal(param, fresh_params[key]), f"base weight {key} changed"
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    assert not torch.allclose(tuned(ids).logits, fresh(ids).logits)


def _trainable_segments(batch):
    """Per packed or padded sequence: the token ids whose labels are trained on."""
    labels, ids = batch["labels"], batch["input_ids"]
    segments = []
    if "position_ids" in batch:  # packed: a position reset starts a new example
        pos = batch["position_ids"][0].tolist()
        starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
        for a, b in zip(starts, starts[1:], strict=False):
            segments.append([t for t, lab in zip(ids[0, a:b].tolist(), labels[0, a:b].tolist(), strict=True) if lab != -100])
    else:
        for row_ids, row_labels in zip(ids.tolist(), labels.tolist(), strict=True):
            segments.append([t for t, lab in zip(row_ids, row_labels, strict=True) if lab != -100])
    return segments


@pytest.mark.parametrize("packing", [False, True])
def test_label_mask_is_exactly_the_assistant_turns_and_end_of_turn(tmp_path, tiny_model, packing):
    rows = teacher_rows(12)
    p = prepare(load_plan(sft_recipe(tmp_path, tiny_model, rows=rows, packing=packing)), progress=False)
    tok = p.tokenizer
    expected = {r["messages"][-1]["content"] + "<|im_end|>" for r in rows}
    trainer = p.trainer
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    segments = _trainable_segments(batch)
    decoded = [tok.decode(seg) for seg in segments if seg]
    assert len(decoded) == len(rows)
    assert set(decoded) == expected
    assert p.packing is packing


def _padding_share(trainer):
    """Share of padding in one epoch of the trainer's padded batches; checks every example is seen once."""
    real = padded = 0
    for batch in trainer.get_train_dataloader():
        real += int(batch["attention_mask"].sum())
        padded += batch["attention_mask"].numel()
    assert real == sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    return 1 - real / padded


def test_group_by_length_cuts_the_padding(tmp_path, tiny_model):
    rows = teacher_rows(200, max_chars=1500)  # from one line to a page: mixed lengths
    shuffled = prepare(load_plan(sft_recipe(tmp_path, tiny_model, rows=rows, batch_size=4)), progress=False)
    assert not shuffled.packing and not shuffled.grouped, "off by default"
    grouped = prepare(load_plan(sft_recipe(tmp_path, tiny_model, rows=rows, batch_size=4, group_by_length=True)), progress=False)
    assert grouped.grouped
    grouped_share, shuffled_share = _padding_share(grouped.trainer), _padding_share(shuffled.trainer)
    assert grouped_share < 0.5 * shuffled_share, (grouped_share, shuffled_share)
    packed = prepare(load_plan(sft_recipe(tmp_path, tiny_model, rows=rows, packing=True, group_by_length=True)), progress=False)
    assert packed.packing and not packed.grouped, "packed rows are full: nothing to group"


def test_training_never_hashes_a_dataset_table(tmp_path, tiny_model, monkeypatch):
    """On a GPU machine under Python 3.12, fingerprinting a new Dataset (dill pickling its
    Arrow table and features) once failed; sft must not depend on it."""
    import datasets.arrow_dataset

    def unpicklable(dataset):
        raise TypeError("cannot pickle 'pyarrow.lib.DataType' object (simulated)")

    monkeypatch.setattr(datasets.arrow_dataset, "generate_fingerprint", unpicklable)
    path = sft_recipe(tmp_path, tiny_model, max_steps=2, eval_steps=1)
    write_jsonl(tmp_path / "out" / "eval.jsonl", teacher_rows(44)[40:])
    metrics = run_train(load_plan(path), progress=False)
    assert metrics["global_step"] == 2 and metrics["eval_loss"] is not None


def test_resume_from_the_last_checkpoint_of_the_same_inputs(tmp_path, tiny_model):
    import shutil

    path = sft_recipe(tmp_path, tiny_model, max_steps=6, save_steps=2)
    first = run_train(load_plan(path), progress=False)
    assert first["global_step"] == 6 and first["resumed_from"] is None
    ckpts = tmp_path / "out" / "student" / "checkpoints"
    shutil.rmtree(ckpts / "checkpoint-6")  # as if the run had stopped after step 4
    second = run_train(load_plan(path), progress=False)
    assert second["resumed_from"].endswith("checkpoint-4") and second["global_step"] == 6


@pytest.mark.parametrize("change", ["data", "lora_rank"])
def test_checkpoints_of_other_inputs_are_never_resumed(tmp_path, tiny_model, change):
    """A finished run's checkpoints, then new data (or a new LoRA rank): training starts
    fresh (a "resume" would train 0 steps and certify the old weights for the new data, or
    fail to load the old rank), the old checkpoints moved aside, the stamp names the new data."""
    from peft import PeftConfig

    from sft.train import train_key
    from synth.stage import read_stamp

    path = sft_recipe(tmp_path, tiny_model, max_steps=4, save_steps=2)
    first = run_train(load_plan(path), progress=False)
    assert first["global_step"] == 4
    student = tmp_path / "out" / "student"
    first_weights = (student / "adapter" / "adapter_model.safetensors").read_bytes()
    overrides = []
    if change == "data":
        write_jsonl(tmp_path / "out" / "train.jsonl", teacher_rows(60)[20:])
    else:
        overrides = ["sft.lora.r=4", "sft.lora.alpha=8"]
    plan = load_plan(path, overrides)
    second = run_train(plan, progress=False)
    assert second["resumed_from"] is None and second["global_step"] == 4
    assert (student / "adapter" / "adapter_model.safetensors").read_bytes() != first_weights, "new weights were trained"
    assert (student / "checkpoints.previous" / "checkpoint-4").is_dir(), "the old checkpoints are kept aside"
    assert read_stamp(student / "trained_on.json") == train_key(plan)
    assert json.loads((student / "checkpoints" / "key.json").read_text()) == train_key(plan)
    if change == "lora_rank":
        assert PeftConfig.from_pretrained(student / "adapter").r == 4


def test_save_and_reload_give_the_same_outputs(tmp_path, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    p = prepare(load_plan(sft_recipe(tmp_path, tiny_model, max_steps=5)), progress=False)
    from sft.train import train_and_save

    train_and_save(p)
    ids = torch.tensor([[1, 7, 42, 99, 2, 5]])
    p.trainer.model.eval()
    with torch.no_grad():
        before = p.trainer.model(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
        reloaded = PeftModel.from_pretrained(base, tmp_path / "out" / "student" / "adapter").eval()
        after = reloaded(input_ids=ids).logits
    assert torch.allclose(before, after, atol=1e-5)


@pytest.mark.parametrize(
    "rows_or_text, sft, message",
    [
        ("", {}, "has no rows; nothing to train on"),
        ('{"text": "plain text row"}\n', {}, "line 1 has no 'messages'"),
        ('{"messages": [{"role": "user", "content": "hi"}]}\n', {}, "must end with an assistant turn"),
        ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}\n', {}, "an assistant turn is empty"),
        (None, {"model": "/nonexistent/student"}, "sft.model: /nonexistent/student does not exist"),
        (None, {"lora": {"target_modules": ["no_such_proj"]}}, "sft.lora.target_modules"),
        (None, {"lora": {"alpah": 8}}, "sft.lora.alpah: unknown key. Did you mean 'alpha'?"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, tiny_model, rows_or_text, sft, message):
    path = sft_recipe(tmp_path, tiny_model, **sft)
    if rows_or_text is not None:
        (tmp_path / "out" / "train.jsonl").write_text(rows_or_text)
    with pytest.raises(ValueError) as err:
        prepare(load_plan(path), progress=False)
    assert message in str(err.value)


def test_template_without_generation_markers(tmp_path, tiny_model):
    plain = tmp_path / "plain.jinja"
    plain.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|im_end|>\n{% endfor %}")
    path = sft_recipe(tmp_path, tiny_model, chat_template=str(plain))
    with pytest.raises(ValueError, match=r"no \{% generation %\} markers"):
        prepare(load_plan(path), progress=False)


def test_cli_error_is_one_line(tmp_path, tiny_model):
    path = sft_recipe(tmp_path, tiny_model, model=str(tmp_path / "missing-student"))
    res = subprocess.run([sys.executable, "-m", "sft.cli", "train", str(path)], capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.startswith("sft: error:")]
    assert len(lines) == 1 and "missing-student does not exist" in lines[0]


@pytest.mark.parametrize("attn", ["flex_attention", "sdpa"])
def test_packed_rows_keep_examples_apart(tiny_model, attn):
    """What packing relies on: with position_ids restarting at each example and no attention
    mask (TRL's padding-free batches, use_cache off as in training), transformers masks
    attention across examples, so a packed row gives each example's logits alone
    (forward only: FlexAttention has no CPU backward)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=attn).eval()
    a, b = torch.randint(10, 500, (1, 5)), torch.randint(10, 500, (1, 7))
    packed_ids = torch.cat([a, b], dim=1)
    positions = torch.cat([torch.arange(5), torch.arange(7)])[None]
    with torch.no_grad():
        packed = model(input_ids=packed_ids, position_ids=positions, use_cache=False).logits[0]
        alone_a, alone_b = model(input_ids=a).logits[0], model(input_ids=b).logits[0]
    assert torch.allclose(packed[:5], alone_a, atol=1e-5)
    assert torch.allclose(packed[5:], alone_b, atol=1e-5), "the second example saw the first"


def _train_with_two_processes(tmp_path, tiny_model, launcher: list[str]):
    """`sft train` under a two-process launcher, 5 steps of batch 4 over 40 rows: it succeeds,
    one process reports, each step sees both processes' batches, the adapter loads. Returns
    the student dir."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path = sft_recipe(tmp_path, tiny_model, rows=teacher_rows(40), max_steps=5, batch_size=4, logging_steps=1)
    res = subprocess.run([*launcher, "-m", "sft.cli", "train", str(path), "--no-progress"],
                         capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("sft train: 5 steps") == 1, res.stdout
    student = tmp_path / "out" / "student"
    metrics = json.loads((student / "metrics.json").read_text())
    epochs = [h["epoch"] for h in metrics["log_history"] if "loss" in h]
    assert epochs[-1] == pytest.approx(5 * 4 * 2 / 40), "two processes: 2 x 4 examples per step"
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    PeftModel.from_pretrained(base, student / "adapter")
    return student


def test_several_processes_under_torchrun(tmp_path, tiny_model):
    """`sft train` unchanged under a multi-process launcher (torchrun: what `accelerate launch
    --multi_gpu` runs; on CPU the processes talk over gloo): data parallel (each step sees
    world_size x batch examples), one process reports and writes, the adapter loads."""
    from pathlib import Path

    torchrun = Path(sys.executable).parent / "torchrun"
    assert torchrun.exists(), "torchrun ships with torch"
    student = _train_with_two_processes(tmp_path, tiny_model, [str(torchrun), "--standalone", "--nproc_per_node", "2"])
    assert (student / "trained_on.json").exists()
    train_log = (student / "train.log").read_text()
    assert train_log.count("data: 40 rows") == 1, "one writer for the log"


@pytest.mark.parametrize("config", ["ddp.yaml", "fsdp.yaml"])
def test_the_shipped_accelerate_configs_train_with_two_processes(tmp_path, tiny_model, config):
    """configs/accelerate/*.yaml as shipped, with only what a CPU machine changes (use_cpu, no
    bf16, two processes, a free port): two processes share each step's data, one writes, the
    adapter loads (FSDP gathers it on save)."""
    from pathlib import Path

    shipped = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "accelerate" / config).read_text())
    shipped.update(use_cpu=True, mixed_precision="no", num_processes=2, main_process_port=_free_port())
    launch = tmp_path / config
    launch.write_text(yaml.safe_dump(shipped))
    accelerate = Path(sys.executable).parent / "accelerate"
    _train_with_two_processes(tmp_path, tiny_model, [str(accelerate), "launch", "--config_file", str(launch)])


def test_training_leaves_a_process_group_it_did_not_launch(tmp_path, tiny_model):
    """An in-process vLLM engine holds a one-process torch.distributed group; training in the
    same process must not close it (only a launcher's group, WORLD_SIZE > 1, is closed)."""
    path = sft_recipe(tmp_path, tiny_model, max_steps=2)
    script = (
        "import sys, torch.distributed as dist\n"
        "dist.init_process_group('gloo', init_method='tcp://127.0.0.1:0', rank=0, world_size=1)\n"
        "from sft.train import run_train\nfrom synth.plan import load_plan\n"
        "run_train(load_plan(sys.argv[1]), progress=False)\n"
        "assert dist.is_initialized(), 'the group was closed'\n"
        "dist.destroy_process_group()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    res = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=HANG_S, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
