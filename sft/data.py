"""Training data for the student: load, validate, measure.

Rows are TRL's conversational format (`messages`); everything else on a record
(provenance) is dropped for training. Validation names the file, the line and what is wrong.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")


@dataclass
class DataReport:
    rows: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    distill: dict[str, int] | None = None  # sft.distill: examples with teacher logprobs, and without (why)


def _check_messages(messages: Any, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    roles = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: messages[{i}] must be {{role: system|user|assistant, content: str}}")
        roles.append(m["role"])
    body = roles[1:] if roles[0] == "system" else roles
    if "system" in body:
        raise ValueError(f"{where}: a system message may only come first")
    if not body or body[-1] != "assistant":
        raise ValueError(f"{where}: the chat must end with an assistant turn (the answer to learn)")
    for i, role in enumerate(body):
        if role != ("user" if i % 2 == 0 else "assistant"):
            raise ValueError(f"{where}: turns must alternate user, assistant, ... (got {', '.join(body)})")
    if any(m["role"] == "assistant" and not m["content"].strip() for m in messages):
        raise ValueError(f"{where}: an assistant turn is empty; curate with the `empty` filter or fix the row")


def read_conversations(path: Path, field: str = "sft.train", reasoning: str = "drop") -> list[list[dict[str, str]]]:
    """The `messages` of every row of a JSONL file, validated; errors name `field`.
    `reasoning: keep` keeps an assistant turn's `reasoning_content` (see with_reasoning)."""
    from synth.runtime import read_jsonl_objects

    if not path.is_file():
        raise ValueError(f"{field}: {path} does not exist; run `synth curate` first or set {field}")
    example = '{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}'
    rows = []
    for lineno, row in read_jsonl_objects(path, field, example):
        if "messages" not in row:
            raise ValueError(f"{field}: {path} line {lineno} has no 'messages' (conversational format: {example})")
        _check_messages(row["messages"], f"{field}: {path} line {lineno}")
        rows.append([_turn(m, reasoning == "keep", f"{field}: {path} line {lineno}") for m in row["messages"]])
    if not rows:
        raise ValueError(f"{field}: {path} has no rows; nothing to train on")
    return rows


def _turn(m: dict[str, Any], keep_reasoning: bool, where: str) -> dict[str, str]:
    turn = {"role": m["role"], "content": m["content"]}
    thought = m.get("reasoning_content")
    if keep_reasoning and m["role"] == "assistant" and thought is not None:
        if not isinstance(thought, str):
            raise ValueError(f"{where}: reasoning_content must be a string")
        turn["reasoning_content"] = thought
    return turn


REASONING_PROBE = "reasoning-probe-7f3a"


def with_reasoning(rows: list[list[dict[str, str]]], tokenizer: Any, open_tag: str, close_tag: str,
                   assistant_only_loss: bool) -> tuple[list[list[dict[str, str]]], str]:
    """Rows whose kept reasoning the student will train on, and how (for the log).

    A chat template that renders `reasoning_content` (Qwen3's, DeepSeek-R1's) gets the field;
    one that ignores it would drop the trace silently, so the reasoning is written into the
    answer instead, between the teacher's tags. With assistant_only_loss, a template that
    renders the reasoning outside its {% generation %} markers is an error: the trace would
    be shown but never learnt."""
    if not any("reasoning_content" in m for messages in rows for m in messages):
        return rows, "no reasoning in the data"
    probe = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning_content": REASONING_PROBE}]
    if REASONING_PROBE in tokenizer.apply_chat_template(probe, tokenize=False):
        if assistant_only_loss:
            enc = tokenizer.apply_chat_template(probe, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
            trained = tokenizer.decode([t for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m])
            if REASONING_PROBE not in trained:
                raise ValueError("sft.reasoning: keep: the chat template renders reasoning_content outside its "
                                 "{% generation %} markers, so the reasoning would never be trained on; give "
                                 "sft.chat_template a template whose generation block holds it, or set sft.reasoning: drop")
        return rows, "reasoning_content, rendered by the chat template"
    inlined = []
    for messages in rows:
        out = []
        for m in messages:
            if "reasoning_content" in m:
                m = {"role": m["role"], "content": f"{open_tag}\n{m['reasoning_content']}\n{close_tag}\n\n{m['content']}"}
            out.append(m)
        inlined.append(out)
    return inlined, f"written into the answer between {open_tag} and {close_tag} (the chat template ignores reasoning_content)"


def read_record_ids(path: Path, field: str = "sft.train") -> list[str | None]:
    """The `id` of every row (None where a row has none), in read_conversations' order."""
    from synth.runtime import read_jsonl_objects

    return [row.get("id") if isinstance(row.get("id"), str) else None for _, row in read_jsonl_objects(path, field, "{}")]


def fit_to_length(rows: list[list[dict[str, str]]], tokenizer: Any, max_length: int, overlong: str) -> tuple[list, DataReport]:
    """Drop (or count for truncation) the conversations longer than max_length tokens."""
    report = DataReport(rows=len(rows))
    kept = []
    for messages in rows:
        n = len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
        if n > max_length:
            if overlong == "drop":
                report.dropped["longer than max_length"] = report.dropped.get("longer than max_length", 0) + 1
                continue
            report.truncated += 1
        kept.append(messages)
    report.kept = len(kept)
    if not kept:
        raise ValueError(f"sft.max_length: every example is longer than {max_length} tokens; raise it or use overlong: truncate")
    return kept, report


def conversations_dataset(rows: list[list[dict[str, str]]], column: str = "messages") -> Any:
    """A `datasets.Dataset` with one column of chats (`messages`, or `prompt` for a trainer that
    samples the answers itself), fingerprinted by its content.

    `Dataset.from_list` fingerprints a new dataset by pickling its Arrow table and features
    with dill, which once failed on a GPU machine under Python 3.12 ("could not pickle a
    pyarrow type"). A content hash given as the fingerprint skips that step; later
    `.map` fingerprints (TRL's tokenisation) hash only the function and its arguments."""
    import hashlib
    import json

    import datasets
    import pyarrow as pa

    digest = hashlib.sha256()
    for messages in rows:
        digest.update(json.dumps(messages, ensure_ascii=False, sort_keys=True).encode())
        digest.update(b"\n")
    digest.update(column.encode())
    table = datasets.table.InMemoryTable(pa.Table.from_pylist([{column: m} for m in rows]))
    return datasets.Dataset(table, fingerprint=digest.hexdigest()[:16])
