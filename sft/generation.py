"""The student's greedy answers to prompts, before and after training: on vLLM where it is
installed (the adapter as a LoRARequest on the base engine; a second engine for a fully
fine-tuned model), with transformers' generate otherwise. Used by `sft eval` and by the
student pairs of `synth pairs` (sft.answers)."""

from __future__ import annotations

import contextlib
import gc
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft.config import SftConfig
from sft.student import resolve_student
from synth.layout import StudentLayout
from synth.runtime import on_cpu, release_engine, start_llm


def engine_for(cfg: SftConfig) -> str:
    """sft.eval_engine, with auto resolved: vllm when it is installed, else transformers."""
    if cfg.eval_engine != "auto":
        return cfg.eval_engine
    return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"


def generate_transformers(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], max_new: int) -> list[str]:
    """Greedy answers with transformers' generate, one prompt at a time."""
    import torch  # heavy: torch

    out = []
    with torch.no_grad():
        for messages in prompts:
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            ids = {k: v.to(model.device) for k, v in ids.items()}
            gen = model.generate(**ids, max_new_tokens=max_new, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
            out.append(tokenizer.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def vllm_engine(cfg: SftConfig, model: str, max_new: int, lora: bool, dtype: str | None = None) -> Any:
    """A vLLM engine for the student (`lora`: with room for the adapter), its KV cache sized
    by sft.eval_kv_cache_gib; `dtype` overrides the CPU's float32 (a quantized checkpoint's
    kernels take bfloat16)."""
    max_len = cfg.max_length + max_new  # room for the longest prompt and the answer, within the model's context
    context = context_length(model)
    kwargs: dict[str, Any] = {"model": model, "max_model_len": min(max_len, context) if context else max_len,
                              "distributed_executor_backend": "uni"}
    if lora:
        kwargs.update(enable_lora=True, max_lora_rank=max(cfg.lora.r, 8))
    if on_cpu():
        kwargs.update(dtype="float32", enforce_eager=True, enable_chunked_prefill=False)
    if dtype:
        kwargs["dtype"] = dtype
    return start_llm(kwargs, cfg.eval_kv_cache_gib, "sft.eval_kv_cache_gib")


def context_length(model: str) -> int | None:
    """The model's context length (max_position_embeddings), None when its config has none."""
    from transformers import AutoConfig  # heavy: transformers

    config = AutoConfig.from_pretrained(model)
    config = getattr(config, "text_config", None) or config
    return getattr(config, "max_position_embeddings", None)


def chat_vllm(llm: Any, prompts: list, max_new: int, adapter: Path | None = None) -> list[str]:
    """Greedy answers of an engine, through `adapter` (a LoRA adapter directory) when given."""
    import vllm  # heavy: vllm
    from vllm.lora.request import LoRARequest

    params = vllm.SamplingParams(temperature=0.0, max_tokens=max_new)
    lora = LoRARequest("student", 1, str(adapter)) if adapter is not None else None
    return [o.outputs[0].text for o in llm.chat(prompts, params, lora_request=lora, use_tqdm=False)]


def student_answers(cfg: SftConfig, student: StudentLayout, prompts: list, max_new: int) -> list[str]:
    """The trained student's greedy answers (sft.eval_engine): on vLLM the fully fine-tuned
    model, or the base with the adapter as a LoRARequest; else transformers' generate."""
    model_id = resolve_student(cfg.model)
    if engine_for(cfg) == "vllm":
        full = cfg.full_finetune  # the trained model itself, else the base with the adapter
        llm = vllm_engine(cfg, str(student.trained) if full else model_id, max_new, lora=not full)
        try:
            return chat_vllm(llm, prompts, max_new, adapter=None if full else student.trained)
        finally:
            release_engine(llm)
    models = load_student_models(cfg, model_id, student.trained)
    try:
        return generate_transformers(models.tuned, models.tokenizer, prompts, max_new)
    finally:
        models.release()


def generate_vllm(cfg: SftConfig, model_id: str, trained: Path, prompts: list, max_new: int) -> tuple[list[str], list[str]]:
    """(answers before, answers after): the base model, then the base + adapter as a
    LoRARequest (one engine), or the fully fine-tuned model (a second engine)."""
    llm = vllm_engine(cfg, model_id, max_new, lora=not cfg.full_finetune)
    try:
        before = chat_vllm(llm, prompts, max_new)
        if cfg.full_finetune:
            release_engine(llm)
            llm = vllm_engine(cfg, str(trained), max_new, lora=False)
            after = chat_vllm(llm, prompts, max_new)
        else:
            after = chat_vllm(llm, prompts, max_new, adapter=trained)
    finally:
        release_engine(llm)
    return before, after


@dataclass
class StudentModels:
    """The student before (`base`, adapter off) and after (`tuned`) training, on the GPU
    when there is one."""

    base: Any
    tuned: Any
    tokenizer: Any
    full_finetune: bool

    def before(self):
        """A context in which `base` answers as the untrained student: the adapter off (a
        full fine-tune's base is untouched)."""
        return contextlib.nullcontext() if self.full_finetune else self.base.disable_adapter()

    def release(self) -> None:
        """Free the models' memory (GPU memory included) before an engine starts."""
        import torch  # heavy: torch

        self.base = self.tuned = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def load_student_models(cfg: SftConfig, model_id: str, trained: Path) -> StudentModels:
    """The base and the trained student (an adapter over the base, or full weights)."""
    try:
        import torch  # heavy: torch, transformers, peft
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ImportError(f"sft eval needs torch, transformers and peft ({exc}): pip install 'stillhouse[sft]'") from None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(trained)
    base = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype).to(device).eval()
    if cfg.full_finetune:
        tuned = AutoModelForCausalLM.from_pretrained(trained, dtype=dtype).to(device).eval()
    else:
        tuned = base = PeftModel.from_pretrained(base, trained).to(device).eval()
    return StudentModels(base, tuned, tokenizer, cfg.full_finetune)
