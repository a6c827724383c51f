"""Benchmark: the cost of a top-k KD training step (sft.distill) vs an SFT step, same data.

Same model, same synthetic chats, same steps, in one run: sft's default training recipe with
and without `sft.distill` (every training example carries the teacher's top-k logprobs at
every answer token, random but well-formed, as `synth generate` with `sampling.logprobs: K`
stores them). The KD step takes a plain forward that builds the logits (the KL needs them)
where TRL's SFT step runs its fused loss; at a real vocabulary (Qwen2.5's 151,936 tokens)
that is where the extra cost lies. Real tokens/s from TRL's own count, timed after the
first log; peak GPU memory per run.

    python bench/kd_step_cost.py [--shape tiny|qwen05b] [--steps 30] [--batch 8] [--k 20]

For a GPU machine: `--shape qwen05b` (random weights; nothing is downloaded). Needs torch,
transformers, trl, peft, datasets (`pip install 'stillhouse[sft]'`).
Last line: RESULT kd_step_cost step_ratio=<KD s/step / SFT s/step, each the mean of two runs after a warm-up> mem_ratio=<KD peak / SFT peak>
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from sft_throughput import WARMUP_STEPS, _need, make_data, make_model, run_sft  # noqa: E402


def add_ids_and_logprobs(data: Path, model_dir: Path, sidecar: Path, k: int, seed: int = 0) -> int:
    """Give each chat of `data` an id and write the teacher's top-k for its answer tokens."""
    import numpy as np
    from transformers import AutoConfig, AutoTokenizer

    from sft.distill import last_assistant_span
    from synth.logprobs import LogprobAppender, TopK, vocab_digest

    tok = AutoTokenizer.from_pretrained(model_dir)
    vocab = AutoConfig.from_pretrained(model_dir).vocab_size
    rng = np.random.default_rng(seed)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    appender = LogprobAppender(sidecar)
    positions = 0
    try:
        for i, row in enumerate(rows):
            row["id"] = f"{i:032x}"
            enc = tok.apply_chat_template(row["messages"], tokenize=True, return_dict=True,
                                          return_assistant_tokens_mask=True)
            start, end = last_assistant_span(enc["assistant_masks"])
            answer = enc["input_ids"][start:end]
            ids = rng.integers(0, vocab, size=(len(answer), k))
            ids[:, 0] = answer  # the token written is the teacher's most likely one
            lps = np.sort(rng.standard_normal((len(answer), k)) * 2, axis=1)[:, ::-1]
            lps = lps - np.logaddexp.reduce(lps, axis=1, keepdims=True) - 0.05  # a little mass outside the k
            top = [[(int(t), float(lp)) for t, lp in zip(ids[p], lps[p], strict=True)] for p in range(len(answer))]
            appender.append(row["id"], row["messages"], TopK.from_lists(answer, top, k), vocab_digest(tok))
            positions += len(answer)
    finally:
        appender.close()
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return positions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=["tiny", "qwen05b"], default="tiny")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--k", type=int, default=20, help="teacher tokens per position")
    args = ap.parse_args()
    _need()
    import torch
    import yaml

    work = Path(tempfile.mkdtemp(prefix="bench-kd-"))
    model = make_model(args.shape, work)
    data, sidecar = work / "train.jsonl", work / "logprobs.bin"
    make_data(data, args.steps * args.batch)
    positions = add_ids_and_logprobs(data, model, sidecar, args.k)
    seeds = work / "s.txt"
    seeds.write_text("x\n")
    (work / "t.j2").write_text("{{ prompt }}")
    (work / "out").mkdir()

    def recipe(name: str, extra: dict) -> Path:
        path = work / f"recipe-{name}.yaml"
        path.write_text(yaml.safe_dump({
            "seeds": {"path": str(seeds)}, "template": {"path": str(work / "t.j2")},
            "teacher": {"model": "org/unused"}, "output": {"dir": str(work / "out")},
            "sft": {"model": str(model), "max_steps": args.steps, "batch_size": args.batch,
                    "logging_steps": WARMUP_STEPS, "save_steps": 10_000, "max_length": 1024,
                    "lora": {"r": 16, "alpha": 32}, "output_dir": str(work / f"student-{name}"),
                    "train": str(data), **extra},
        }))
        return path

    gpu = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if gpu else "CPU"
    print(f"device: {device}; shape {args.shape}; {args.steps} steps x batch {args.batch}; teacher top-{args.k} "
          f"at {positions:,} answer tokens", flush=True)
    rates = {}
    kd = {"distill": {"logprobs": str(sidecar), "top_k": args.k, "require": True}}
    # A warm-up run first (CUDA start-up and autotuning outlast its first log), then each
    # method twice, interleaved, so that drift shows as a gap between the two of a kind.
    for name, extra in [("warm-up", {}), ("sft", {}), ("kd", kd), ("sft-again", {}), ("kd-again", kd)]:
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        tok_s, steps_s = run_sft(recipe(name, extra))
        peak = torch.cuda.max_memory_allocated() / 2**20 if gpu else float("nan")
        rates[name] = (tok_s, steps_s, peak)
        print(f"{name}: {tok_s:,.0f} real tok/s, {steps_s:.2f} steps/s, peak {peak:,.0f} MiB", flush=True)
    sft_steps = (rates["sft"][1] + rates["sft-again"][1]) / 2
    kd_steps = (rates["kd"][1] + rates["kd-again"][1]) / 2
    sft_peak, kd_peak = max(rates["sft"][2], rates["sft-again"][2]), max(rates["kd"][2], rates["kd-again"][2])
    print(f"RESULT kd_step_cost step_ratio={sft_steps / kd_steps:.2f} mem_ratio={kd_peak / sft_peak:.2f}")


if __name__ == "__main__":
    main()
