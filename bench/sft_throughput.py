"""Benchmark: sft's default training recipe vs a plain TRL SFTTrainer with TRL's defaults.

Same data (synthetic chats of mixed length), same model, same steps, in one run: real
(non-padding) tokens per second, from TRL's own `num_tokens` count, timed from the first log
(step 5) to the end so that start-up and compile costs fall on no run, and peak memory.
For a GPU machine: `--shape qwen05b` (a Qwen2.5-0.5B-shaped model with random weights; no
weights can be downloaded). On CPU the tiny local model's steps/s shows regressions.
Needs torch, transformers, trl, peft, datasets (`pip install 'stillhouse[sft]'`).

    python bench/sft_throughput.py [--shape tiny|qwen05b] [--steps 30] [--batch 8]
        [--variant NAME:key=value,key=value ...]

Each --variant also runs sft with those `sft.*` overrides (e.g.
`flex32:attn_implementation=flex_attention,batch_size=32`) and prints its line, so one GPU
call can compare candidate defaults. Every run trains exactly one epoch over steps x batch
examples drawn from the same generator: the same length mix whatever the batch size or the
order the sampler picks (a length-grouped sampler that ran part of an epoch would see only
its longest mega-batch). Last line: RESULT sft_throughput ratio=<sft default/plain tok/s> tok_s=<sft tok/s>
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _need() -> None:
    for module in ("torch", "transformers", "trl", "peft", "datasets"):
        try:
            __import__(module)
        except ImportError:
            sys.exit(f"bench/sft_throughput.py needs {module}: pip install 'stillhouse[sft]'")


def make_model(shape: str, work: Path) -> Path:
    from synth.tiny_model import build_tiny_model

    if shape == "tiny":
        return build_tiny_model(work / "tiny")
    # Qwen2.5-0.5B's shape with random weights, the tiny tokenizer (vocab size is the shape's).
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok_dir = build_tiny_model(work / "tok")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    out = work / "qwen05b"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_data(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    vocab = [f"word{i}" for i in range(3000)]
    with path.open("w") as fh:
        for _ in range(n):
            length = rng.choice([64, 128, 256, 512, 1024])  # tokens, roughly: mixed lengths
            words = [rng.choice(vocab) for _ in range(length // 3)]
            cut = max(1, len(words) // 4)
            fh.write(json.dumps({"messages": [{"role": "user", "content": " ".join(words[:cut])},
                                              {"role": "assistant", "content": " ".join(words[cut:])}]}) + "\n")


def peak_memory() -> str:
    """This run's peak GPU memory; on CPU the process's largest RSS so far (all runs up to now)."""
    import torch

    if torch.cuda.is_available():
        return f"peak {torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB"
    return f"max RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB"


WARMUP_STEPS = 5  # the first log: CUDA start-up, cuBLAS autotuning, FlexAttention's compile


def steady_rate(trainer) -> tuple[float, float]:
    """Train; return (real tokens/s, steps/s) between the first log (step WARMUP_STEPS) and the
    end, so that start-up and compile costs count against no run, whichever runs first."""
    from transformers import TrainerCallback

    marks: list[tuple[int, float, float]] = []

    class Clock(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "num_tokens" in logs:
                marks.append((state.global_step, float(logs["num_tokens"]), time.perf_counter()))

    trainer.add_callback(Clock())
    trainer.train()
    (s0, n0, t0), (s1, n1, t1) = marks[0], marks[-1]
    if s1 <= s0:
        raise SystemExit(f"--steps must be more than {WARMUP_STEPS} (one log for the warm-up, one after)")
    return (n1 - n0) / (t1 - t0), (s1 - s0) / (t1 - t0)


def run_sft(recipe_path: Path) -> tuple[float, float]:
    from sft.train import prepare
    from synth.plan import load_plan

    p = prepare(load_plan(recipe_path), progress=False)
    return steady_rate(p.trainer)


def run_plain(model_dir: Path, data: Path, steps: int, batch: int, out: Path) -> tuple[float, float]:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    ds = load_dataset("json", data_files=str(data), split="train")
    args = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch, logging_steps=WARMUP_STEPS,
                     report_to=[], save_strategy="no", use_cpu=not torch.cuda.is_available(),
                     bf16=torch.cuda.is_available(), disable_tqdm=True)
    trainer = SFTTrainer(model=str(model_dir), args=args, train_dataset=ds,
                         peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    return steady_rate(trainer)


def parse_variant(text: str) -> tuple[str, dict]:
    """'NAME:key=value,key=value' -> (NAME, {key: YAML value})."""
    import yaml

    name, _, body = text.partition(":")
    if not name or not body:
        raise SystemExit(f"--variant {text!r}: expected NAME:key=value[,key=value]")
    overrides = {}
    for pair in body.split(","):
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--variant {text!r}: {pair!r} is not key=value")
        overrides[key.strip()] = yaml.safe_load(value)
    return name, overrides


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=["tiny", "qwen05b"], default="tiny")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--variant", action="append", default=[], help="NAME:key=value,... extra sft runs (repeatable)")
    args = ap.parse_args()
    variants = [parse_variant(v) for v in args.variant]
    _need()
    import torch
    import yaml

    work = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    model = make_model(args.shape, work)
    out = work / "out"
    out.mkdir()

    def data(batch: int) -> Path:
        path = work / f"train-{batch}.jsonl"
        if not path.exists():
            make_data(path, args.steps * batch)
        return path
    seeds = work / "s.txt"
    seeds.write_text("x\n")
    (work / "t.j2").write_text("{{ prompt }}")
    base_sft = {"model": str(model), "max_steps": args.steps, "batch_size": args.batch,
                "logging_steps": WARMUP_STEPS, "save_steps": 10_000, "max_length": 1024, "lora": {"r": 16, "alpha": 32}}

    def recipe(name: str, overrides: dict) -> Path:
        path = work / f"recipe-{name}.yaml"
        path.write_text(yaml.safe_dump({
            "seeds": {"path": str(seeds)}, "template": {"path": str(work / "t.j2")},
            "teacher": {"model": "org/unused"}, "output": {"dir": str(out)},
            "sft": {**base_sft, "output_dir": str(work / f"student-{name}"),
                    "train": str(data(overrides.get("batch_size", args.batch))), **overrides},
        }))
        return path

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"device: {device}; shape {args.shape}; {args.steps} steps x batch {args.batch}")
    plain_tok, plain_sps = run_plain(model, data(args.batch), args.steps, args.batch, work / "plain")
    print(f"plain TRL defaults: {plain_tok:,.0f} real tok/s, {plain_sps:.2f} steps/s, {peak_memory()}", flush=True)
    results = {}
    for name, overrides in [("default", {}), *variants]:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        try:
            tok, sps = run_sft(recipe(name, overrides))
        except Exception as exc:  # one variant failing (an attention kernel missing) leaves the others
            print(f"sft {name} {overrides}: failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            continue
        results[name] = tok
        print(f"sft {name} {overrides or '(default recipe)'}: {tok:,.0f} real tok/s ({tok / plain_tok:.2f}x plain), "
              f"{sps:.2f} steps/s, {peak_memory()}", flush=True)
    sft_tok = results.get("default", 0.0)
    print(f"RESULT sft_throughput ratio={sft_tok / plain_tok:.2f} tok_s={sft_tok:.0f}")


if __name__ == "__main__":
    main()
