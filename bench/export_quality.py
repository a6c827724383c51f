"""What shipping the student costs: the dates student as GGUF f16, q8_0, q4_K_M and q4_0 under
llama.cpp, and as compressed-tensors w8a8 and w4a16 under vLLM, each scored by the demo's
checker on the held-out prompts against the trained student; and llama.cpp's generation speed
against transformers `generate` on this CPU.

Needs `make demo` first (runs/dates holds the trained student). Then:

    python bench/export_quality.py

1. `sft export` with quants f16, q8_0, q4_K_M, q4_0, w8a8 and w4a16, then its evaluation
   (sft.export_eval): every GGUF file under llama-server (4 requests in flight), every vLLM
   checkpoint under a vLLM engine (bfloat16, all prompts at once), the held-out prompts of `sft
   eval`, greedy; the change vs the trained student is paired by prompt, with its standard error.
2. Speed, one request at a time, the same prompts, greedy, 16 new tokens at most: the trained
   student (fp32) under transformers `generate` in this process, and the q8_0 file under
   llama-server through the openai client (HTTP included: that is how it is served).

Last line: RESULT export_quality q8_drop=.. q4_drop=.. q4_size_ratio=.. ... w8a8_drop=.. w4a16_drop=..
llama_vs_transformers=..
(drop: trained student's pass rate minus the file's; size ratio: q4_K_M bytes / f16 bytes).
On a model whose rows are not a multiple of 256 values (the demo's hidden size is 128),
llama-quantize writes q4_K_M's tensors as q5_0 (and q8_0); q4_0 (32-value blocks) is then the
true 4-bit file, printed too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sft.export import export_stages  # noqa: E402
from sft.export_eval import ExportEval  # noqa: E402
from sft.export_report import export_lines  # noqa: E402
from sft.llamacpp import LlamaServer  # noqa: E402
from synth.plan import load_plan  # noqa: E402


def transformers_speed(model_dir: Path, prompts: list[list[dict]], max_new_tokens: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokens, started = 0, time.perf_counter()
    with torch.no_grad():
        for messages in prompts:
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
            tokens += out.shape[1] - ids["input_ids"].shape[1]
    return tokens / (time.perf_counter() - started)


def llama_speed(gguf: Path, prompts: list[list[dict]], max_new_tokens: int) -> float:
    import openai

    with LlamaServer(gguf, parallel=1) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused")
        ask = lambda m: client.chat.completions.create(model=server.alias, messages=m, temperature=0.0,  # noqa: E731
                                                        max_tokens=max_new_tokens)
        ask(prompts[0])  # warm-up
        tokens, started = 0, time.perf_counter()
        for messages in prompts:
            tokens += ask(messages).usage.completion_tokens
    return tokens / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="prompts/dates/recipe.yaml")
    parser.add_argument("--speed-prompts", type=int, default=100, help="prompts for the speed comparison")
    args = parser.parse_args()

    plan = load_plan(args.recipe, ["export={quants: [q8_0, q4_K_M, q4_0, w8a8, w4a16]}"])
    export = plan.recipe.export
    for stage in export_stages(plan, export, progress=False):
        stage.run()
    report = ExportEval(plan, export, progress=False).run(force=True).details
    print("\n".join(export_lines(report)))
    rows = {r["quant"]: r for r in report["exports"]}
    base = report["student_score"]
    drop = {q: base - rows[q]["score"] for q in rows}
    size_ratio = rows["q4_K_M"]["bytes"] / rows["f16"]["bytes"]

    from sft.data import read_conversations

    cfg, files = plan.sft, plan.student.files
    prompts = [m[:-1] for m in read_conversations(cfg.eval_path(plan.layout), "sft.eval")][: args.speed_prompts]
    weights = files.trained if cfg.full_finetune else files.merged
    hf = transformers_speed(weights, prompts, cfg.eval_max_new_tokens)
    llama = llama_speed(files.gguf("q8_0"), prompts, cfg.eval_max_new_tokens)
    print(f"one request at a time, {len(prompts)} prompts: transformers generate {hf:.1f} tokens/s, "
          f"llama-server q8_0 {llama:.1f} tokens/s")
    print(f"RESULT export_quality q8_drop={drop['q8_0']:.3f} q4_drop={drop['q4_K_M']:.3f} "
          f"q4_size_ratio={size_ratio:.2f} q4_0_drop={drop['q4_0']:.3f} "
          f"q4_0_size_ratio={rows['q4_0']['bytes'] / rows['f16']['bytes']:.2f} w8a8_drop={drop['w8a8']:.3f} "
          f"w4a16_drop={drop['w4a16']:.3f} llama_vs_transformers={llama / hf:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
