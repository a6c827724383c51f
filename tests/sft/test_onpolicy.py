"""On-policy distillation (sft.distill.loss: on_policy): the student samples, the teacher scores."""

import json

import pytest

from synth.config import load_recipe
from synth.plan import load_plan

from conftest import make_recipe, write_jsonl


def _on_policy_recipe(tmp_path, recipe_teacher, student, steps=6, **distill):
    rows = [{"messages": [{"role": "user", "content": f"Tell me about item {i}."},
                          {"role": "assistant", "content": "A teacher's answer that on-policy training never reads."}]}
            for i in range(16)]
    tmp_path.mkdir(parents=True, exist_ok=True)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    return make_recipe(tmp_path, recipe_teacher, extra={"sft": {
        "model": str(student), "train": str(train), "full_finetune": True, "max_steps": steps, "batch_size": 4,
        "logging_steps": 1, "save_steps": 100, "max_length": 256, "learning_rate": 3e-3,
        "distill": {"loss": "on_policy", "max_new_tokens": 8, **distill}}})


def _losses(metrics):
    return [h["loss"] for h in metrics["log_history"] if "loss" in h]


@pytest.mark.slow
def test_on_policy_distillation_scores_the_students_samples_with_the_teacher(tmp_path, tiny_model):
    """The student is the teacher itself: the divergence on its samples is ~0. Another
    student (other random weights, the same tokenizer): the divergence is well above that
    and falls as the student learns the teacher's distribution on its own samples."""
    from sft.train import run_train
    from synth.tiny_model import build_tiny_model

    same = run_train(load_plan(_on_policy_recipe(tmp_path / "same", tiny_model, tiny_model, steps=1)), progress=False)
    assert same["data"]["distill"] == {"on_policy prompts": 16}
    assert abs(_losses(same)[0]) < 1e-3, _losses(same)

    student = build_tiny_model(tmp_path / "student", seed=1)
    path = _on_policy_recipe(tmp_path / "other", tiny_model, student, steps=12)
    metrics = run_train(load_plan(path), progress=False)
    losses = _losses(metrics)
    assert len(losses) == 12 and losses[0] > 0.01, losses
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses
    assert (tmp_path / "other" / "out" / "student" / "model" / "model.safetensors").exists()
    assert metrics["global_step"] == 12


def _permuted_twin(model_dir, dest):
    """The same model under another vocabulary: its ordinary tokens' ids shuffled (special
    tokens keep theirs), the embedding and output rows moved with them. Every text is then the
    same tokens with other ids, and each next-token distribution the same over token texts."""
    import random

    import torch
    from transformers import AutoModelForCausalLM

    spec = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    special = {t["id"] for t in spec["added_tokens"]}
    ordinary = sorted(i for i in vocab.values() if i not in special)
    shuffled = ordinary[:]
    random.Random(0).shuffle(shuffled)
    new_id = dict(zip(ordinary, shuffled, strict=True))
    spec["model"]["vocab"] = {text: new_id.get(i, i) for text, i in vocab.items()}
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    source = list(range(model.config.vocab_size))  # source[new id] = old id
    for old, new in new_id.items():
        source[new] = old
    with torch.no_grad():
        for weights in {id(w): w for w in (model.get_input_embeddings().weight, model.get_output_embeddings().weight)}.values():
            weights.copy_(weights[torch.tensor(source)])
    model.save_pretrained(dest)
    for name in model_dir.iterdir():
        if name.suffix in (".json", ".jinja", ".txt") and not (dest / name.name).exists():
            (dest / name.name).write_bytes(name.read_bytes())
    (dest / "tokenizer.json").write_text(json.dumps(spec))
    return dest


@pytest.mark.slow
def test_a_teacher_with_another_tokenizer_is_refused_then_distilled_on_policy_through_gold(tmp_path, tiny_model):
    """Token by token, another vocabulary is refused, naming the key. With cross_tokenizer TRL's
    GOLDTrainer scores the student's own samples through the teacher's tokenizer: a teacher
    that is the student under shuffled token ids (another vocabulary, the same distributions
    over text) finds ~0 divergence, so the samples were re-tokenized and matched by text;
    another model (other weights, the teacher's vocabulary) finds a real one, and trains."""
    from transformers import AutoTokenizer

    from sft.train import run_train
    from synth.logprobs import vocab_digest
    from synth.tiny_model import build_tiny_model

    twin = _permuted_twin(tiny_model, tmp_path / "twin-teacher")
    assert vocab_digest(AutoTokenizer.from_pretrained(twin)) != vocab_digest(AutoTokenizer.from_pretrained(tiny_model))
    path = _on_policy_recipe(tmp_path / "twin", tiny_model, tiny_model, steps=1, teacher=str(twin))
    with pytest.raises(ValueError, match="has another vocabulary than the student") as err:
        run_train(load_plan(path), progress=False)
    assert "sft.distill.cross_tokenizer: true" in str(err.value)
    same = run_train(load_plan(path, ["sft.distill.cross_tokenizer=true"]), progress=False)
    assert abs(_losses(same)[0]) < 1e-3 and "on_policy_loss" in same["log_history"][0], same["log_history"]

    student = build_tiny_model(tmp_path / "student", seed=1)
    path = _on_policy_recipe(tmp_path / "other", tiny_model, student, steps=4, teacher=str(twin))
    metrics = run_train(load_plan(path, ["sft.distill.cross_tokenizer=true"]), progress=False)
    losses = _losses(metrics)
    assert len(losses) == 4 and min(losses) > 0.01, losses
    assert (tmp_path / "other" / "out" / "student" / "model" / "model.safetensors").exists()


def test_on_policy_teacher_and_its_stage_key(tmp_path, tiny_model):
    """The teacher defaults to the recipe's local teacher and is part of the train key; an API
    teacher cannot score in the training process: an error naming sft.distill.teacher."""
    from sft.train import train_key

    path = _on_policy_recipe(tmp_path, tiny_model, tiny_model)
    key = train_key(load_plan(path))
    assert "teacher" in key and "teacher_logprobs" not in key
    other = train_key(load_plan(path, [f"sft.distill.teacher={tmp_path}/another-model"]))
    assert other["teacher"] != key["teacher"]
    assert json.dumps(train_key(load_plan(path, ["sft.distill.beta=1.0"]))["sft"]) != json.dumps(key["sft"])
    api = load_plan(path, ["teacher.backend=openai", "teacher.model=some-hosted-model"])
    with pytest.raises(ValueError, match="sft.distill.teacher: on_policy needs a teacher it can run in the training process"):
        train_key(api)
    with pytest.raises(ValueError, match=r"sft.distill.beta: must be in \[0, 1\]"):
        load_recipe(path, ["sft.distill.beta=2"])
    # The tail bucket's temperature rule is topk_kl's; on_policy samples at any temperature.
    assert load_recipe(path, ["sft.distill.temperature=0.7"]).sft.distill.temperature == 0.7
