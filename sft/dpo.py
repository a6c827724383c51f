"""`sft dpo`: preference training (TRL's DPOTrainer) of the SFT student on OUTPUT/pairs.jsonl.

The reference model is the SFT student itself. A LoRA student's adapter is trained further
(`sft.dpo.learning_rate`, `beta`, `loss_type`; TRL keeps a frozen copy of it as the
reference): the result is an adapter over the same base. A fully fine-tuned student gets a
new LoRA adapter (`sft.lora`) over its weights (the reference: the adapter switched off).
Either goes to STUDENT/dpo (its own checkpoints, metrics and stamp); `synth run` evaluates
it there (dpo_recipe says how `sft eval` sees it). Resumable like `sft train`: checkpoints carry the
stage key (the pairs' bytes, the SFT adapter's weights, the dpo and training settings)
and a rerun resumes from the last complete one of the same key.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from synth.config import Recipe
from synth.layout import StudentLayout

logger = logging.getLogger(__name__)


def dpo_layout(recipe: Recipe) -> StudentLayout:
    from sft.config import sft_of

    cfg = sft_of(recipe)
    return StudentLayout(Path(cfg.dpo.output_dir) if cfg.dpo.output_dir else cfg.student(recipe.layout).root / "dpo")


def pairs_path(recipe: Recipe) -> Path:
    from sft.config import sft_of

    cfg = sft_of(recipe)
    return Path(cfg.dpo.pairs) if cfg.dpo.pairs else recipe.layout.pairs


def dpo_key(recipe: Recipe) -> dict[str, Any]:
    """What the DPO student depends on: the pairs, the SFT student's weights, the settings."""
    from sft.config import sft_of
    from synth.configtools import canonical_dict
    from synth.fingerprint import fingerprint_dir, model_identity
    from synth.runtime import file_sha256

    cfg = sft_of(recipe)
    sft_student = cfg.student(recipe.layout)
    return {"pairs": file_sha256(pairs_path(recipe)), "sft_student": fingerprint_dir(sft_student.trained),
            "student": model_identity(cfg.model), "dpo": canonical_dict({**canonical_dict(cfg.dpo), "output_dir": None}),
            "training": canonical_dict({k: getattr(cfg, k) for k in ("max_length", "batch_size", "grad_accum", "seed",
                                                                      "warmup_ratio", "weight_decay")})}


def dpo_recipe(recipe: Recipe) -> Recipe:
    """The recipe whose student is the DPO student (for `sft eval` and `sft merge` of it)."""
    import dataclasses

    from sft.config import sft_of

    cfg = sft_of(recipe)
    changes: dict[str, Any] = {"output_dir": str(dpo_layout(recipe).root)}
    if cfg.full_finetune:  # the adapter's base is the fully fine-tuned SFT student
        changes.update(model=str(cfg.student(recipe.layout).trained), full_finetune=False)
    return dataclasses.replace(recipe, sft=dataclasses.replace(cfg, **changes))


def run_dpo(recipe: Recipe, progress: bool = True, fresh: bool = False, key: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train the DPO student; returns its metrics (also in STUDENT/dpo/metrics.json). `key`:
    the stage key when the caller computed it already (synth run)."""
    import dataclasses

    from sft.config import sft_of
    from sft.data import DataReport, fingerprinted_dataset
    from sft.train import (
        Prepared,
        _imports,
        _load_tokenizer,
        progress_callback,
        resolve_student,
        train_and_save,
        trainer_arguments,
    )
    from synth.pairs import read_pairs

    cfg = sft_of(recipe)
    sft_student = cfg.student(recipe.layout)
    if not sft_student.trained_marker.is_file():
        raise ValueError(f"sft dpo: no SFT student in {sft_student.root}; run `sft train RECIPE` first")
    rows = read_pairs(pairs_path(recipe))
    torch, transformers, trl, peft, _ = _imports()
    model_id = resolve_student(cfg.model)
    tokenizer = _load_tokenizer(transformers, cfg, model_id)
    on_gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if on_gpu else torch.float32
    peft_config = None
    if cfg.full_finetune:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(sft_student.trained), dtype=dtype)
        peft_config = peft.LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                      target_modules=cfg.lora.target_modules, use_rslora=cfg.lora.rslora, task_type="CAUSAL_LM")
    else:
        base = transformers.AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype)
        model = peft.PeftModel.from_pretrained(base, str(sft_student.trained), is_trainable=True)
    opts = cfg.dpo
    student = dpo_layout(recipe)
    student.root.mkdir(parents=True, exist_ok=True)
    steps = dataclasses.replace(cfg, learning_rate=opts.learning_rate, epochs=opts.epochs, max_steps=opts.max_steps)
    args = trl.DPOConfig(**trainer_arguments(steps, student, on_gpu=on_gpu, progress=progress),
                         beta=opts.beta, loss_type=[t.strip() for t in opts.loss_type.split(",")], max_length=cfg.max_length, dataset_num_proc=None)
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=fingerprinted_dataset(rows), processing_class=tokenizer,
                             peft_config=peft_config)
    for default in (transformers.PrinterCallback, transformers.ProgressCallback):
        trainer.remove_callback(default)
    trainer.add_callback(progress_callback(transformers, progress))
    logger.info("dpo: %d pairs, beta %g, %s loss, from the SFT student in %s", len(rows), opts.beta, opts.loss_type,
                sft_student.trained)
    report = DataReport(rows=len(rows), kept=len(rows))
    key = key if key is not None else dpo_key(recipe)
    prepared = Prepared(trainer, cfg, student, tokenizer, report, False, "", on_gpu, key, recipe.layout.root)
    return train_and_save(prepared, fresh=fresh)
