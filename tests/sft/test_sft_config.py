from pathlib import Path

import pytest

from sft.config import LoraOptions, SftConfig
from synth.configtools import from_dict, reference
from synth.plan import load_plan

from conftest import make_recipe

REPO = Path(__file__).resolve().parents[2]


def test_the_recipe_reference_names_every_sft_key():
    """docs/reference/recipe.md is generated (tests/test_reference.py keeps it byte-identical);
    every sft key, nested ones included, has its row there."""
    page = (REPO / "docs" / "reference" / "recipe.md").read_text()
    keys = [k for k, *_ in reference(SftConfig)]
    assert {f"lora.{k}" for k, *_ in reference(LoraOptions)} <= set(keys)
    missing = [k for k in keys if f"`sft.{k}`" not in page]
    assert not missing, missing


@pytest.mark.parametrize(
    "section, message",
    [
        ({}, "sft.model: required key is missing"),
        ({"model": "m", "eval_verifier": "no_such_module:f"}, "sft.eval_verifier: cannot import no_such_module"),
        ({"model": "m", "eval_judge": "/nonexistent/judge.yaml"}, "sft.eval_judge: /nonexistent/judge.yaml does not exist"),
        ({"model": "m", "overlong": "cut"}, "sft.overlong: unknown 'cut'"),
        ({"model": "m", "packing": "sometimes"}, "sft.packing: unknown 'sometimes'"),
        ({"model": "m", "group_by_length": "yes"}, "sft.group_by_length: expected true or false, got 'yes'"),
        ({"model": "m", "lora": {"dropout": 1.5}}, "sft.lora.dropout: must be in [0, 1)"),
        ({"model": "m", "batch_size": 0}, "sft.batch_size: must be at least 1"),
        ({"model": "m", "warmup_ratio": 2}, "sft.warmup_ratio: must be in [0, 1)"),
        ({"modle": "m"}, "sft.modle: unknown key. Did you mean 'model'?"),
    ],
)
def test_invalid_sft_config(tmp_path, section, message):
    path = make_recipe(tmp_path, "org/unused", extra={"sft": section})
    with pytest.raises(ValueError) as err:
        load_plan(path)  # the sft section's keys (load_recipe), then the eval verifier (resolve)
    assert message in str(err.value)


def test_packing_accepts_yaml_booleans():
    assert from_dict(SftConfig, {"model": "m", "packing": True}).packing is True
    assert from_dict(SftConfig, {"model": "m"}).packing == "auto"


def test_incomplete_checkpoints_are_set_aside(tmp_path):
    from sft.train import last_complete_checkpoint

    ckpts = tmp_path / "checkpoints"
    for step, complete in ((5, True), (10, True), (15, False)):
        d = ckpts / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / "adapter_model.safetensors").write_bytes(b"x")
        if complete:
            (d / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    (ckpts / "checkpoint-10" / "trainer_state.json").write_text('{"global_st')  # torn while saving
    assert last_complete_checkpoint(ckpts) == str(ckpts / "checkpoint-5")
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-5", "incomplete-checkpoint-10", "incomplete-checkpoint-15"]
    assert last_complete_checkpoint(tmp_path / "none") is None


def test_loss_summary_when_no_step_was_logged():
    """Fewer steps than logging_steps: no logged loss, the run's mean loss instead (no crash)."""
    from sft.train import loss_summary

    assert loss_summary({"first_loss": 2.0, "last_loss": 0.5}) == "loss 2.0000 -> 0.5000"
    assert loss_summary({"first_loss": None, "last_loss": None, "train": {"train_loss": 1.25}}) == "mean loss 1.2500"
    assert loss_summary({"first_loss": None, "train": {}}) == "no loss logged"


@pytest.mark.parametrize("attn, packed", [
    ("flash_attention_2", True), ("flash_attention_3", True), ("kernels-community/flash-attn", True),
    ("flex_attention", True), ("sdpa", False), ("eager", False), ("", False),
])
def test_packing_auto_only_where_attention_needs_no_dense_mask(attn, packed):
    from sft.train import handles_packed_rows

    assert handles_packed_rows(attn) is packed


def test_an_empty_curated_eval_split_is_no_eval_split(tmp_path):
    """A small dataset can leave curate.eval_fraction's share empty: training goes on without
    held-out data instead of failing on an empty file."""
    from sft.config import SftConfig
    from synth.layout import Layout

    layout = Layout(tmp_path)
    cfg = SftConfig(model="m")
    assert cfg.eval_path(layout) is None
    layout.eval.write_text("")
    assert cfg.eval_path(layout) is None
    layout.eval.write_text('{"messages": []}\n')
    assert cfg.eval_path(layout) == layout.eval
