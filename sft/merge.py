"""`sft merge`: fold the LoRA adapter into the base weights and save a standalone model.

Merges in bf16 or fp32, never into a 4-bit or 8-bit base (rounding the sum back to the
quantised grid would lose the adapter). Checks merged vs unmerged logits on a few real
inputs before saving and reports the largest difference.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sft.data import read_conversations
from sft.student import resolve_student
from synth.plan import Plan
from synth.rawlog import DirLock

logger = logging.getLogger(__name__)

TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2}


def run_merge(plan: Plan, dtype: str = "float32", samples: int = 4) -> dict[str, Any]:
    """Merge the SFT student's adapter into its base (STUDENT/merged); returns the report."""
    try:
        import peft  # noqa: F401  heavy: the sft extra
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"sft merge needs torch, transformers and peft ({exc}): pip install 'stillhouse[sft]'") from None
    if dtype not in TOLERANCE:
        raise ValueError(f"--dtype: choose float32 or bfloat16 (never a quantised type), got {dtype!r}")
    cfg, student = plan.sft, plan.student.files
    adapter = student.trained
    if cfg.full_finetune:
        raise ValueError(f"sft merge: sft.full_finetune is true, so {adapter} is already a standalone model; nothing to merge")
    if not student.trained_marker.is_file():
        raise ValueError(f"sft merge: no adapter in {adapter}; run `sft train` first (full fine-tunes need no merge)")
    with DirLock(plan.layout.root):
        return _merge(plan, dtype, samples)


def _merge(plan: Plan, dtype: str, samples: int) -> dict[str, Any]:
    import torch  # heavy: torch, peft, transformers
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg, student = plan.sft, plan.student.files
    adapter = student.trained
    model_id = resolve_student(cfg.model)
    base_config = AutoConfig.from_pretrained(model_id)
    if getattr(base_config, "quantization_config", None):
        raise ValueError(f"sft.model: {cfg.model} is quantised; merge into a bf16 or fp32 copy of the base, never into 4/8-bit weights")
    torch_dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    base = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch_dtype)
    model = PeftModel.from_pretrained(base, adapter).eval()

    texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in read_conversations(cfg.train_path(plan.layout))[:samples]]
    with torch.no_grad():
        unmerged = [model(**tokenizer(t, return_tensors="pt", truncation=True, max_length=256)).logits for t in texts]
        merged_model = model.merge_and_unload()
        merged = [merged_model(**tokenizer(t, return_tensors="pt", truncation=True, max_length=256)).logits for t in texts]
    diff = max(float((a - b).abs().max()) for a, b in zip(unmerged, merged, strict=True))
    if diff > TOLERANCE[dtype]:
        raise ValueError(f"sft merge: merged and unmerged logits differ by {diff:.3g} (> {TOLERANCE[dtype]:g} for {dtype}); not saved")
    target = student.merged
    merged_model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    report = {"merged": str(target), "dtype": dtype, "max_abs_logit_diff": diff, "checked_inputs": len(texts)}
    student.merge_report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    logger.info("merged into %s (max |logit diff| %.3g over %d inputs)", target, diff, len(texts))
    return report


