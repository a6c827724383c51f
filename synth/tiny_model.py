"""Build a tiny random chat model locally, for demos and tests (no model hub needed).

The model writes nonsense: it exists so that the whole pipeline (a real vLLM engine, real
TRL training) can run on a laptop CPU in seconds. Recipe: a byte-level BPE
tokenizer trained on a small text, a ChatML chat template with `{% generation %}` markers
(so TRL's assistant-only loss works), and a random Llama (hidden 128, 2 layers, 2 heads:
head dim 64, which the vLLM CPU attention kernel accepts).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# ChatML, with generation markers around what the assistant writes (including <|im_end|>)
# so that TRL can build an exact assistant-only loss mask. With tools (Hermes style, as
# Qwen2.5's): the tools listed in the system turn, calls written as <tool_call>{"name": ...,
# "arguments": ...}</tool_call> inside the assistant's generation, results in `tool` turns.
# A chat without tools renders exactly as plain ChatML.
CHATML_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\n' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}{% endif %}"
    "{{ '# Tools\n<tools>\n' }}{% for tool in tools %}{{ tool | tojson }}{{ '\n' }}{% endfor %}"
    "{{ '</tools>\nTo call a tool, write <tool_call>{\"name\": NAME, \"arguments\": ARGUMENTS}</tool_call><|im_end|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if tools and loop.first and message['role'] == 'system' %}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] or '' }}"
    "{% for call in message.get('tool_calls') or [] %}{% set f = call['function'] %}"
    "{{ '<tool_call>{\"name\": \"' + f['name'] + '\", \"arguments\": ' }}"
    "{% if f['arguments'] is string %}{{ f['arguments'] }}{% else %}{{ f['arguments'] | tojson }}{% endif %}"
    "{{ '}</tool_call>' }}{% endfor %}"
    "{{ '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% elif message['role'] == 'tool' %}"
    "{{ '<|im_start|>tool\n<tool_response>\n' + message['content'] + '\n</tool_response><|im_end|>\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = Path(__file__).resolve().parent.parent / "prompts" / "self-instruct" / "seed_tasks.jsonl"


def _corpus_lines(corpus: Path | None) -> list[str]:
    path = corpus or _CORPUS
    lines: list[str] = []
    if path.exists():
        for raw in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(raw)
            except json.JSONDecodeError:
                lines.append(raw)
                continue
            if isinstance(row, dict):
                lines.extend(str(v) for v in _strings(row))
    # A fixed pangram keeps the tokenizer usable when the corpus file is absent
    # (an installed wheel without prompts/).
    lines.append("The quick brown fox jumps over the lazy dog. 0123456789 ,.;:!?'\"()[]{}")
    return lines


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _model_libraries() -> tuple[Any, Any, Any]:
    """torch, transformers and tokenizers, imported now (heavy: kept off `synth --help`)."""
    try:
        import tokenizers
        import torch
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"building the tiny model needs torch, transformers and tokenizers ({exc}): "
            "pip install 'stillhouse[cpu]'"
        ) from exc
    return torch, transformers, tokenizers


def build_tiny_model(
    out_dir: str | Path,
    *,
    vocab_size: int = 2048,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    max_position_embeddings: int = 2048,
    architecture: str = "llama",
    seed: int = 0,
    corpus: Path | None = None,
    split_digits: bool = False,
) -> Path:
    """Write a tiny random chat model (config, safetensors weights, tokenizer) to `out_dir`.

    The tokenizer is trained on `corpus` (a JSONL or text file; default: the Self-Instruct
    seed tasks); `split_digits` keeps every digit a token of its own (numbers are then
    learnt digit by digit, as in Llama's tokenizer).
    Deterministic for a given set of arguments, so its weights fingerprint is stable.
    Needs torch, transformers and tokenizers (`pip install 'stillhouse[cpu]'`).
    """
    torch, transformers, _ = _model_libraries()
    families = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}
    if architecture not in families:
        raise ValueError(f"architecture: unknown '{architecture}'; choose one of {sorted(families)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size, max_position_embeddings, corpus, split_digits)
    tokenizer.save_pretrained(out)

    config_name, model_name = families[architecture]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = getattr(transformers, config_name)(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config)
    model.generation_config = transformers.GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out, safe_serialization=True)
    return out


def build_tokenizer(vocab_size: int, max_length: int, corpus: Path | None = None, split_digits: bool = False):
    """A byte-level BPE tokenizer trained on the corpus, with the ChatML template."""
    _, transformers, tokenizers = _model_libraries()
    decoders, models, pre_tokenizers, trainers = (tokenizers.decoders, tokenizers.models, tokenizers.pre_tokenizers,
                                                  tokenizers.trainers)
    tok = tokenizers.Tokenizer(models.BPE(unk_token=None))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines(corpus), trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=max_length,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast
