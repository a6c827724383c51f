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
from pathlib import Path
from typing import Any

from sft.config import SftConfig, load_sft
from sft.data import read_conversations
from sft.train import resolve_student
from synth.config import Recipe
from synth.textmetrics import exact_match, rouge_l

logger = logging.getLogger(__name__)


def _perplexity(model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]]) -> float:
    """exp(mean NLL) of the assistant tokens (the teacher's answers) under `model`."""
    import torch

    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for messages in conversations:
            enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
            ids = torch.tensor([enc["input_ids"]])
            mask = torch.tensor(enc["assistant_masks"][1:], dtype=torch.bool)
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
            gen = model.generate(**ids, max_new_tokens=max_new, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
            out.append(tokenizer.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def _vllm_engine(cfg: SftConfig, model: str, max_new: int, lora: bool) -> Any:
    import vllm
    from vllm.platforms import current_platform

    from synth.backends.vllm_engine import _in_process_engine

    kwargs: dict[str, Any] = {"model": model, "max_model_len": cfg.max_length + max_new, "distributed_executor_backend": "uni"}
    if lora:
        kwargs.update(enable_lora=True, max_lora_rank=max(cfg.lora.r, 8))
    if current_platform.is_cpu():
        kwargs.update(dtype="float32", enforce_eager=True, gpu_memory_utilization=0.1, enable_chunked_prefill=False)
    with _in_process_engine(True):
        return vllm.LLM(**kwargs)


def _generate_vllm(cfg: SftConfig, model_id: str, trained: Path, prompts: list, max_new: int) -> tuple[list[str], list[str]]:
    """(answers before, answers after): the base model, then the base + adapter as a
    LoRARequest (one engine), or the fully fine-tuned model (a second engine)."""
    import vllm

    params = vllm.SamplingParams(temperature=0.0, max_tokens=max_new)
    llm = _vllm_engine(cfg, model_id, max_new, lora=not cfg.full_finetune)
    try:
        before = [o.outputs[0].text for o in llm.chat(prompts, params, use_tqdm=False)]
        if cfg.full_finetune:
            _close_engine(llm)
            llm = _vllm_engine(cfg, str(trained), max_new, lora=False)
            after = [o.outputs[0].text for o in llm.chat(prompts, params, use_tqdm=False)]
        else:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("student", 1, str(trained))
            after = [o.outputs[0].text for o in llm.chat(prompts, params, lora_request=lora, use_tqdm=False)]
    finally:
        _close_engine(llm)
    return before, after


def _close_engine(llm: Any) -> None:
    """Shut the engine down and hand its memory back (vLLM keeps it until told)."""
    import gc

    from synth.backends.vllm_engine import shutdown_engine

    shutdown_engine(llm)
    try:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
    except ImportError:  # older vLLM
        pass
    gc.collect()


def _verifier(spec: str | None):
    if not spec:
        return None
    from synth.filters.verifier import Verifier

    return Verifier({"function": spec}, "sft.eval_verifier")


def run_eval(recipe: Recipe) -> dict[str, Any]:
    try:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ImportError(f"sft eval needs torch, transformers and peft ({exc}): pip install 'stillhouse[sft]'") from None
    cfg = load_sft(recipe.sft)
    _, eval_path, out = cfg.resolved_paths(recipe.output.dir)
    if eval_path is None:
        raise ValueError("sft eval: no held-out split; set curate.eval_fraction (then rerun synth curate) or sft.eval")
    trained = cfg.trained_dir(out)
    marker = "config.json" if cfg.full_finetune else "adapter_config.json"
    if not (trained / marker).is_file():
        raise ValueError(f"sft eval: no trained {trained.name} in {trained}; run `sft train` first")
    conversations = read_conversations(eval_path, "sft.eval")[: cfg.eval_limit]
    prompts = [m[:-1] for m in conversations]
    references = [m[-1]["content"] for m in conversations]
    model_id = resolve_student(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(trained)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    base = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype).eval()
    if cfg.full_finetune:
        tuned = AutoModelForCausalLM.from_pretrained(trained, dtype=dtype).eval()
    else:
        tuned = base = PeftModel.from_pretrained(base, trained).eval()

    def as_before():
        """`base` answers as the untrained student: the adapter off (a full fine-tune's base is untouched)."""
        return contextlib.nullcontext() if cfg.full_finetune else base.disable_adapter()

    with as_before():
        ppl_before = _perplexity(base, tokenizer, conversations)
    ppl_after = _perplexity(tuned, tokenizer, conversations)

    engine = cfg.eval_engine
    if engine == "auto":
        try:
            import vllm  # noqa: F401

            engine = "vllm"
        except ImportError:
            engine = "transformers"
    if engine == "vllm":
        before, after = _generate_vllm(cfg, model_id, trained, prompts, cfg.eval_max_new_tokens)
    else:
        with as_before():
            before = _generate_transformers(base, tokenizer, prompts, cfg.eval_max_new_tokens)
        after = _generate_transformers(tuned, tokenizer, prompts, cfg.eval_max_new_tokens)

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
    verifier = _verifier(cfg.eval_verifier)
    if verifier is not None:
        def passed(answers: list[str]) -> float:
            ok = sum(verifier({"messages": [*p, {"role": "assistant", "content": a}]}) is None for p, a in zip(prompts, answers, strict=True))
            return ok / len(answers)

        report["verifier"] = {"teacher": passed(references), "student_before": passed(before), "student_after": passed(after)}
    if cfg.eval_judge:
        from synth.diff import judge_preference

        # A = the teacher, B = the trained student: B's win rate is the student's.
        j = judge_preference([(p[-1]["content"], r, a) for p, r, a in zip(prompts, references, after, strict=True)],
                             cfg.eval_judge, out / "eval_judge.jsonl")
        report["judge"] = {"teacher_wins": j["a"], "student_wins": j["b"], "ties": j["tie"],
                           "unparseable": j["unparseable"], "failed": j["failed"], "student_win_rate": j["b_win_rate"]}
    report["samples"] = [
        {"prompt": p[-1]["content"][:300], "teacher": r[:300], "student_before": b[:300], "student_after": a[:300]}
        for p, r, b, a in list(zip(prompts, references, before, after, strict=True))[:5]
    ]
    (out / "eval_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "eval_report.md").write_text(_markdown(report), encoding="utf-8")
    _plot(report, out / "eval.png")
    return report


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
