"""`sft dpo`: preference training (TRL's DPOTrainer) of the SFT student on OUTPUT/pairs.jsonl.

The reference model is the SFT student itself. A LoRA student's adapter is trained further
(`sft.dpo.learning_rate`, `beta`, `loss_type`; TRL keeps a frozen copy of it as the
reference): the result is an adapter over the same base. A fully fine-tuned student gets a
new LoRA adapter (`sft.lora`) over its weights (the reference: the adapter switched off).
Either goes to STUDENT/dpo (its own checkpoints, metrics and stamp); `synth run` evaluates
it there (synth.plan's dpo_student says how `sft eval` sees it). Resumable like `sft train`.

The Dpo stage's key: the pairs' bytes, the SFT student's weights, the student base, the dpo
settings and the training settings they share with SFT; checkpoints carry it, and a rerun
resumes from the last complete one of the same key.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from sft.data import DataReport, fingerprinted_dataset, read_pairs
from sft.student import (
    load_tokenizer,
    lora_config,
    quiet_trainer,
    resolve_student,
    trainer_arguments,
    training_libraries,
)
from sft.train import Prepared, loss_summary, train_and_save
from synth.configtools import canonical_dict
from synth.fingerprint import fingerprint_dir, model_identity
from synth.plan import Plan
from synth.runtime import file_sha256
from synth.stage import Stage, StageResult

logger = logging.getLogger(__name__)


def dpo_key(plan: Plan) -> dict[str, Any]:
    """The Dpo stage's key (see the module docstring)."""
    cfg = plan.sft
    shared = ("max_length", "batch_size", "grad_accum", "seed", "warmup_ratio", "weight_decay")
    return {"pairs": file_sha256(plan.pairs_file), "sft_student": fingerprint_dir(plan.student.files.trained),
            "student": model_identity(cfg.model), "dpo": canonical_dict({**canonical_dict(cfg.dpo), "output_dir": None}),
            "training": canonical_dict({k: getattr(cfg, k) for k in shared})}


class Dpo(Stage):
    """Preference training of the SFT student (keyed; see the module docstring)."""

    name = "dpo"

    def __init__(self, plan: Plan, progress: bool = True, fresh: bool = False):
        super().__init__(plan, progress)
        self.fresh = fresh

    def key(self) -> dict[str, Any]:
        return dpo_key(self.plan)

    def stamp(self) -> Path:
        return self.plan.dpo_student.files.train_stamp

    def outputs(self) -> tuple[Path, ...]:
        return (self.plan.dpo_student.files.trained_marker,)

    def work(self, key: dict[str, Any] | None) -> StageResult:
        assert key is not None
        m = train_and_save(_prepare(self.plan, self.progress, key), fresh=self.fresh)
        resumed = f", resumed from {Path(m['resumed_from']).name}" if m["resumed_from"] else ""
        summary = f"{m['global_step']} steps on {m['data']['rows']} pairs, {loss_summary(m)}{resumed}"
        root = self.plan.dpo_student.files.root
        lines = [f"sft dpo: {m['global_step']} steps on {m['data']['rows']} pairs, {loss_summary(m)}"
                 + (f" (resumed from {m['resumed_from']})" if m["resumed_from"] else ""),
                 f"  saved: {m['saved']}; evaluate it with `sft eval RECIPE --set sft.output_dir={root}`"]
        return self.result(summary, lines, m)


def run_dpo(plan: Plan, progress: bool = True, fresh: bool = False) -> dict[str, Any]:
    """Train the DPO student now (the stage, forced: resuming from checkpoints of the same
    inputs); returns its metrics (also in STUDENT/dpo/metrics.json)."""
    return Dpo(plan, progress, fresh).run(force=True).details


def _prepare(plan: Plan, progress: bool, key: dict[str, Any]) -> Prepared:
    """The DPO trainer: the SFT student (adapter trainable, or full weights under a new
    adapter) on the pairs."""
    cfg, sft_student = plan.sft, plan.student.files
    if not sft_student.trained_marker.is_file():
        raise ValueError(f"sft dpo: no SFT student in {sft_student.root}; run `sft train RECIPE` first")
    rows = read_pairs(plan.pairs_file)
    libs = training_libraries()
    torch, transformers = libs.torch, libs.transformers
    model_id = resolve_student(cfg.model)
    tokenizer = load_tokenizer(transformers, cfg, model_id)
    on_gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if on_gpu else torch.float32
    peft_config = None
    if cfg.full_finetune:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(sft_student.trained), dtype=dtype)
        peft_config = lora_config(libs.peft, cfg)
    else:
        base = transformers.AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype)
        model = libs.peft.PeftModel.from_pretrained(base, str(sft_student.trained), is_trainable=True)
    opts, student = cfg.dpo, plan.dpo_student.files
    student.root.mkdir(parents=True, exist_ok=True)
    steps = dataclasses.replace(cfg, learning_rate=opts.learning_rate, epochs=opts.epochs, max_steps=opts.max_steps)
    args = libs.trl.DPOConfig(**trainer_arguments(steps, student, on_gpu=on_gpu, progress=progress),
                              beta=opts.beta, loss_type=[t.strip() for t in opts.loss_type.split(",")],
                              max_length=cfg.max_length, dataset_num_proc=None)
    trainer = libs.trl.DPOTrainer(model=model, args=args, train_dataset=fingerprinted_dataset(rows),
                                  processing_class=tokenizer, peft_config=peft_config)
    quiet_trainer(trainer, transformers, progress)
    logger.info("dpo: %d pairs, beta %g, %s loss, from the SFT student in %s", len(rows), opts.beta, opts.loss_type,
                sft_student.trained)
    report = DataReport(rows=len(rows), kept=len(rows))
    return Prepared(trainer, cfg, student, tokenizer, report, False, "", on_gpu, key)
