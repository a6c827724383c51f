"""`sft export`: the trained student as GGUF files for llama.cpp, and as compressed-tensors
checkpoints for vLLM (docs/guides/ship.md).

One stage per quantization (`export f16`, `export q8_0`, `export w8a8`, ...). The f16 file comes from
llama.cpp's own converter (sft.gguf_convert runs it) reading the trained weights: the full
fine-tune's model/, or for a LoRA student the adapter merged into its base first (`sft
merge`, fp32). Every other GGUF quantization is llama-quantize's from the f16 file. w8a8 and
w4a16 are directories (STUDENT/export/model-w8a8/) that sft.quantize writes from the same
trained weights with compressed-tensors.

Each stage is keyed like the others: the trained weights (and the base of an adapter), the
quantization, export.pre_tokenizer and the llama.cpp build (compressed-tensors' version for
the vLLM checkpoints). A changed student or setting
exports again; the same one is skipped. Files are written under a temporary name and renamed
when complete, so a killed export never leaves a file that looks finished.
`STUDENT/export/exports.json` lists every file written: format, quantization, size,
the source weights' fingerprint and the llama.cpp build.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from sft.config import VLLM_QUANTS, ExportConfig
from sft.export_report import disk_size, human_size
from sft.gguf_convert import UNRECOGNISED
from sft.llamacpp import LlamaCpp, find_llama_cpp
from sft.merge import run_merge
from sft.quantize import compressed_tensors_version, write_compressed
from synth.fingerprint import fingerprint_dir, model_identity
from synth.plan import Plan
from synth.runtime import read_json, utc_now, write_json_atomically
from synth.stage import Stage, StageResult

logger = logging.getLogger(__name__)

LLAMA_FTYPES = {"f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q6_K": "Q6_K", "q5_K_M": "Q5_K_M", "q5_0": "Q5_0",
                "q4_K_M": "Q4_K_M", "q4_0": "Q4_0"}
CONVERTER_TYPES = ("f16", "bf16")
FALLBACK = re.compile(r"^warning: (\S+)\s+- ncols .* falling back to\s+(\S+)", re.M)  # written by the converter itself; the rest by llama-quantize from f16


def export_config(plan: Plan) -> ExportConfig:
    """The recipe's export section, or its defaults (`sft export` on a recipe without one)."""
    return plan.recipe.export if plan.recipe.export is not None else ExportConfig()


def require_trained(plan: Plan) -> None:
    """An error that says what to run when the student has not been trained."""
    files = plan.student.files
    if not files.trained_marker.is_file():
        raise ValueError(f"sft export: no trained student in {files.trained}; run `sft train RECIPE` (or `synth run "
                         "RECIPE`) first")


def source_weights(plan: Plan) -> Path:
    """The trained weights as a standalone HF model: model/ of a full fine-tune, else the
    adapter merged into its base (`sft merge`, fp32; skipped when current)."""
    cfg, files = plan.sft, plan.student.files
    require_trained(plan)
    if cfg.full_finetune:
        return files.trained
    logger.info("export: merging the adapter into its base first (sft merge, fp32)")
    run_merge(plan, dtype="float32")
    return files.merged


def weights_key(plan: Plan) -> dict[str, Any]:
    """What an export is made from: the trained weights and, for an adapter, its base."""
    cfg, files = plan.sft, plan.student.files
    return {"weights": fingerprint_dir(files.trained) if files.trained.is_dir() else None,
            "base": None if cfg.full_finetune else model_identity(cfg.model)}


class GgufExport(Stage):
    """The trained student as one GGUF file at one quantization (keyed; see the module docstring)."""

    name = "export"

    def __init__(self, plan: Plan, quant: str, progress: bool = True, export: ExportConfig | None = None,
                 tools: LlamaCpp | None = None):
        super().__init__(plan, progress)
        self.quant = quant
        self.name = f"export {quant}"
        self.export = export or export_config(plan)
        self._tools = tools
        if quant not in LLAMA_FTYPES:
            raise ValueError(f"export.quants: unknown '{quant}'; choose from {', '.join(LLAMA_FTYPES)}")

    @property
    def tools(self) -> LlamaCpp:
        if self._tools is None:
            self._tools = find_llama_cpp()
        return self._tools

    def key(self) -> dict[str, Any]:
        return {
            **weights_key(self.plan),
            "quant": self.quant,
            "pre_tokenizer": self.export.pre_tokenizer,
            "llama_cpp": self.tools.build,
        }

    def stamp(self) -> Path:
        return self.plan.student.files.gguf_stamp(self.quant)

    def outputs(self) -> tuple[Path, ...]:
        return (self.plan.student.files.gguf(self.quant),)

    def work(self, key: dict[str, Any] | None) -> StageResult:
        files = self.plan.student.files
        require_trained(self.plan)
        target = files.gguf(self.quant)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".partial")
        tmp.unlink(missing_ok=True)
        fallbacks: list[str] = []
        if self.quant in CONVERTER_TYPES:
            source = source_weights(self.plan)
            _check_disk(target.parent, disk_size(source))
            self._convert(source, tmp)
        else:
            f16 = GgufExport(self.plan, "f16", self.progress, self.export, self.tools).run()
            del f16  # run or skipped: files.gguf("f16") is current either way
            _check_disk(target.parent, files.gguf("f16").stat().st_size)
            fallbacks = self._quantize(files.gguf("f16"), tmp)
        os.replace(tmp, target)
        entry = {"format": "gguf", "quant": self.quant, "file": target.name, "bytes": target.stat().st_size,
                 "source_weights": key["weights"] if key else None, "llama_cpp": self.tools.version,
                 "exported_at": utc_now()}
        if self.quant not in CONVERTER_TYPES and fallbacks:
            entry["fallback_tensors"] = fallbacks
        _record(files.export_manifest, entry)
        line = f"{target} ({human_size(entry['bytes'])}, GGUF {self.quant})"
        if fallbacks:
            line += (f"; {len(fallbacks)} tensors in another type (rows not a multiple of {self.quant}'s block; "
                     f"e.g. {fallbacks[0]})")
        logger.info("exported %s", line)
        return self.result(f"GGUF {self.quant}: {human_size(entry['bytes'])}", [f"sft export: {line}"], entry)

    def _convert(self, source: Path, out: Path) -> None:
        cmd = [sys.executable, "-m", "sft.gguf_convert", str(self.tools.convert_dir), self.export.pre_tokenizer, "--",
               str(source), "--outfile", str(out), "--outtype", self.quant]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "NO_LOCAL_GGUF": "1"})
        if done.returncode == UNRECOGNISED:
            raise ValueError(f"export.pre_tokenizer: llama.cpp does not know the tokenizer of {source}, and its "
                             "tokenizer.json does not say which of llama.cpp's pre-tokenizers it equals. Set "
                             "export.pre_tokenizer to the name of the model family whose pre-tokenization it uses "
                             "(gpt-2: plain byte-level BPE; starcoder: single digits, then byte-level; llama-bpe: "
                             "Llama 3's; qwen2: Qwen's); a wrong name converts but tokenizes differently, and the "
                             "export's evaluation shows it")
        if done.returncode != 0:
            out.unlink(missing_ok=True)
            tail = "\n  ".join((done.stderr or done.stdout).strip().splitlines()[-6:])
            hint = ""
            if "not supported" in done.stderr or "Model " in done.stderr and "is not supported" in done.stderr:
                hint = " (llama.cpp's converter does not support this architecture; see its convert_hf_to_gguf.py)"
            raise ValueError(f"sft export: llama.cpp's converter failed on {source}{hint}:\n  {tail}")
        for line in done.stderr.splitlines():
            if line.startswith("stillhouse:"):
                logger.info("export: %s", line.removeprefix("stillhouse: "))

    def _quantize(self, f16: Path, out: Path) -> list[str]:
        """llama-quantize f16 -> out; returns the tensors it wrote in a fallback type
        ('blk.0.attn_q.weight: q5_0'), as it does where a row is not a multiple of the block."""
        cmd = [str(self.tools.quantize), str(f16), str(out), LLAMA_FTYPES[self.quant]]
        if self.export.threads:
            cmd.append(str(self.export.threads))
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            out.unlink(missing_ok=True)
            tail = "\n  ".join((done.stderr or done.stdout).strip().splitlines()[-6:])
            raise ValueError(f"sft export: llama-quantize {self.quant} failed on {f16}:\n  {tail}")
        found = FALLBACK.findall(done.stdout + done.stderr)
        fallbacks = [f"{name}: {kind}" for name, kind in found]
        if fallbacks:
            logger.info("export %s: %d tensors in a fallback type (rows not a multiple of the block), e.g. %s",
                        self.quant, len(fallbacks), fallbacks[0])
        return fallbacks


def _check_disk(directory: Path, need: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < need * 1.1:
        raise ValueError(f"sft export: {directory} has {human_size(free)} free and the export needs about "
                      f"{human_size(int(need * 1.1))}; free some space, or set sft.output_dir to a disk with room")


def _record(manifest: Path, entry: dict[str, Any]) -> None:
    """Add (or replace) the file's entry in exports.json."""
    entries = [e for e in (read_json(manifest) or []) if isinstance(e, dict) and e.get("file") != entry["file"]]
    write_json_atomically(manifest, sorted([*entries, entry], key=lambda e: e["file"]))


class CompressedExport(Stage):
    """The trained student as a compressed-tensors checkpoint for vLLM (w8a8 or w4a16; sft.quantize)."""

    name = "export"

    def __init__(self, plan: Plan, quant: str, progress: bool = True):
        super().__init__(plan, progress)
        if quant not in VLLM_QUANTS:
            raise ValueError(f"export.quants: '{quant}' is not a compressed-tensors scheme ({', '.join(VLLM_QUANTS)})")
        self.quant = quant
        self.name = f"export {quant}"

    def key(self) -> dict[str, Any]:
        return {**weights_key(self.plan), "quant": self.quant, "compressed_tensors": compressed_tensors_version()}

    def stamp(self) -> Path:
        return self.plan.student.files.gguf_stamp(self.quant)

    def outputs(self) -> tuple[Path, ...]:
        return (self.plan.student.files.vllm_checkpoint(self.quant),)

    def work(self, key: dict[str, Any] | None) -> StageResult:
        files = self.plan.student.files
        source = source_weights(self.plan)
        target = files.vllm_checkpoint(self.quant)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        _check_disk(target.parent, disk_size(source) // 2)
        done = write_compressed(source, tmp, self.quant)
        shutil.rmtree(target, ignore_errors=True)  # an older export of another student
        os.replace(tmp, target)
        entry = {"format": "compressed-tensors", "quant": self.quant, "file": target.name, "bytes": disk_size(target),
                 "source_weights": key["weights"] if key else None, "compressed_tensors": compressed_tensors_version(),
                 "layers_quantized": done["layers_quantized"], "exported_at": utc_now()}
        if done["layers_unquantized"]:
            entry["layers_unquantized"] = done["layers_unquantized"]
        _record(files.export_manifest, entry)
        line = f"{target}/ ({human_size(entry['bytes'])}, compressed-tensors {self.quant}, for vLLM)"
        logger.info("exported %s", line)
        return self.result(f"compressed-tensors {self.quant}: {human_size(entry['bytes'])}", [f"sft export: {line}"],
                           entry)


def export_stages(plan: Plan, export: ExportConfig | None = None, progress: bool = True) -> list[Stage]:
    """The export stages of export.quants: GGUF f16 first when any GGUF type is asked for."""
    export = export or export_config(plan)
    gguf = [q for q in export.quants if q not in VLLM_QUANTS]
    stages: list[Stage] = [GgufExport(plan, q, progress, export) for q in dict.fromkeys(["f16", *gguf])] if gguf else []
    return stages + [CompressedExport(plan, q, progress) for q in export.quants if q in VLLM_QUANTS]
