"""`sft dpo`: preference training (TRL's DPOTrainer) of the SFT student on OUTPUT/pairs.jsonl.

The SFT adapter is trained further (`sft.dpo.learning_rate`, `beta`, `loss_type`); the
reference model is the SFT student itself (TRL keeps a frozen copy of the adapter as the
reference). The result is a LoRA adapter over the same base, in STUDENT/dpo (its own
checkpoints, metrics and stamp), so `sft eval` and `sft merge` take it with
`--set sft.output_dir=STUDENT/dpo`. Resumable like `sft train`: checkpoints carry the
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


def run_dpo(recipe: Recipe, progress: bool = True, fresh: bool = False) -> dict[str, Any]:
    """Train the DPO student; returns its metrics (also in STUDENT/dpo/metrics.json)."""
    import dataclasses

    from sft.config import sft_of
    from sft.data import DataReport
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
    if cfg.full_finetune:
        raise ValueError("sft dpo: a LoRA student (sft.full_finetune: false) only, for now")
    sft_student = cfg.student(recipe.layout)
    if not sft_student.trained_marker.is_file():
        raise ValueError(f"sft dpo: no SFT student in {sft_student.root}; run `sft train RECIPE` first")
    rows = read_pairs(pairs_path(recipe))
    torch, transformers, trl, peft, _ = _imports()
    model_id = resolve_student(cfg.model)
    tokenizer = _load_tokenizer(transformers, cfg, model_id)
    on_gpu = torch.cuda.is_available()
    base = transformers.AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.bfloat16 if on_gpu else torch.float32)
    model = peft.PeftModel.from_pretrained(base, str(sft_student.trained), is_trainable=True)
    opts = cfg.dpo
    student = dpo_layout(recipe)
    student.root.mkdir(parents=True, exist_ok=True)
    steps = dataclasses.replace(cfg, learning_rate=opts.learning_rate, epochs=opts.epochs, max_steps=opts.max_steps)
    args = trl.DPOConfig(**trainer_arguments(steps, student, on_gpu=on_gpu, progress=progress),
                         beta=opts.beta, loss_type=[opts.loss_type], max_length=cfg.max_length, dataset_num_proc=None)
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=_dataset(rows), processing_class=tokenizer)
    for default in (transformers.PrinterCallback, transformers.ProgressCallback):
        trainer.remove_callback(default)
    trainer.add_callback(progress_callback(transformers, progress))
    logger.info("dpo: %d pairs, beta %g, %s loss, from the SFT student in %s", len(rows), opts.beta, opts.loss_type,
                sft_student.trained)
    report = DataReport(rows=len(rows), kept=len(rows))
    prepared = Prepared(trainer, cfg, student, tokenizer, report, False, "", on_gpu, dpo_key(recipe), recipe.layout.root)
    return train_and_save(prepared, fresh=fresh)


def _dataset(rows: list[dict[str, Any]]) -> Any:
    import hashlib
    import json

    import datasets
    import pyarrow as pa

    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
    return datasets.Dataset(datasets.table.InMemoryTable(pa.Table.from_pylist(rows)), fingerprint=digest)
