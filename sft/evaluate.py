"""`sft eval`: the student against the teacher on the held-out split.

Metrics: perplexity of the teacher's answers under the student before training (the base
model: adapter off, or the untouched weights of a full fine-tune) and after; the student's
greedy answers before and after compared with the teacher's by ROUGE-L (F1 over words) and
exact match; and, when configured, a task verifier and a pairwise judge. Generation uses
vLLM where it is installed (the adapter as a LoRARequest on the base engine; a second engine
for a fully fine-tuned model), transformers' generate otherwise. Writes eval_report.json,
eval_report.md and eval.png beside the adapter (or model).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft.config import SftConfig, sft_of
from sft.data import read_conversations, tools_of
from sft.train import resolve_student
from synth.config import Recipe
from synth.layout import StudentLayout
from synth.textmetrics import exact_match, rouge_l

logger = logging.getLogger(__name__)


def _perplexity(model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]]) -> float:
    """exp(mean NLL) of the assistant tokens (the teacher's answers) under `model`."""
    import torch

    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for messages in conversations:
            enc = tokenizer.apply_chat_template(messages, tools=tools_of(messages), tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
            ids = torch.tensor([enc["input_ids"]], device=model.device)
            mask = torch.tensor(enc["assistant_masks"][1:], dtype=torch.bool, device=model.device)
            logits = model(input_ids=ids).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
            total_nll += float(nll[mask].sum())
            total_tokens += int(mask.sum())
    return math.exp(total_nll / max(total_tokens, 1))


def _generate_transformers(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], max_new: int) -> list[str]:
    import torch

    out = []
    with torch.no_grad():
        for messages in prompts:
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            ids = {k: v.to(model.device) for k, v in ids.items()}
            gen = model.generate(**ids, max_new_tokens=max_new, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
            out.append(tokenizer.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def _vllm_engine(cfg: SftConfig, model: str, max_new: int, lora: bool) -> Any:
    from synth.runtime import on_cpu, start_llm

    # Room for the longest prompt and the answer, within the model's own context.
    max_len = cfg.max_length + max_new
    context = _context_length(model)
    kwargs: dict[str, Any] = {"model": model, "max_model_len": min(max_len, context) if context else max_len,
                              "distributed_executor_backend": "uni"}
    if lora:
        kwargs.update(enable_lora=True, max_lora_rank=max(cfg.lora.r, 8))
    if on_cpu():
        kwargs.update(dtype="float32", enforce_eager=True, enable_chunked_prefill=False)
    return start_llm(kwargs, cfg.eval_kv_cache_gib, "sft.eval_kv_cache_gib")


def _context_length(model: str) -> int | None:
    """The model's context length (max_position_embeddings), None when its config has none."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model)
    config = getattr(config, "text_config", None) or config
    return getattr(config, "max_position_embeddings", None)


def _generate_vllm(cfg: SftConfig, model_id: str, trained: Path, prompts: list, max_new: int) -> tuple[list[str], list[str]]:
    """(answers before, answers after): the base model, then the base + adapter as a
    LoRARequest (one engine), or the fully fine-tuned model (a second engine)."""
    import vllm

    from synth.runtime import release_engine

    params = vllm.SamplingParams(temperature=0.0, max_tokens=max_new)
    llm = _vllm_engine(cfg, model_id, max_new, lora=not cfg.full_finetune)
    try:
        before = [o.outputs[0].text for o in llm.chat(prompts, params, use_tqdm=False)]
        if cfg.full_finetune:
            release_engine(llm)
            llm = _vllm_engine(cfg, str(trained), max_new, lora=False)
            after = [o.outputs[0].text for o in llm.chat(prompts, params, use_tqdm=False)]
        else:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("student", 1, str(trained))
            after = [o.outputs[0].text for o in llm.chat(prompts, params, lora_request=lora, use_tqdm=False)]
    finally:
        release_engine(llm)
    return before, after


@dataclass
class _Models:
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
        import gc

        import torch

        self.base = self.tuned = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _load_models(cfg: SftConfig, model_id: str, trained: Path) -> _Models:
    try:
        import torch
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
    return _Models(base, tuned, tokenizer, cfg.full_finetune)


def _engine(cfg: SftConfig) -> str:
    if cfg.eval_engine != "auto":
        return cfg.eval_engine
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "transformers"
    return "vllm"


def run_eval(recipe: Recipe, key: dict[str, Any] | None = None) -> dict[str, Any]:
    """The student against the teacher on the held-out split; writes the reports and, last,
    the eval stamp. `key` is the eval stage's key when the caller computed it already."""
    from synth.rawlog import DirLock
    from synth.stages import eval_key, write_stamp

    cfg = sft_of(recipe)
    student = cfg.student(recipe.layout)
    eval_path = cfg.eval_path(recipe.layout)
    if eval_path is None:
        raise ValueError("sft eval: no held-out split (curate.eval_fraction is 0, or no record fell in its share); "
                         "set or raise curate.eval_fraction (then rerun synth curate), or give sft.eval")
    if not student.trained_marker.is_file():
        raise ValueError(f"sft eval: no trained {student.trained.name} in {student.trained}; run `sft train` first")
    with DirLock(recipe.layout.root):
        key = key if key is not None else eval_key(recipe)
        conversations = read_conversations(eval_path, "sft.eval")[: cfg.eval_limit]
        report = _evaluate(cfg, student, conversations)
        student.eval_report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        student.eval_markdown.write_text(_markdown(report), encoding="utf-8")
        _plot(report, student.eval_plot)
        write_stamp(student.eval_stamp, key)
    return report


def _evaluate(cfg: SftConfig, student: StudentLayout, conversations: list[list[dict[str, str]]]) -> dict[str, Any]:
    prompts = [m[:-1] for m in conversations]
    references = [m[-1]["content"] for m in conversations]
    model_id = resolve_student(cfg.model)
    models = _load_models(cfg, model_id, student.trained)
    with models.before():
        ppl_before = _perplexity(models.base, models.tokenizer, conversations)
    ppl_after = _perplexity(models.tuned, models.tokenizer, conversations)
    engine = _engine(cfg)
    if engine == "vllm":
        models.release()  # the engine sizes its memory from what is free
        before, after = _generate_vllm(cfg, model_id, student.trained, prompts, cfg.eval_max_new_tokens)
    else:
        with models.before():
            before = _generate_transformers(models.base, models.tokenizer, prompts, cfg.eval_max_new_tokens)
        after = _generate_transformers(models.tuned, models.tokenizer, prompts, cfg.eval_max_new_tokens)

    def scores(answers: list[str]) -> dict[str, float]:
        n = len(answers)
        return {
            "rouge_l": sum(rouge_l(a, r) for a, r in zip(answers, references, strict=True)) / n,
            "exact_match": sum(exact_match(a, r) for a, r in zip(answers, references, strict=True)) / n,
        }

    report: dict[str, Any] = {
        "examples": len(conversations),
        "engine": engine,
        "perplexity_of_teacher_answers": {"before": ppl_before, "after": ppl_after},
        "student_before": scores(before),
        "student_after": scores(after),
    }
    if cfg.eval_verifier:
        report["verifier"] = _verifier_rates(cfg.eval_verifier, prompts, {"teacher": references, "student_before": before,
                                                                          "student_after": after})
    if cfg.eval_judge:
        report["judge"] = _judge(cfg.eval_judge, prompts, references, after, student.eval_judge)
    report["samples"] = [
        {"prompt": p[-1]["content"][:300], "teacher": r[:300], "student_before": b[:300], "student_after": a[:300]}
        for p, r, b, a in list(zip(prompts, references, before, after, strict=True))[:5]
    ]
    return report


def _verifier_rates(spec: str, prompts: list, answers: dict[str, list[str]]) -> dict[str, float]:
    """Share of each side's answers the task check accepts."""
    from synth.filters.verifier import Verifier

    verifier = Verifier({"function": spec}, "sft.eval_verifier")

    def passed(side: list[str]) -> float:
        ok = sum(verifier.check({"messages": [*p, {"role": "assistant", "content": a}]}) is None
                 for p, a in zip(prompts, side, strict=True))
        return ok / len(side)

    return {name: passed(side) for name, side in answers.items()}


def _judge(judge_file: str, prompts: list, references: list[str], after: list[str], log: Path) -> dict[str, Any]:
    """The judge's preference between the teacher (A) and the trained student (B)."""
    from synth.diff import judge_preference

    j = judge_preference([(p[-1]["content"], r, a) for p, r, a in zip(prompts, references, after, strict=True)], judge_file, log)
    return {"teacher_wins": j["a"], "student_wins": j["b"], "ties": j["tie"], "unparseable": j["unparseable"],
            "failed": j["failed"], "student_win_rate": j["b_win_rate"]}


def eval_summary(r: dict[str, Any]) -> str:
    """One line: the student before and after training, against the teacher."""
    ppl = r["perplexity_of_teacher_answers"]
    line = (f"teacher-answer perplexity {ppl['before']:.1f} -> {ppl['after']:.1f}, "
            f"ROUGE-L {r['student_before']['rouge_l']:.3f} -> {r['student_after']['rouge_l']:.3f}")
    if "verifier" in r:
        v = r["verifier"]
        line += (f"; task check: teacher {v['teacher']:.3f}, student {v['student_before']:.3f} -> "
                 f"{v['student_after']:.3f}")
    return line


def _plot(r: dict[str, Any], path: Path) -> None:
    """Before/after bars: teacher-answer perplexity and ROUGE-L vs the teacher."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ppl = r["perplexity_of_teacher_answers"]
    ax1.bar(["before", "after"], [ppl["before"], ppl["after"]], color=["#999", "#3a7"])
    ax1.set_title("perplexity of teacher answers")
    ax2.bar(["before", "after"], [r["student_before"]["rouge_l"], r["student_after"]["rouge_l"]], color=["#999", "#3a7"])
    ax2.set_title("ROUGE-L vs teacher")
    ax2.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _markdown(r: dict[str, Any]) -> str:
    ppl = r["perplexity_of_teacher_answers"]
    lines = [
        "# Student vs teacher",
        "",
        f"{r['examples']} held-out examples; student answers by greedy decoding ({r['engine']}).",
        "",
        "| metric | student before training | student after training | teacher |",
        "| --- | --- | --- | --- |",
        f"| perplexity of the teacher's answers (lower: closer to the teacher) | {ppl['before']:.2f} | {ppl['after']:.2f} | |",
        f"| ROUGE-L F1 vs the teacher's answer | {r['student_before']['rouge_l']:.3f} | {r['student_after']['rouge_l']:.3f} | 1.000 |",
        f"| exact match with the teacher | {r['student_before']['exact_match']:.3f} | {r['student_after']['exact_match']:.3f} | 1.000 |",
    ]
    if "verifier" in r:
        v = r["verifier"]
        lines.append(f"| task verifier pass rate | {v['student_before']:.3f} | {v['student_after']:.3f} | {v['teacher']:.3f} |")
    if "judge" in r:
        j = r["judge"]
        lines.append(f"| judge win rate vs the teacher (ties count half) | | {j['student_win_rate']} | |")
    lines += ["", "## Samples", ""]
    for s in r["samples"]:
        lines += [f"- **prompt**: {s['prompt']!r}", f"  - teacher: {s['teacher']!r}", f"  - student after: {s['student_after']!r}"]
    return "\n".join(lines) + "\n"
