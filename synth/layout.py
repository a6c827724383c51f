"""Where every file of an output directory lives: one object names them all.

    OUTPUT/                    (output.dir; a new teacher writes OUTPUT.v2, ... beside it)
      config.yaml              the resolved recipe (keys redacted)
      teacher.json             whose data this directory holds (synth.versions)
      manifest.json            what each stage did, with counts and package versions
      run.log                  everything logged, library warnings included
      expand_raw.jsonl         prompt expansion: teacher calls, cached by request id
      expanded.jsonl           prompt expansion: the prompts generation reads
      raw.jsonl                every finished teacher answer (the cache, the resume point)
      logprobs.bin             the teacher's top-k logprobs of each answer (sampling.logprobs)
      failures.jsonl           requests that failed, with the error
      batches.jsonl            batch mode: every input file and batch submitted, before anything else
      turns.jsonl, user_turns.jsonl   conversations: each teacher and simulator turn, by request id
      tool_results.jsonl              tool calls: each call's result, by the call that made it
      pairs.jsonl              preference pairs (`synth pairs`), for `sft dpo`
      student_answers.jsonl    the trained student's answers to the training prompts (pairs), cached
      judge.jsonl              curation judge calls, cached by request id
      decontam_judge.jsonl, grounded_judge.jsonl, pii_detect.jsonl   the other curation model calls, cached alike
      .curate-checkpoint/      a long curation's last checkpoint (removed when it finishes)
      .audit.sqlite            the index behind `synth view` (rebuilt when the files change)
      train.jsonl, eval.jsonl, rejected.jsonl, stats.json     curation's outputs
      README.md, lengths.png, funnel.png                      the dataset card
      report.md, report.json   what `synth run` did, stage by stage
      diff.md, diff.json       `synth diff` of this version against another
      compare.md, compare.json, compare_answers.jsonl   `synth compare`: the versions' students on one held-out set
      compare_judge.jsonl      `synth compare --judge`: the judge's answers (its cache)
      stages/STAGE.json        the inputs each keyed stage last finished with
      student/                 (sft.output_dir) the trained student: see StudentLayout
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PACKAGED_PROMPTS = Path(__file__).resolve().parent / "prompts"  # package data: expansion, judge, simulator prompts


def packaged_prompt(name: str) -> Path:
    """A template shipped with the package, e.g. packaged_prompt("judge/rubric.j2")."""
    return PACKAGED_PROMPTS / name


@dataclass(frozen=True)
class StudentLayout:
    """The files of `sft train`, `sft eval` and `sft merge` (default OUTPUT/student)."""

    root: Path
    full_finetune: bool = False

    @property
    def trained(self) -> Path:
        """The trained weights: `model/` for a full fine-tune, `adapter/` for LoRA."""
        return self.root / ("model" if self.full_finetune else "adapter")

    @property
    def trained_marker(self) -> Path:
        """The file whose presence says the trained weights were saved."""
        return self.trained / ("config.json" if self.full_finetune else "adapter_config.json")

    checkpoints = property(lambda self: self.root / "checkpoints")
    previous_checkpoints = property(lambda self: self.root / "checkpoints.previous")
    checkpoints_key = property(lambda self: self.root / "checkpoints" / "key.json")
    train_stamp = property(lambda self: self.root / "trained_on.json")
    eval_stamp = property(lambda self: self.root / "evaluated_on.json")
    sft_config = property(lambda self: self.root / "sft_config.yaml")
    metrics = property(lambda self: self.root / "metrics.json")
    loss_plot = property(lambda self: self.root / "loss.png")
    train_log = property(lambda self: self.root / "train.log")
    eval_report = property(lambda self: self.root / "eval_report.json")
    eval_markdown = property(lambda self: self.root / "eval_report.md")
    eval_plot = property(lambda self: self.root / "eval.png")
    eval_judge = property(lambda self: self.root / "eval_judge.jsonl")
    harness_report = property(lambda self: self.root / "harness.json")
    harness_markdown = property(lambda self: self.root / "harness.md")
    harness_stamp = property(lambda self: self.root / "harness_on.json")
    merged = property(lambda self: self.root / "merged")
    merge_report = property(lambda self: self.root / "merge.json")
    export_dir = property(lambda self: self.root / "export")
    export_manifest = property(lambda self: self.root / "export" / "exports.json")
    export_eval = property(lambda self: self.root / "export" / "eval.json")
    export_eval_stamp = property(lambda self: self.root / "export" / "evaluated_on.json")

    def gguf(self, quant: str) -> Path:
        """The student exported as GGUF at this quantization: STUDENT/export/model-QUANT.gguf."""
        return self.export_dir / f"model-{quant}.gguf"

    def vllm_checkpoint(self, quant: str) -> Path:
        """The student exported as a compressed-tensors checkpoint for vLLM: STUDENT/export/model-QUANT/."""
        return self.export_dir / f"model-{quant}"

    def gguf_stamp(self, quant: str) -> Path:
        """The key the export at this quantization (GGUF file or vLLM checkpoint) last finished with."""
        return self.export_dir / f"model-{quant}.key.json"


@dataclass(frozen=True)
class Layout:
    """The files of one output directory (one dataset version)."""

    root: Path

    config = property(lambda self: self.root / "config.yaml")
    teacher = property(lambda self: self.root / "teacher.json")
    manifest = property(lambda self: self.root / "manifest.json")
    log = property(lambda self: self.root / "run.log")
    lock = property(lambda self: self.root / ".lock")
    expand_raw = property(lambda self: self.root / "expand_raw.jsonl")
    expanded = property(lambda self: self.root / "expanded.jsonl")
    raw = property(lambda self: self.root / "raw.jsonl")
    logprobs = property(lambda self: self.root / "logprobs.bin")
    failures = property(lambda self: self.root / "failures.jsonl")
    batches = property(lambda self: self.root / "batches.jsonl")
    turns = property(lambda self: self.root / "turns.jsonl")
    user_turns = property(lambda self: self.root / "user_turns.jsonl")
    tool_results = property(lambda self: self.root / "tool_results.jsonl")
    pairs = property(lambda self: self.root / "pairs.jsonl")
    student_answers = property(lambda self: self.root / "student_answers.jsonl")
    judge = property(lambda self: self.root / "judge.jsonl")
    train = property(lambda self: self.root / "train.jsonl")
    eval = property(lambda self: self.root / "eval.jsonl")
    rejected = property(lambda self: self.root / "rejected.jsonl")
    stats = property(lambda self: self.root / "stats.json")
    card = property(lambda self: self.root / "README.md")
    lengths_plot = property(lambda self: self.root / "lengths.png")
    funnel_plot = property(lambda self: self.root / "funnel.png")
    report = property(lambda self: self.root / "report.md")
    report_json = property(lambda self: self.root / "report.json")
    diff = property(lambda self: self.root / "diff.md")
    diff_json = property(lambda self: self.root / "diff.json")
    diff_judge = property(lambda self: self.root / "diff_judge.jsonl")
    compare = property(lambda self: self.root / "compare.md")
    compare_json = property(lambda self: self.root / "compare.json")
    compare_answers = property(lambda self: self.root / "compare_answers.jsonl")
    compare_judge = property(lambda self: self.root / "compare_judge.jsonl")

    def stamp(self, stage: str) -> Path:
        """Where a keyed stage records the inputs it last finished with."""
        return self.root / "stages" / f"{stage}.json"

    def curate_stage_file(self, index: int) -> Path:
        """Curation's scratch file before a batch filter (removed when curation ends)."""
        return self.root / f".curate-stage-{index}.jsonl"

    curate_checkpoint = property(lambda self: self.root / ".curate-checkpoint")  # resumable curation's state

    def student(self, output_dir: str | None = None, full_finetune: bool = False) -> StudentLayout:
        """The student's files: sft.output_dir, or OUTPUT/student."""
        return StudentLayout(Path(output_dir) if output_dir else self.root / "student", full_finetune)
