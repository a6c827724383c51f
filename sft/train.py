"""`sft train`: LoRA (or full) fine-tuning of the student with TRL's SFTTrainer.

Assistant-only loss by default, checked before training: every example must have
trainable assistant tokens including the end-of-turn token, and one example's trainable
tokens are logged decoded. BFD packing where the attention implementation handles packed
rows without a dense mask (flash attention, FlexAttention), padded batches otherwise
(optionally of similar lengths). Writes the adapter (or model), tokenizer and chat
template, the resolved config, metrics and a loss-curve PNG to sft.output_dir, and last the
stamp of its key.

The Train stage's key: the training data's bytes; the student base model (a local directory
by its fingerprint); the sft keys that change the weights (declared `stage="train"` in
sft.config: model, lora, lengths, packing, steps, batch, learning rate, seed, ...); a chat
template file; the reasoning tags when traces are kept; with sft.distill, the teacher's
logprobs file (topk_kl) or the teacher model (on_policy). Not: logging and checkpoint
cadence, eval keys, the eval data. Checkpoints carry this key too: training resumes only
from checkpoints of the same key; checkpoints of other inputs are moved aside.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sft.batching import grouped_trainer
from sft.config import SftConfig
from sft.data import (
    DataReport,
    conversations_dataset,
    fit_to_length,
    read_conversations,
    read_record_ids,
    tool_arguments_as_text,
    tools_of,
    with_reasoning,
)
from sft.distill import TargetCollator, build_targets, distill_trainer
from sft.onpolicy import on_policy_trainer
from sft.student import (
    load_tokenizer,
    lora_config,
    quiet_trainer,
    resolve_student,
    trainer_arguments,
    training_libraries,
)
from synth.configtools import stage_fields, to_dict
from synth.fingerprint import model_identity
from synth.layout import StudentLayout
from synth.plan import Plan
from synth.runtime import file_sha256, read_json, write_json_atomically
from synth.stage import Stage, StageResult, changed

logger = logging.getLogger(__name__)


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
        enc = tokenizer.apply_chat_template(messages, tools=tools_of(messages), tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
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
    student: StudentLayout
    tokenizer: Any
    report: DataReport
    packing: bool
    attn: str
    on_gpu: bool
    key: dict[str, Any]  # the stage's key (train_key, or sft.dpo's dpo_key)

    @property
    def grouped(self) -> bool:
        """Padded batches of similar lengths (sft.group_by_length; packed rows have nothing to group)."""
        return self.cfg.group_by_length and not self.packing


def train_key(plan: Plan) -> dict[str, Any]:
    """The Train stage's key (see the module docstring)."""
    cfg, layout = plan.sft, plan.layout
    key = {
        "train_data": file_sha256(cfg.train_path(layout)),
        "student": model_identity(cfg.model),
        "chat_template": file_sha256(Path(cfg.chat_template)) if cfg.chat_template else None,
        "sft": stage_fields(cfg, "train"),
    }
    if cfg.repairs != "trajectory":  # in the key only when set, so runs made before it stay valid
        key["repairs"] = cfg.repairs
    if cfg.reasoning == "keep":  # the tags a trace is written between when the template ignores it
        tags = plan.recipe.teacher.reasoning
        key["reasoning_tags"] = [tags.open_tag, tags.close_tag]
    d = cfg.distill
    if d is not None:  # the divergence resolved, so a change of a default retrains
        key["divergence"] = {"temperature": d.kd_temperature, "tail": d.kd_tail, "beta": d.divergence_beta}
    if cfg.on_policy:
        key["teacher"] = model_identity(plan.on_policy_teacher())
    elif d is not None:
        key["teacher_logprobs"] = file_sha256(d.path(layout))
        if d.cross_tokenizer:
            key["teacher_tokenizer"] = model_identity(teacher_tokenizer_source(plan))
    return key


class Train(Stage):
    """Train the student (keyed; see the module docstring). `fresh`: from step 0 even where
    checkpoints of the same inputs exist."""

    name = "train"

    def __init__(self, plan: Plan, progress: bool = True, fresh: bool = False):
        super().__init__(plan, progress)
        self.fresh = fresh

    def key(self) -> dict[str, Any]:
        return train_key(self.plan)

    def stamp(self) -> Path:
        return self.plan.student.files.train_stamp

    def outputs(self) -> tuple[Path, ...]:
        return (self.plan.student.files.trained_marker,)

    def work(self, key: dict[str, Any] | None) -> StageResult:
        assert key is not None
        m = train_and_save(prepare(self.plan, self.progress, key), fresh=self.fresh)
        resumed = f", resumed from {Path(m['resumed_from']).name}" if m["resumed_from"] else ""
        return self.result(f"{m['global_step']} steps, {loss_summary(m)}{resumed}", train_lines(m, "sft train"), m)


def run_train(plan: Plan, progress: bool = True, fresh: bool = False) -> dict[str, Any]:
    """Train the student described by the recipe's `sft` section now (the stage, forced:
    resuming from checkpoints of the same inputs); returns the metrics."""
    return Train(plan, progress, fresh).run(force=True).details


def train_lines(m: dict[str, Any], command: str) -> list[str]:
    """What `sft train` (and `sft dpo`) print."""
    data = m["data"]
    return [f"{command}: {m['global_step']} steps, {loss_summary(m)}"
            + (f", eval loss {m['eval_loss']:.4f}" if m["eval_loss"] is not None else "")
            + (f" (resumed from {m['resumed_from']})" if m["resumed_from"] else ""),
            f"  data: {data['kept']} of {data['rows']} examples, {data['truncated']} truncated"
            + (f", dropped {data['dropped']}" if data["dropped"] else ""),
            f"  saved: {m['saved']}; metrics and loss.png in {Path(m['saved']).parent}"]


def prepare(plan: Plan, progress: bool = True, key: dict[str, Any] | None = None) -> Prepared:
    """Validate config and data, check the loss mask, load the student, build the trainer."""
    cfg = plan.sft
    libs = training_libraries()
    torch, transformers = libs.torch, libs.transformers
    key = key if key is not None else train_key(plan)
    model_id = resolve_student(cfg.model)
    tokenizer = load_tokenizer(transformers, cfg, model_id)
    all_rows, eval_rows = _read_rows(plan, tokenizer)
    train_rows, report = fit_to_length(all_rows, tokenizer, cfg.max_length, cfg.overlong)
    if cfg.assistant_only_loss and not cfg.on_policy:  # on_policy trains on the student's own samples
        sample = check_assistant_masks(train_rows, tokenizer, tokenizer.eos_token)
        logger.info("trainable tokens of example 1 (assistant turns + end of turn): %r", sample[:500])
    logger.info("data: %d rows, %d kept, %d to be truncated, dropped %s", report.rows, report.kept, report.truncated,
                report.dropped or "none")
    on_gpu = torch.cuda.is_available()
    model_kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if on_gpu else torch.float32}  # TRL: fp32 unless told
    if cfg.attn_implementation:
        model_kwargs["attn_implementation"] = cfg.attn_implementation
    model = transformers.AutoModelForCausalLM.from_pretrained(model_id, **model_kwargs)
    attn = getattr(model.config, "_attn_implementation", None) or ""
    packing = handles_packed_rows(attn) if cfg.packing == "auto" else bool(cfg.packing)
    if cfg.group_by_length and packing:
        logger.info("group_by_length: ignored, the rows are packed")
    peft_config = None if cfg.full_finetune else lora_config(libs.peft, cfg)
    if cfg.on_policy:
        trainer = on_policy_trainer(libs.trl, transformers, cfg, model, tokenizer, plan.on_policy_teacher(),
                                    train_rows, plan.student.files,
                                    peft_config=peft_config, on_gpu=on_gpu, progress=progress)
        report.distill = {"on_policy prompts": len(train_rows)}
        packing = False
    else:
        trainer = _sft_trainer(libs.trl, plan, model, tokenizer, (all_rows, train_rows, eval_rows), report,
                               peft_config=peft_config, packing=packing, on_gpu=on_gpu, progress=progress)
    quiet_trainer(trainer, transformers, progress)
    return Prepared(trainer, cfg, plan.student.files, tokenizer, report, packing, attn, on_gpu, key)


def _read_rows(plan: Plan, tokenizer: Any) -> tuple[list, list | None]:
    """The training and held-out conversations, reasoning kept as sft.reasoning says and
    tool arguments as the chat template renders them."""
    cfg, layout = plan.sft, plan.layout
    all_rows = read_conversations(cfg.train_path(layout), reasoning=cfg.reasoning, repairs=cfg.repairs)
    eval_path = cfg.eval_path(layout)
    eval_rows = read_conversations(eval_path, "sft.eval", reasoning=cfg.reasoning) if eval_path else None
    if cfg.reasoning == "keep":
        tags = plan.recipe.teacher.reasoning
        all_rows, how = with_reasoning(all_rows, tokenizer, tags.open_tag, tags.close_tag, cfg.assistant_only_loss)
        if eval_rows:
            eval_rows = with_reasoning(eval_rows, tokenizer, tags.open_tag, tags.close_tag, cfg.assistant_only_loss)[0]
        logger.info("sft.reasoning: keep: %s", how)
    all_rows = tool_arguments_as_text(all_rows, tokenizer)
    eval_rows = tool_arguments_as_text(eval_rows, tokenizer) if eval_rows else eval_rows
    return all_rows, eval_rows


def teacher_tokenizer_source(plan: Plan) -> str:
    """sft.distill.cross_tokenizer: where the teacher's tokenizer is (sft.distill.teacher, or the
    recipe's local teacher); an error naming the fix for an API teacher."""
    distill = plan.sft.distill
    if distill is not None and distill.teacher:
        return distill.teacher
    if plan.recipe.teacher.backend != "vllm":
        raise ValueError("sft.distill.teacher: cross_tokenizer lines the teacher's tokens up with the student's by text, "
                         "so it needs the teacher's tokenizer, and the recipe's teacher is served over an API "
                         f"(teacher.backend: {plan.recipe.teacher.backend}); give sft.distill.teacher (the HF id or "
                         "local directory of the model that wrote the logprobs)")
    return plan.recipe.teacher.model


def _teacher_tokenizer(plan: Plan) -> Any:
    from transformers import AutoTokenizer  # heavy: transformers

    return AutoTokenizer.from_pretrained(resolve_student(teacher_tokenizer_source(plan)))


def _sft_trainer(trl: Any, plan: Plan, model: Any, tokenizer: Any, rows: tuple[list, list, list | None],
                 report: DataReport, *, peft_config: Any, packing: bool, on_gpu: bool, progress: bool) -> Any:
    """TRL's SFTTrainer (length-grouped batches, top-k distillation where the config asks).
    `rows`: (every training row, the rows fitted to max_length, the held-out rows)."""
    cfg, layout, student = plan.sft, plan.layout, plan.student.files
    all_rows, train_rows, eval_rows = rows
    args = _training_args(trl, cfg, student, has_eval=bool(eval_rows), packing=packing, on_gpu=on_gpu,
                          progress=progress)
    trainer_cls = trl.SFTTrainer
    if cfg.group_by_length and not packing:
        trainer_cls = grouped_trainer(trainer_cls)
    targets = None
    if cfg.distill is not None:
        ids = read_record_ids(cfg.train_path(layout))
        teacher_tokenizer = _teacher_tokenizer(plan) if cfg.distill.cross_tokenizer else None
        targets = build_targets(cfg.distill, cfg.distill.path(layout), list(zip(all_rows, ids, strict=True)), tokenizer,
                                teacher_tokenizer)
        trainer_cls = distill_trainer(trainer_cls, cfg.distill)
    try:
        trainer = trainer_cls(
            model=model, args=args, train_dataset=conversations_dataset(train_rows),
            eval_dataset=conversations_dataset(eval_rows) if eval_rows else None,
            processing_class=tokenizer, peft_config=peft_config,
        )
    except ValueError as exc:
        if "target module" in str(exc).lower() or "target_modules" in str(exc).lower():
            raise ValueError(f"sft.lora.target_modules: {cfg.lora.target_modules} match no module of {cfg.model} "
                             f"({exc})") from None
        raise
    if targets is not None:
        trainer.data_collator = TargetCollator(trainer.data_collator, targets)
        report.distill = dict(targets.counts)
    return trainer


def _training_args(trl: Any, cfg: SftConfig, student: StudentLayout, *, has_eval: bool, packing: bool,
                   on_gpu: bool, progress: bool) -> Any:
    return trl.SFTConfig(
        **trainer_arguments(cfg, student, on_gpu=on_gpu, progress=progress),
        per_device_eval_batch_size=cfg.batch_size,
        eval_strategy=("steps" if cfg.eval_steps else "epoch") if has_eval else "no",
        eval_steps=cfg.eval_steps,
        max_length=cfg.max_length,
        packing=packing,
        assistant_only_loss=cfg.assistant_only_loss,
        dataset_num_proc=None,
    )


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


def checkpoints_for(student: StudentLayout, key: dict[str, Any], fresh: bool = False) -> str | None:
    """The checkpoint to resume from: the last complete one, only if the checkpoints were
    written for this key (the same data, student and training config). Checkpoints of another
    key (or all, when `fresh`) are moved aside to checkpoints.previous (replacing an older set)
    and training starts fresh; the key is recorded before the first checkpoint is written."""
    ckpts = student.checkpoints
    if ckpts.is_dir() and any(ckpts.iterdir()):
        old = read_json(student.checkpoints_key)
        if old != key or fresh:
            why = "--fresh" if fresh else ", ".join(changed(old, key)) if isinstance(old, dict) else "they record no key"
            shutil.rmtree(student.previous_checkpoints, ignore_errors=True)
            ckpts.rename(student.previous_checkpoints)
            logger.warning("checkpoints in %s set aside (%s): moved to %s; training starts fresh",
                           ckpts, why, student.previous_checkpoints.name)
    ckpts.mkdir(parents=True, exist_ok=True)
    write_json_atomically(student.checkpoints_key, key)
    return last_complete_checkpoint(ckpts)


def loss_summary(metrics: dict[str, Any]) -> str:
    """'loss A -> B' from the logged losses, or the run's mean loss when no step was logged
    (fewer steps than logging_steps)."""
    if metrics.get("first_loss") is not None:
        return f"loss {metrics['first_loss']:.4f} -> {metrics['last_loss']:.4f}"
    mean = (metrics.get("train") or {}).get("train_loss")
    return f"mean loss {mean:.4f}" if mean is not None else "no loss logged"


def train_and_save(p: Prepared, fresh: bool = False) -> dict[str, Any]:
    """Train (resuming only from checkpoints of the same key) and write the adapter (or
    model), config, metrics and plot; the stage records its key afterwards."""
    started = time.monotonic()
    trainer, cfg, student = p.trainer, p.cfg, p.student
    last = checkpoints_for(student, p.key, fresh) if trainer.is_world_process_zero() else None
    _barrier()  # the other ranks look for checkpoints once rank 0 has sorted them out
    if not trainer.is_world_process_zero():
        last = last_complete_checkpoint(student.checkpoints)
    if last:
        logger.info("resuming from %s", last)
    result = trainer.train(resume_from_checkpoint=last)
    trainer.save_model(str(student.trained))  # every rank calls it (sharded setups gather); rank 0 writes
    metrics = _metrics(p, result, last, time.monotonic() - started)
    if trainer.is_world_process_zero():  # several processes (accelerate launch): one writer
        p.tokenizer.save_pretrained(str(student.trained))
        student.sft_config.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
        student.metrics.write_text(json.dumps(metrics, indent=2, default=str) + "\n", encoding="utf-8")
        _loss_curve(metrics["log_history"], student.loss_plot)
    del trainer
    _end_process_group(p)
    return metrics


def _metrics(p: Prepared, result: Any, resumed_from: str | None, wall_s: float) -> dict[str, Any]:
    history = p.trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    report = p.report
    return {
        "train": result.metrics,
        "global_step": p.trainer.state.global_step,
        "resumed_from": resumed_from,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "eval_loss": next((h["eval_loss"] for h in reversed(history) if "eval_loss" in h), None),
        "data": {"rows": report.rows, "kept": report.kept, "truncated": report.truncated, "dropped": report.dropped,
                 **({"distill": report.distill} if report.distill is not None else {})},
        "packing": p.packing,
        "group_by_length": p.grouped,
        "attn_implementation": p.attn,
        "device": "cuda" if p.on_gpu else "cpu",
        "saved": str(p.student.trained),
        "wall_s": round(wall_s, 2),
        "log_history": history,
    }


def _several_processes() -> bool:
    import torch.distributed as dist  # heavy: torch

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and dist.is_initialized()


def _barrier() -> None:
    if _several_processes():
        import torch.distributed as dist

        dist.barrier()


def _end_process_group(p: Prepared) -> None:
    """Several processes: wait until rank 0 has written everything, then close the process
    group (a process that exits with it open can abort: "terminate called without an active
    exception"). The trainer goes first: its DDP reducer holds the group, and freed after the
    group is closed (when the caller lets go of `p`) the group's destructor joined a gloo
    thread waiting on a rank that had exited, for ever (seen once under torchrun). Only a
    launcher's group (WORLD_SIZE > 1): an in-process vLLM engine holds a one-process group of
    its own, which is not ours to close."""
    if _several_processes():
        import torch.distributed as dist

        p.trainer = None
        gc.collect()  # the trainer's reference cycles (callbacks) hold the model too
        dist.barrier()
        dist.destroy_process_group()
