"""`sft train`: LoRA (or full) fine-tuning of the student with TRL's SFTTrainer.

Assistant-only loss by default, checked before training: every example must have
trainable assistant tokens including the end-of-turn token, and one example's trainable
tokens are logged decoded. BFD packing where the attention implementation handles packed
rows without a dense mask (flash attention, FlexAttention), padded batches otherwise
(optionally of similar lengths). Resumes from the last checkpoint. Writes the adapter (or
model), tokenizer and chat template, the resolved config, metrics and a loss-curve PNG to
sft.output_dir.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sft.config import SftConfig, load_sft
from sft.data import DataReport, conversations_dataset, fit_to_length, read_conversations
from synth.config import Recipe
from synth.configtools import canonical_dict, to_dict
from synth.manifest import file_sha256

logger = logging.getLogger(__name__)


def _imports():
    try:
        import datasets
        import peft
        import torch
        import transformers
        import trl
    except ImportError as exc:
        raise ImportError(f"sft train needs torch, transformers, trl, peft and datasets ({exc}): pip install 'stillhouse[sft]'") from None
    return torch, transformers, trl, peft, datasets


def resolve_student(model: str) -> str:
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"sft.model: {path} is not a model directory (no config.json)")
        return str(path)
    if model.startswith(("/", "./", "../", "~")) or model.count("/") > 1:
        raise ValueError(f"sft.model: {model} does not exist; give an existing model directory or an HF id")
    return model


def handles_packed_rows(attn: str) -> bool:
    """Whether an attention implementation keeps packed examples apart without a dense
    (tokens x tokens) mask: flash attention's varlen kernels (cu_seq_lens), or FlexAttention's
    block-sparse document mask. SDPA and eager build a dense mask over the packed row, which
    costs more than the padding it saves, so they get padded batches."""
    return "flash" in attn or attn == "flex_attention"


def check_assistant_masks(rows: list[list[dict[str, str]]], tokenizer: Any, end_token: str) -> str:
    """Every example must train on its assistant turns, end-of-turn token included.

    Returns one example's trainable tokens, decoded (for the log)."""
    template = tokenizer.chat_template or ""
    if "generation" not in template:
        raise ValueError(
            "sft.assistant_only_loss: the chat template has no {% generation %} markers, so the assistant "
            "tokens cannot be found; give sft.chat_template (a template with markers) or set assistant_only_loss: false"
        )
    end_id = tokenizer.convert_tokens_to_ids(end_token)
    sample = ""
    for i, messages in enumerate(rows):
        enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids, mask = enc["input_ids"], enc["assistant_masks"]
        trainable = [t for t, m in zip(ids, mask, strict=True) if m]
        if not trainable:
            raise ValueError(f"sft.train: example {i + 1} has no trainable assistant tokens under the chat template")
        if end_id not in trainable:
            raise ValueError(
                f"sft.chat_template: example {i + 1}: the end-of-turn token {end_token!r} is outside the "
                "generation markers, so the student would never learn to stop; move it inside {% generation %}"
            )
        if i == 0:
            sample = tokenizer.decode(trainable)
    return sample


def _loss_curve(history: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if train or evals:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


@dataclass
class Prepared:
    """A trainer ready to train, and what went into it."""

    trainer: Any
    cfg: SftConfig
    out: Path
    tokenizer: Any
    report: DataReport
    packing: bool
    attn: str
    on_gpu: bool
    train_path: Path

    @property
    def grouped(self) -> bool:
        """Padded batches of similar lengths (sft.group_by_length; packed rows have nothing to group)."""
        return self.cfg.group_by_length and not self.packing


def run_train(recipe: Recipe, progress: bool = True) -> dict[str, Any]:
    """Train the student described by the recipe's `sft` section; returns the metrics."""
    p = prepare(recipe, progress)
    return train_and_save(p)


def prepare(recipe: Recipe, progress: bool = True) -> Prepared:
    """Validate config and data, check the loss mask, load the student, build the trainer."""
    cfg: SftConfig = load_sft(recipe.sft)
    torch, transformers, trl, peft, datasets = _imports()
    train_path, eval_path, out = cfg.resolved_paths(recipe.output.dir)
    model_id = resolve_student(cfg.model)

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_id)
    if cfg.chat_template:
        template_path = Path(cfg.chat_template)
        if not template_path.is_file():
            raise ValueError(f"sft.chat_template: {template_path} does not exist")
        tokenizer.chat_template = template_path.read_text(encoding="utf-8")
    if not tokenizer.chat_template:
        raise ValueError("sft.chat_template: the student's tokenizer has no chat template; give one (with {% generation %} markers)")
    end_token = tokenizer.eos_token
    train_rows, report = fit_to_length(read_conversations(train_path), tokenizer, cfg.max_length, cfg.overlong)
    eval_rows = read_conversations(eval_path, "sft.eval") if eval_path else None
    if cfg.assistant_only_loss:
        sample = check_assistant_masks(train_rows, tokenizer, end_token)
        logger.info("trainable tokens of example 1 (assistant turns + end of turn): %r", sample[:500])
    logger.info("data: %d rows, %d kept, %d to be truncated, dropped %s", report.rows, report.kept, report.truncated, report.dropped or "none")

    on_gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if on_gpu else torch.float32  # TRL loads a path in fp32 unless told
    model_kwargs: dict[str, Any] = {"dtype": dtype}
    if cfg.attn_implementation:
        model_kwargs["attn_implementation"] = cfg.attn_implementation
    model = transformers.AutoModelForCausalLM.from_pretrained(model_id, **model_kwargs)
    attn = getattr(model.config, "_attn_implementation", None) or ""
    packing = handles_packed_rows(attn) if cfg.packing == "auto" else bool(cfg.packing)
    if cfg.group_by_length and packing:
        logger.info("group_by_length: ignored, the rows are packed")

    peft_config = None
    if not cfg.full_finetune:
        peft_config = peft.LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules, use_rslora=cfg.lora.rslora, task_type="CAUSAL_LM",
        )

    ckpt_dir = out / "checkpoints"
    args = trl.SFTConfig(
        output_dir=str(ckpt_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the steps
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy=("steps" if cfg.eval_steps else "epoch") if eval_rows else "no",
        eval_steps=cfg.eval_steps,
        max_length=cfg.max_length,
        packing=packing,
        assistant_only_loss=cfg.assistant_only_loss,
        gradient_checkpointing=cfg.gradient_checkpointing,
        bf16=on_gpu,
        use_cpu=not on_gpu,
        report_to=[],
        disable_tqdm=not progress,
        dataset_num_proc=None,
    )
    train_ds = conversations_dataset(train_rows)
    eval_ds = conversations_dataset(eval_rows) if eval_rows else None
    try:
        trainer = trl.SFTTrainer(
            model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
            processing_class=tokenizer, peft_config=peft_config,
        )
    except ValueError as exc:
        if "target module" in str(exc).lower() or "target_modules" in str(exc).lower():
            raise ValueError(f"sft.lora.target_modules: {cfg.lora.target_modules} match no module of {cfg.model} ({exc})") from None
        raise
    prepared = Prepared(trainer, cfg, out, tokenizer, report, packing, attn, on_gpu, train_path)
    if prepared.grouped:
        from sft.batching import GroupedBatchSampler

        lengths = [len(row["input_ids"]) for row in trainer.train_dataset.select_columns(["input_ids"])]
        # The Trainer's hook for its train sampler (random order unless replaced).
        trainer._get_train_sampler = lambda dataset=None: GroupedBatchSampler(lengths, cfg.batch_size)
    return prepared


def last_complete_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest checkpoint that was written to the end.

    The Trainer writes trainer_state.json last; a run killed while saving leaves a
    checkpoint without it (or with it torn). Such a directory is renamed
    `incomplete-checkpoint-N` (kept for inspection, out of the Trainer's way) and the one
    before it is used."""
    if not ckpt_dir.is_dir():
        return None
    found = sorted((d for d in ckpt_dir.iterdir() if d.is_dir() and re.fullmatch(r"checkpoint-\d+", d.name)),
                   key=lambda d: int(d.name.split("-")[1]), reverse=True)
    for d in found:
        try:
            json.loads((d / "trainer_state.json").read_text(encoding="utf-8"))
            return str(d)
        except (OSError, ValueError):
            target = d.with_name("incomplete-" + d.name)
            logger.warning("%s was cut off while saving (killed?); moved to %s, resuming from the one before", d, target.name)
            d.rename(target)
    return None


STAMP = "trained_on.json"


def _training_stamp(cfg: SftConfig, train_path: Path) -> dict[str, Any]:
    return {"train_sha": file_sha256(train_path), "sft": canonical_dict(cfg)}


def trained_already(cfg: SftConfig, train_path: Path, out: Path) -> bool:
    """Whether `out` holds a student trained to the end on exactly this train file with this
    sft config (the stamp train_and_save writes last)."""
    try:
        stamp = json.loads((out / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if stamp != _training_stamp(cfg, train_path):
        logger.info("train: the data or the sft config changed since the last training")
        return False
    return True


def loss_summary(metrics: dict[str, Any]) -> str:
    """'loss A -> B' from the logged losses, or the run's mean loss when no step was logged
    (fewer steps than logging_steps)."""
    if metrics.get("first_loss") is not None:
        return f"loss {metrics['first_loss']:.4f} -> {metrics['last_loss']:.4f}"
    mean = (metrics.get("train") or {}).get("train_loss")
    return f"mean loss {mean:.4f}" if mean is not None else "no loss logged"


def train_and_save(p: Prepared) -> dict[str, Any]:
    """Train (resuming from the last complete checkpoint) and write adapter, config, metrics, plot."""
    started = time.monotonic()
    trainer, cfg, out, tokenizer, report = p.trainer, p.cfg, p.out, p.tokenizer, p.report
    ckpt_dir = out / "checkpoints"
    last = last_complete_checkpoint(ckpt_dir)
    if last:
        logger.info("resuming from %s", last)
    result = trainer.train(resume_from_checkpoint=last)

    final = cfg.trained_dir(out)
    trainer.save_model(str(final))  # every rank calls it (sharded setups gather); rank 0 writes
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    metrics = {
        "train": result.metrics,
        "global_step": trainer.state.global_step,
        "resumed_from": last,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "eval_loss": next((h["eval_loss"] for h in reversed(history) if "eval_loss" in h), None),
        "data": {"rows": report.rows, "kept": report.kept, "truncated": report.truncated, "dropped": report.dropped},
        "packing": p.packing,
        "group_by_length": p.grouped,
        "attn_implementation": p.attn,
        "device": "cuda" if p.on_gpu else "cpu",
        "saved": str(final),
        "wall_s": round(time.monotonic() - started, 2),
        "log_history": history,
    }
    if trainer.is_world_process_zero():  # several processes (accelerate launch): one writer
        tokenizer.save_pretrained(str(final))
        (out / "sft_config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n", encoding="utf-8")
        _loss_curve(history, out / "loss.png")
        # Last: the stamp says the student in `out` is complete for this data and config.
        (out / STAMP).write_text(json.dumps(_training_stamp(cfg, p.train_path), indent=2), encoding="utf-8")
    _end_process_group()
    return metrics


def _end_process_group() -> None:
    """Several processes: wait until rank 0 has written everything, then close the process
    group (a process that exits with it open can abort: "terminate called without an active
    exception"). Only a launcher's group (WORLD_SIZE > 1): an in-process vLLM engine holds a
    one-process group of its own, which is not ours to close."""
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
