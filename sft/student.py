"""What every kind of student training shares (SFT, on-policy distillation, DPO): the
training libraries, the student's model id and tokenizer, the trainer arguments taken from
the sft config, and the console's progress bar. Nothing heavy is imported until used."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

from sft.config import SftConfig
from synth.fingerprint import local_model
from synth.layout import StudentLayout
from synth.runtime import FILE_ONLY, progress_bar

logger = logging.getLogger(__name__)


class TrainingLibraries(NamedTuple):
    torch: Any
    transformers: Any
    trl: Any
    peft: Any
    datasets: Any


def training_libraries() -> TrainingLibraries:
    """torch, transformers, trl, peft and datasets, imported now (the sft extra)."""
    try:
        import datasets
        import peft
        import torch
        import transformers
        import trl
    except ImportError as exc:
        raise ImportError(f"sft train needs torch, transformers, trl, peft and datasets ({exc}): "
                          "pip install 'stillhouse[sft]'") from None
    return TrainingLibraries(torch, transformers, trl, peft, datasets)


def resolve_student(model: str) -> str:
    """The student to load: a local model directory or an HF id (errors name sft.model)."""
    return local_model(model, "sft.model")


def load_tokenizer(transformers: Any, cfg: SftConfig, model_id: str) -> Any:
    """The student's tokenizer, with sft.chat_template when given (it must have one)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_id)
    if cfg.chat_template:
        tokenizer.chat_template = Path(cfg.chat_template).read_text(encoding="utf-8")
    if not tokenizer.chat_template:
        raise ValueError("sft.chat_template: the student's tokenizer has no chat template; give one (with "
                         "{% generation %} markers)")
    return tokenizer


def trainer_arguments(cfg: SftConfig, student: StudentLayout, *, on_gpu: bool, progress: bool) -> dict[str, Any]:
    """The TrainingArguments every trainer here takes from the sft config (steps, batches,
    optimiser, checkpoints, device), for TRL's SFTConfig, DistillationConfig or DPOConfig."""
    return {
        "output_dir": str(student.checkpoints),
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps,
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "learning_rate": cfg.learning_rate,
        "warmup_steps": cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the steps
        "weight_decay": cfg.weight_decay,
        "seed": cfg.seed,
        "logging_steps": cfg.logging_steps,
        "save_steps": cfg.save_steps,
        "save_total_limit": cfg.save_total_limit,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "bf16": on_gpu,
        "use_cpu": not on_gpu,
        "report_to": [],
        "disable_tqdm": not progress,
    }


def lora_config(peft: Any, cfg: SftConfig) -> Any:
    """PEFT's LoraConfig of sft.lora."""
    return peft.LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                           target_modules=cfg.lora.target_modules, use_rslora=cfg.lora.rslora, task_type="CAUSAL_LM")


def progress_callback(transformers: Any, enabled: bool) -> Any:
    """The trainer's console: one bar (steps, rate, ETA, the last loss) when `enabled`; its
    log lines (loss, learning rate, eval loss) go to the log file instead of the console."""

    class TrainProgress(transformers.TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if enabled and state.is_world_process_zero:
                self.bar = progress_bar(state.max_steps, "train", "step", initial=state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            logger.info("step %d: %s", state.global_step, json.dumps(logs, default=str), extra=FILE_ONLY)
            if self.bar is not None and "loss" in logs:
                self.bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return TrainProgress()


def quiet_trainer(trainer: Any, transformers: Any, progress: bool) -> Any:
    """The trainer with its own console printers replaced by progress_callback."""
    for default in (transformers.PrinterCallback, transformers.ProgressCallback):
        trainer.remove_callback(default)
    trainer.add_callback(progress_callback(transformers, progress))
    return trainer
