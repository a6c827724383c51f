"""On-policy distillation (`sft.distill.loss: on_policy`), on TRL's DistillationTrainer.

The student answers the training prompts itself (sampled at `sft.distill.temperature`, at
most `max_new_tokens`), and a local teacher scores every token of those answers: the loss
is the generalised Jensen-Shannon divergence between the teacher's and the student's
next-token distributions on the student's own tokens (`beta`: 0 forward KL, 1 reverse KL).
So the student learns where it goes wrong, in the states it reaches, not only in the
teacher's (Agarwal et al. 2024, "On-Policy Distillation of Language Models"). The teacher's
answers in the training data are not used, only their prompts; the teacher runs in the
training process (transformers), so it must fit beside the student, and share its tokenizer.

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
                         "distillation needs teacher and student to share a tokenizer: choose a student of the "
                         "teacher's family, or use plain SFT (remove sft.distill)")


def on_policy_trainer(trl: Any, transformers: Any, cfg: SftConfig, model: Any, tokenizer: Any, teacher: str,
                      prompts: list[list[dict[str, str]]], student: StudentLayout, *, peft_config: Any,
                      on_gpu: bool, progress: bool) -> Any:
    """TRL's DistillationTrainer for the student `model` and the local `teacher`, on `prompts`
    (each a chat up to the answer)."""
    opts = cfg.distill
    assert cfg.on_policy and opts is not None
    teacher_id = local_model(teacher, "sft.distill.teacher")
    check_same_tokenizer(transformers, teacher_id, tokenizer)
    tokenizer.padding_side = "left"  # the student generates from left-padded prompts
    args = trl.DistillationConfig(
        **trainer_arguments(cfg, student, on_gpu=on_gpu, progress=progress),
        eval_strategy="no",  # the held-out set is scored by `sft eval` after training
        max_completion_length=opts.max_new_tokens,
        temperature=opts.temperature,
        beta=opts.beta,
        teacher_model_init_kwargs={"dtype": "bfloat16" if on_gpu else "float32"},
    )
    logger.info("on-policy distillation: the student samples up to %d tokens per prompt at temperature %g; %s scores "
                "them (beta %g)", opts.max_new_tokens, opts.temperature, teacher, opts.beta)
    return trl.DistillationTrainer(
        model=model, teacher_model=teacher_id, args=args,
        train_dataset=conversations_dataset(prompts, column="prompt"),
        processing_class=tokenizer, peft_config=peft_config,
    )
