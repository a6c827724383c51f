"""The recipe's `sft` section: how the student is trained (validated dataclasses).

Part of the config layer, with synth.config above it: it imports only the config helpers
and the output layout. The eval verifier's function is checked when synth.plan resolves
the recipe."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synth.configtools import help_field
from synth.layout import Layout, StudentLayout


@dataclass
class LoraOptions:
    r: int = help_field(16, help="LoRA rank")
    alpha: int = help_field(32, help="LoRA alpha (scale = alpha / r, or alpha / sqrt(r) with rslora)")
    dropout: float = help_field(0.05, help="dropout on the LoRA input")
    target_modules: Any = help_field("all-linear", help="modules to adapt: all-linear, or a list of module names")
    rslora: bool = help_field(False, help="rank-stabilised LoRA scaling")

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha < 1:
            raise ValueError(f"r: must be >= 1 (and alpha >= 1), got r={self.r}, alpha={self.alpha}")
        if not (0 <= self.dropout < 1):
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")
        if not (self.target_modules == "all-linear" or (isinstance(self.target_modules, list) and self.target_modules)):
            raise ValueError("target_modules: give all-linear or a non-empty list of module names")


@dataclass
class HarnessOptions:
    tasks: list[str] = help_field(default_factory=list, help="lm-evaluation-harness task names: local ones from include_path (e.g. dates_iso) or the harness's own (e.g. ifeval, hellaswag: their datasets come from the hub)")
    include_path: str | None = help_field(None, help="a folder of local task YAMLs (each with its data files), e.g. prompts/harness")
    limit: int | None = help_field(None, help="score at most this many items of each task (none: all)")
    num_fewshot: int | None = help_field(None, help="few-shot examples per item (none: the task's own setting)")
    batch_size: int = help_field(8, help="items per forward pass")
    chat_template: bool = help_field(True, help="render each item through the student's chat template (a chat student answers as it was trained)")

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str):
            self.tasks = [self.tasks]
        if not self.tasks or not all(isinstance(t, str) and t for t in self.tasks):
            raise ValueError("tasks: give a list of lm-evaluation-harness task names, e.g. [dates_iso]")
        if self.include_path is not None and not Path(self.include_path).is_dir():
            raise ValueError(f"include_path: {self.include_path} is not a folder; give the folder of your task YAMLs "
                             "(e.g. prompts/harness)")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit: must be at least 1 (or none for every item), got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be at least 1, got {self.batch_size}")


DISTILL_LOSSES = ("topk_kl", "on_policy")
KD_TEMPERATURE = 2.0  # topk_kl's default on the teacher's own vocabulary (bench/RESULTS.md, kd_sweep)


@dataclass
class DistillOptions:
    loss: str = help_field("topk_kl", help="topk_kl: KL from the teacher's top-k logprobs captured with the data (sampling.logprobs) to the student's, on the answer tokens; on_policy: the student samples answers to the training prompts and a local teacher scores every token of them (TRL's DistillationTrainer)")
    top_k: int | None = help_field(None, help="topk_kl: teacher tokens used per position (at most what was captured); none: all captured")
    temperature: float | None = help_field(None, help="topk_kl: softens both distributions (the loss is scaled by its square); default 2.0 on the teacher's own vocabulary (the best setting of bench/kd_sweep.py), 1.0 with cross_tokenizer or tail: true; on_policy: the student's sampling temperature, default 1.0")
    alpha: float = help_field(0.5, help="topk_kl: weight of the KL term; 1 - alpha weighs the cross-entropy on the teacher's text")
    tail: bool | None = help_field(None, help="topk_kl: add the mass outside the top k as one bucket (needs temperature 1.0); false renormalises the top k; default true at temperature 1.0, else false")
    logprobs: str | None = help_field(None, help="topk_kl: the teacher's logprobs file; default OUTPUT/logprobs.bin")
    require: bool = help_field(False, help="topk_kl: every example must have aligned teacher logprobs (else an error); false: those without train on cross-entropy only, counted")
    cross_tokenizer: bool = help_field(False, help="topk_kl: the teacher's tokenizer differs from the student's (another model family): at each answer position where both tokenizations start a token at the same character, the teacher's top-k tokens are mapped to the student's tokens of the same text (as TRL's GOLD matches them) and the mass of those without one joins the tail; the teacher's tokenizer comes from sft.distill.teacher or the recipe's local teacher. on_policy: TRL's GOLDTrainer scores the student's samples through the teacher's own tokenizer (tokens of the same text by the JSD, the rest by ULD)")
    teacher: str | None = help_field(None, help="on_policy: the teacher that scores the student's samples (HF id or local directory, loaded with transformers; sharing the student's tokenizer unless cross_tokenizer); default the recipe's teacher.model when it is a local vllm teacher")
    beta: float | None = help_field(None, help="the divergence, generalised Jensen-Shannon as TRL defines it: 0 forward KL(teacher || student), 0.5 JSD, 1 reverse KL (mode-seeking); default 0 for topk_kl, 0.5 for on_policy")
    max_new_tokens: int = help_field(256, help="on_policy: most tokens per student sample")

    def __post_init__(self) -> None:
        if self.loss not in DISTILL_LOSSES:
            raise ValueError(f"loss: unknown '{self.loss}'; choose {', '.join(DISTILL_LOSSES)}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k: must be at least 1 (or none for all captured), got {self.top_k}")
        if self.temperature is not None and not (self.temperature > 0):
            raise ValueError(f"temperature: must be > 0, got {self.temperature}")
        if not (0 <= self.alpha <= 1):
            raise ValueError(f"alpha: must be in [0, 1], got {self.alpha}")
        if self.beta is not None and not (0 <= self.beta <= 1):
            raise ValueError(f"beta: must be in [0, 1] (0 forward KL, 0.5 JSD, 1 reverse KL), got {self.beta}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be at least 1, got {self.max_new_tokens}")
        if self.cross_tokenizer and self.loss == "topk_kl" and self.kd_temperature != 1.0:
            raise ValueError("cross_tokenizer: matches the captured probabilities as they are (temperature 1.0); remove temperature")
        if self.loss == "topk_kl" and self.kd_tail and self.kd_temperature != 1.0:
            raise ValueError("tail: the tail bucket needs temperature 1.0 (the captured logprobs are at 1); set tail: false")

    @property
    def kd_temperature(self) -> float:
        """temperature, or its default: 2.0 for topk_kl on the teacher's vocabulary (softened
        targets measured best, bench/kd_sweep.py), else 1.0 (a tail bucket, another vocabulary,
        on-policy sampling)."""
        if self.temperature is not None:
            return self.temperature
        softened = self.loss == "topk_kl" and not self.cross_tokenizer and self.tail is not True
        return KD_TEMPERATURE if softened else 1.0

    @property
    def kd_tail(self) -> bool:
        """tail, or its default: a tail bucket where the temperature is 1.0."""
        return self.tail if self.tail is not None else self.kd_temperature == 1.0

    @property
    def divergence_beta(self) -> float:
        """beta, or the loss's default (topk_kl: forward KL; on_policy: JSD)."""
        if self.beta is not None:
            return self.beta
        return 0.0 if self.loss == "topk_kl" else 0.5

    def path(self, layout: Layout) -> Path:
        return Path(self.logprobs) if self.logprobs else layout.logprobs


@dataclass
class DpoOptions:
    """Preference training on OUTPUT/pairs.jsonl (docs/distillation.md)."""

    pairs: str | None = help_field(None, help="the preference pairs (prompt, chosen, rejected); default OUTPUT/pairs.jsonl (`synth pairs`)")
    beta: float = help_field(0.1, help="DPO's beta: how far the student may move from the SFT student it starts from")
    loss_type: str = help_field("sigmoid", help="TRL's DPO loss (sigmoid: the DPO paper's; ipo, hinge, robust, ...); several, comma-separated, are summed (sigmoid,sft: DPO plus the chosen answers' NLL, as RPO)")
    learning_rate: float = help_field(5.0e-5, help="learning rate of the preference step (the SFT adapter trained further)")
    epochs: float = help_field(1.0, help="passes over the pairs")
    max_steps: int = help_field(-1, help="stop after this many steps (-1: use epochs)")
    output_dir: str | None = help_field(None, help="where the DPO student goes; default STUDENT/dpo (beside the SFT adapter)")

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"beta: must be positive, got {self.beta}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate: must be positive, got {self.learning_rate}")


@dataclass
class SftConfig:
    model: str = help_field(help="student model: HF id or local directory", stage=("train", "eval"))
    train: str | None = help_field(None, help="training JSONL (messages); default OUTPUT/train.jsonl")
    eval: str | None = help_field(None, help="eval JSONL; default OUTPUT/eval.jsonl when it exists")
    output_dir: str | None = help_field(None, help="where the adapter, checkpoints and metrics go; default OUTPUT/student")
    full_finetune: bool = help_field(False, help="train every weight instead of a LoRA adapter (for very small students)", stage="train")
    lora: LoraOptions = help_field(default_factory=LoraOptions, help="LoRA settings", stage="train")
    max_length: int = help_field(1024, help="longest example in tokens", stage=("train", "eval"))
    overlong: str = help_field("truncate", help="examples longer than max_length: truncate or drop", stage="train")
    assistant_only_loss: bool = help_field(True, help="loss only on assistant turns (needs {% generation %} markers in the chat template)", stage="train")
    chat_template: str | None = help_field(None, help="a chat template file with generation markers, if the model's has none", stage="train")
    reasoning: str = help_field("keep", help="the teacher's reasoning traces: keep (trained on, through a chat template that renders reasoning_content, else written before the answer between the teacher's tags) or drop", stage="train")
    repairs: str = help_field("trajectory", help="records of self-repair (the recipe's repair section): trajectory (every answer and the failures between them; the loss on every answer) or final (the first prompt and the last answer only)")
    packing: str | bool = help_field("auto", help="auto (BFD packing where attention handles it without a dense mask: flash attention, flex_attention), true or false", stage="train")
    attn_implementation: str | None = help_field(None, help="attention implementation (sdpa, eager, flash_attention_2, flex_attention); none lets transformers pick", stage="train")
    group_by_length: bool = help_field(False, help="padded batches of similar lengths, in random order: less padding, but where length goes with content it can cost quality (see docs/distillation.md)", stage="train")
    gradient_checkpointing: bool = help_field(False, help="recompute activations to save memory")
    epochs: float = help_field(3.0, help="passes over the training set", stage="train")
    max_steps: int = help_field(-1, help="stop after this many optimizer steps (-1: use epochs)", stage="train")
    batch_size: int = help_field(8, help="examples per device per step", stage="train")
    grad_accum: int = help_field(1, help="gradient accumulation steps", stage="train")
    learning_rate: float = help_field(2e-4, help="peak learning rate", stage="train")
    warmup_ratio: float = help_field(0.03, help="share of steps spent warming up", stage="train")
    weight_decay: float = help_field(0.0, help="AdamW weight decay", stage="train")
    seed: int = help_field(0, help="random seed", stage="train")
    logging_steps: int = help_field(10, help="log the loss every N steps")
    save_steps: int = help_field(200, help="checkpoint every N steps (resume starts from the last)")
    save_total_limit: int = help_field(2, help="checkpoints kept")
    eval_steps: int | None = help_field(None, help="evaluate every N steps; none evaluates once per epoch when there is an eval set")
    eval_engine: str = help_field("auto", help="`sft eval` generation: vllm (adapter via LoRARequest), transformers, or auto (vllm if installed)", stage="eval")
    eval_max_new_tokens: int = help_field(256, help="`sft eval`: most tokens per student answer (greedy)", stage="eval")
    eval_limit: int | None = help_field(None, help="`sft eval`: evaluate only the first N held-out examples", stage="eval")
    eval_judge: str | None = help_field(None, help="`sft eval`: a JUDGE.yaml (as for synth diff --judge) for the judge win rate of student vs teacher; `synth compare` asks it which version's student answers better", stage="eval")
    eval_verifier: str | None = help_field(None, help="`sft eval`: 'module:function' task check run on student and teacher answers", stage="eval")
    distill: DistillOptions | None = help_field(None, help="train on the teacher's top-k logprobs too (knowledge distillation); see docs/distillation.md", stage="train")
    dpo: DpoOptions = help_field(default_factory=DpoOptions, help="`sft dpo`: preference training of the SFT student on pairs")
    eval_harness: HarnessOptions | None = help_field(None, help="`sft eval`: regression checks with lm-evaluation-harness on the student before and after training, the change per task paired by item (docs/distillation.md)", stage="harness")
    eval_kv_cache_gib: float | None = help_field(None, help="`sft eval` with vLLM: KV cache size in GiB; none: 0.5 on a CPU, vLLM's share of GPU memory (0.9) on a GPU")

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model: give the student's HF id or local directory")
        if self.overlong not in ("truncate", "drop"):
            raise ValueError(f"overlong: unknown '{self.overlong}'; choose truncate or drop")
        if self.packing not in ("auto", True, False):
            raise ValueError(f"packing: unknown '{self.packing}'; choose auto, true or false")
        for name in ("max_length", "batch_size", "grad_accum", "logging_steps", "save_steps", "save_total_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if not (0 <= self.warmup_ratio < 1):
            raise ValueError(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if self.eval_engine not in ("auto", "vllm", "transformers"):
            raise ValueError(f"eval_engine: unknown '{self.eval_engine}'; choose auto, vllm or transformers")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate: must be > 0, got {self.learning_rate}")
        if self.eval_kv_cache_gib is not None and self.eval_kv_cache_gib <= 0:
            raise ValueError(f"eval_kv_cache_gib: must be a size in GiB above 0, got {self.eval_kv_cache_gib}")

        if self.reasoning not in ("keep", "drop"):
            raise ValueError(f"reasoning: unknown '{self.reasoning}'; choose keep or drop")
        if self.repairs not in ("trajectory", "final"):
            raise ValueError(f"repairs: unknown '{self.repairs}'; choose trajectory or final")
        if self.chat_template is not None and not Path(self.chat_template).is_file():
            raise ValueError(f"chat_template: {self.chat_template} does not exist")
        if self.eval_judge is not None and not Path(self.eval_judge).is_file():
            raise ValueError(f"eval_judge: {self.eval_judge} does not exist; give a JUDGE.yaml (see docs/guides/new-teacher.md)")

    @property
    def on_policy(self) -> bool:
        """The student trains on its own samples, scored by a live teacher (sft.distill.loss: on_policy)."""
        return self.distill is not None and self.distill.loss == "on_policy"

    def train_path(self, layout: Layout) -> Path:
        """The training data: sft.train, or OUTPUT/train.jsonl."""
        return Path(self.train) if self.train else layout.train

    def eval_path(self, layout: Layout) -> Path | None:
        """The held-out data: sft.eval, or OUTPUT/eval.jsonl when curation wrote one with rows
        (a small dataset can leave curate.eval_fraction's share empty)."""
        if self.eval:
            return Path(self.eval)
        return layout.eval if layout.eval.exists() and layout.eval.stat().st_size > 0 else None

    def student(self, layout: Layout) -> StudentLayout:
        """The files of the trained student: sft.output_dir, or OUTPUT/student."""
        return layout.student(self.output_dir, self.full_finetune)



GGUF_QUANTS = ("f16", "bf16", "q8_0", "q6_K", "q5_K_M", "q5_0", "q4_K_M", "q4_0")
"""The GGUF types `sft export` writes: f16 and bf16 by llama.cpp's converter, the others by
llama-quantize from the f16 file."""
VLLM_QUANTS = ("w8a8", "w4a16")
"""The compressed-tensors checkpoints `sft export` writes for vLLM (sft.quantize): int8 weights
and activations, or int4 weights in groups of 128 with 16-bit activations."""
EXPORT_QUANTS = GGUF_QUANTS + VLLM_QUANTS


def artifact(files: StudentLayout, quant: str) -> Path:
    """Where the export at `quant` lives: a GGUF file, or a checkpoint directory for vLLM."""
    return files.vllm_checkpoint(quant) if quant in VLLM_QUANTS else files.gguf(quant)

PRE_TOKENIZERS_HINT = "gpt-2, starcoder, llama-bpe, qwen2, ..."


@dataclass
class ExportConfig:
    """The recipe's `export` section: the trained student shipped where it will run (docs/guides/ship.md)."""

    quants: list[str] = help_field(default_factory=lambda: ["q8_0"], help=f"the quantizations written, each evaluated. GGUF files for llama.cpp: {', '.join(GGUF_QUANTS)} (f16 is then written too: the others are made from it); compressed-tensors checkpoints for vLLM: w8a8 (int8 weights per channel, int8 activations per token), w4a16 (int4 weights in groups of 128)")
    pre_tokenizer: str = help_field("auto", help=f"llama.cpp's name for the tokenizer's pre-tokenization ({PRE_TOKENIZERS_HINT}); auto: the converter's own recognition, else derived from tokenizer.json when it is plain byte-level BPE (with or without single digits)")
    eval: bool = help_field(True, help="evaluate every export on the held-out prompts through the engine that serves it (llama-server for GGUF, vLLM for compressed-tensors), with sft.eval_verifier and sft.eval_limit (eval_report.md gains a table)")
    eval_concurrency: int = help_field(4, help="requests in flight to llama-server during the evaluation (its --parallel slots)")
    threads: int | None = help_field(None, help="CPU threads for llama-quantize and llama-server; none: llama.cpp's default (all cores)")
    ctx_size: int = help_field(2048, help="llama-server's context size (tokens, shared by its slots)")

    def __post_init__(self) -> None:
        if isinstance(self.quants, str):
            self.quants = [self.quants]
        if not isinstance(self.quants, list) or not self.quants:
            raise ValueError(f"quants: give a list of quantizations ({', '.join(EXPORT_QUANTS)})")
        for q in self.quants:
            if q not in EXPORT_QUANTS:
                raise ValueError(f"quants: unknown '{q}'; choose from {', '.join(GGUF_QUANTS)} (GGUF for llama.cpp) or "
                                 f"{', '.join(VLLM_QUANTS)} (compressed-tensors for vLLM)")
        self.quants = list(dict.fromkeys(self.quants))
        if not self.pre_tokenizer or not self.pre_tokenizer.replace("-", "").replace(".", "").replace("_", "").isalnum():
            raise ValueError(f"pre_tokenizer: give auto or a llama.cpp pre-tokenizer name ({PRE_TOKENIZERS_HINT}), got {self.pre_tokenizer!r}")
        if self.eval_concurrency < 1:
            raise ValueError(f"eval_concurrency: must be at least 1, got {self.eval_concurrency}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads: must be at least 1 (or none for llama.cpp's default), got {self.threads}")
        if self.ctx_size < 64:
            raise ValueError(f"ctx_size: must be at least 64 tokens, got {self.ctx_size}")
