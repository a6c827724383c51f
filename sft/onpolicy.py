"""On-policy distillation (`sft.distill.loss: on_policy`), on TRL's DistillationTrainer.

The student answers the training prompts itself (sampled at `sft.distill.temperature`, at
most `max_new_tokens`), and a local teacher scores every token of those answers: the loss
is the generalised Jensen-Shannon divergence between the teacher's and the student's
next-token distributions on the student's own tokens (`beta`: 0 forward KL, 1 reverse KL).
So the student learns where it goes wrong, in the states it reaches, not only in the
teacher's (Agarwal et al. 2024, "On-Policy Distillation of Language Models"). The teacher's
answers in the training data are not used, only their prompts; the teacher runs in the
training process (transformers), so it must fit beside the student. A teacher with another
tokenizer (`cross_tokenizer: true`) scores through TRL's GOLDTrainer: it re-tokenizes the
student's samples, and the two distributions are compared on tokens of the same text (GOLD,
"Unlocking On-Policy Distillation for Any Model Family", Hugging Face 2025).

It works best from a student that already follows the task: train it with SFT or `topk_kl`
first, then point `sft.model` at the result (or at `sft merge`'s output) with `on_policy`.
"""

from __future__ import annotations

import logging
from typing import Any

from sft.config import SftConfig
from sft.data import conversations_dataset
from sft.student import trainer_arguments
from synth.fingerprint import local_model
from synth.layout import StudentLayout
from synth.logprobs import vocab_digest

logger = logging.getLogger(__name__)


def check_same_tokenizer(transformers: Any, teacher: str, tokenizer: Any) -> None:
    """on_policy compares the teacher's and the student's distributions token by token: their
    vocabularies must be the same (by digest, not only by size)."""
    if vocab_digest(transformers.AutoTokenizer.from_pretrained(teacher)) != vocab_digest(tokenizer):
        raise ValueError(f"sft.distill.teacher: {teacher} has another vocabulary than the student; on-policy "
                         "distillation token by token needs teacher and student to share a tokenizer: set "
                         "sft.distill.cross_tokenizer: true (TRL's GOLD, matched by text), or choose a student of the "
                         "teacher's family")


def on_policy_trainer(trl: Any, transformers: Any, cfg: SftConfig, model: Any, tokenizer: Any, teacher: str,
                      rows: list[list[dict[str, str]]], student: StudentLayout, *, peft_config: Any,
                      on_gpu: bool, progress: bool) -> Any:
    """TRL's DistillationTrainer for the student `model` and the local `teacher`, on the
    prompts of `rows` (each a chat ending with the teacher's answer, which is not trained on);
    with `cross_tokenizer`, TRL's GOLDTrainer instead (the teacher scores the student's samples
    through its own tokenizer, and the two are matched by text)."""
    opts = cfg.distill
    assert cfg.on_policy and opts is not None
    teacher_id = local_model(teacher, "sft.distill.teacher")
    if not opts.cross_tokenizer:
        check_same_tokenizer(transformers, teacher_id, tokenizer)
    tokenizer.padding_side = "left"  # the student generates from left-padded prompts
    common = {
        **trainer_arguments(cfg, student, on_gpu=on_gpu, progress=progress),
        "eval_strategy": "no",  # the held-out set is scored by `sft eval` after training
        "max_completion_length": opts.max_new_tokens,
        "temperature": opts.kd_temperature,
        "beta": opts.divergence_beta,
        "teacher_model_init_kwargs": {"dtype": "bfloat16" if on_gpu else "float32"},
    }
    logger.info("on-policy distillation: the student samples up to %d tokens per prompt at temperature %g; %s scores "
                "them (beta %g%s)", opts.max_new_tokens, opts.kd_temperature, teacher, opts.divergence_beta,
                ", through its own tokenizer: GOLD" if opts.cross_tokenizer else "")
    if opts.cross_tokenizer:
        return gold_trainer(common, cfg, model, tokenizer, teacher_id, rows, peft_config)
    return trl.DistillationTrainer(
        model=model, teacher_model=teacher_id, args=trl.DistillationConfig(**common),
        train_dataset=conversations_dataset([messages[:-1] for messages in rows], column="prompt"),
        processing_class=tokenizer, peft_config=peft_config,
    )


def gold_trainer(common: dict[str, Any], cfg: SftConfig, model: Any, tokenizer: Any, teacher_id: str,
                 rows: list[list[dict[str, str]]], peft_config: Any) -> Any:
    """TRL's GOLDTrainer (trl.experimental.gold), fully on-policy (lmbda 1: every batch is the
    student's own samples): the teacher re-tokenizes prompt and sample with its own tokenizer;
    tokens of the same text in both vocabularies are compared by the generalised JSD (beta),
    the rest by ULD's sorted-probability distance (GOLD's hybrid loss). GOLD reads the rows as
    conversations and takes the prompt from them; their answers are never trained on."""
    from trl.experimental.gold import GOLDConfig, GOLDTrainer

    args = GOLDConfig(**common, lmbda=1.0, use_uld_loss=True, uld_use_hybrid_loss=True,
                      teacher_tokenizer_name_or_path=teacher_id, max_length=cfg.max_length, top_p=1.0)
    return GOLDTrainer(model=model, teacher_model=teacher_id, args=args,
                       train_dataset=conversations_dataset(rows, column="messages"),
                       processing_class=tokenizer, peft_config=peft_config)
