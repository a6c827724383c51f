"""Training data for the student: load, validate, measure.

Rows are TRL's conversational format (`messages`); everything else on a record
(provenance) is dropped for training. Validation names the file, the line and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synth.runtime import read_jsonl_objects

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant", "tool")


class Chat(list):
    """One example's messages, with the tools its chat template renders (`tools`: OpenAI's
    format, or None) and the seed row it came from (`seed`: synth's {"source", "line",
    "fields"}, or None), which a task check may read (the tests of synth.codeexec:passes). A
    list, so everything that reads messages reads it unchanged."""

    tools: list[dict[str, Any]] | None = None
    seed: dict[str, Any] | None = None

    def __init__(self, messages: Any = (), tools: list[dict[str, Any]] | None = None, seed: dict[str, Any] | None = None):
        super().__init__(messages)
        self.tools = tools
        self.seed = seed


def verifier_record(prompt: list[dict[str, Any]], answer: str, seed: dict[str, Any] | None) -> dict[str, Any]:
    """The record a task check (sft.eval_verifier) sees for one answer: the chat, and the seed
    row when the data has one (a check such as synth.codeexec:passes reads its fields)."""
    record: dict[str, Any] = {"messages": [*prompt, {"role": "assistant", "content": answer}]}
    if seed is not None:
        record["seed"] = seed
    return record


def tools_of(messages: Any) -> list[dict[str, Any]] | None:
    """The tools an example's chat template renders (apply_chat_template's `tools`)."""
    return getattr(messages, "tools", None)


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
            raise ValueError(f"{where}: messages[{i}] must be {{role: system|user|assistant|tool, content: str}}")
        calls = m.get("tool_calls")
        if calls is not None and (m["role"] != "assistant" or not isinstance(calls, list) or not all(
                isinstance(c, dict) and isinstance(c.get("function"), dict) and isinstance(c["function"].get("name"), str)
                for c in calls)):
            raise ValueError(f"{where}: messages[{i}].tool_calls: an assistant's list of "
                             "{type: function, function: {name, arguments}}")
        roles.append("assistant_calls" if calls else m["role"])
    body = roles[1:] if roles[0] == "system" else roles
    if "system" in body:
        raise ValueError(f"{where}: a system message may only come first")
    if not body or body[-1] not in ("assistant", "assistant_calls"):
        raise ValueError(f"{where}: the chat must end with an assistant turn (the answer to learn)")
    # user, then the assistant's answer, possibly after rounds of tool calls and their results
    expect = {"start": ("user",), "user": ("assistant", "assistant_calls"), "assistant": ("user",),
              "assistant_calls": ("tool",), "tool": ("tool", "assistant", "assistant_calls")}
    state = "start"
    for role in body:
        if role not in expect[state]:
            shown = ", ".join(r.replace("assistant_calls", "assistant(tool_calls)") for r in body)
            raise ValueError(f"{where}: turns must alternate user, assistant, ..., an assistant's tool calls followed "
                             f"by their tool results (got {shown})")
        state = role
    if any(m["role"] == "assistant" and not m["content"].strip() and not m.get("tool_calls") for m in messages):
        raise ValueError(f"{where}: an assistant turn is empty; curate with the `empty` filter or fix the row")


def _row_tools(row: dict[str, Any], where: str) -> list[dict[str, Any]] | None:
    """A row's `tools` column (a JSON string, as synth writes it, or a list)."""
    tools = row.get("tools")
    if tools is None:
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except ValueError as exc:
            raise ValueError(f"{where}: 'tools' is not JSON ({exc})") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise ValueError(f"{where}: 'tools' must be a list of tool definitions (OpenAI's format), or one as JSON text")
    return tools or None


def final_answer_only(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A self-repair trajectory as its first prompt and its last answer."""
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return [*messages[:first], messages[-1]]


def read_conversations(path: Path, field: str = "sft.train", reasoning: str = "drop",
                       repairs: str = "trajectory") -> list[list[dict[str, str]]]:
    """The `messages` of every row of a JSONL file, validated; errors name `field`.
    `reasoning: keep` keeps an assistant turn's `reasoning_content` (see with_reasoning);
    `repairs: final` keeps of a self-repair record (synth's repair section) its first prompt
    and last answer."""
    if not path.is_file():
        raise ValueError(f"{field}: {path} does not exist; run `synth curate` first or set {field}")
    example = '{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}'
    rows = []
    for lineno, row in read_jsonl_objects(path, field, example):
        if "messages" not in row:
            raise ValueError(f"{field}: {path} line {lineno} has no 'messages' (conversational format: {example})")
        where = f"{field}: {path} line {lineno}"
        _check_messages(row["messages"], where)
        messages = row["messages"]
        if repairs == "final" and "tests" in (row.get("conversation") or {}):
            messages = final_answer_only(messages)
        seed = row.get("seed") if isinstance(row.get("seed"), dict) else None
        rows.append(Chat([_turn(m, reasoning == "keep", where) for m in messages], _row_tools(row, where), seed))
    if not rows:
        raise ValueError(f"{field}: {path} has no rows; nothing to train on")
    return rows


def _turn(m: dict[str, Any], keep_reasoning: bool, where: str) -> dict[str, Any]:
    turn: dict[str, Any] = {"role": m["role"], "content": m["content"]}
    if m.get("tool_calls"):
        turn["tool_calls"] = [{"type": "function", "function": {"name": c["function"]["name"],
                                                                "arguments": c["function"].get("arguments", {})}}
                              for c in m["tool_calls"]]
    if m["role"] == "tool" and isinstance(m.get("name"), str):
        turn["name"] = m["name"]
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
        out = Chat(tools=tools_of(messages))
        for m in messages:
            if "reasoning_content" in m:
                m = {"role": m["role"], "content": f"{open_tag}\n{m['reasoning_content']}\n{close_tag}\n\n{m['content']}"}
            out.append(m)
        inlined.append(out)
    return inlined, f"written into the answer between {open_tag} and {close_tag} (the chat template ignores reasoning_content)"


def read_record_ids(path: Path, field: str = "sft.train") -> list[str | None]:
    """The `id` of every row (None where a row has none), in read_conversations' order."""
    return [row.get("id") if isinstance(row.get("id"), str) else None for _, row in read_jsonl_objects(path, field, "{}")]


def fit_to_length(rows: list[list[dict[str, str]]], tokenizer: Any, max_length: int, overlong: str) -> tuple[list, DataReport]:
    """Drop (or count for truncation) the conversations longer than max_length tokens."""
    report = DataReport(rows=len(rows))
    kept = []
    for messages in rows:
        n = len(tokenizer.apply_chat_template(messages, tools=tools_of(messages), tokenize=True, return_dict=True)["input_ids"])
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
    samples the answers itself) and a `tools` column (JSON text, which TRL reads) when
    examples have tools.

    Tool-call arguments go in as JSON text: Arrow gives every row of a column one struct
    type, so objects of different tools would come back with each other's keys as nulls
    (see tool_arguments_as_text for the chat templates that render text arguments)."""
    with_tools = any(tools_of(m) for m in rows)
    return fingerprinted_dataset([
        {column: list(m), **({"tools": json.dumps(tools_of(m)) if tools_of(m) else None} if with_tools else {})}
        for m in rows])


def fingerprinted_dataset(rows: list[dict[str, Any]]) -> Any:
    """A `datasets.Dataset` of `rows`, fingerprinted by their content.

    `Dataset.from_list` fingerprints a new dataset by pickling its Arrow table and features
    with dill, which once failed on a GPU machine under Python 3.12 ("could not pickle a
    pyarrow type"). A content hash given as the fingerprint skips that step; later
    `.map` fingerprints (TRL's tokenisation) hash only the function and its arguments."""
    import datasets
    import pyarrow as pa

    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, ensure_ascii=False, sort_keys=True).encode())
        digest.update(b"\n")
    table = datasets.table.InMemoryTable(pa.Table.from_pylist(rows))
    return datasets.Dataset(table, fingerprint=digest.hexdigest()[:16])


ARGUMENTS_PROBE = '{"probe": "7f3a"}'


def tool_arguments_as_text(rows: list[Chat], tokenizer: Any) -> list[Chat]:
    """Rows whose tool-call arguments are JSON text, for a Dataset (see conversations_dataset).
    The chat template must render text arguments as they are (Qwen's and Hermes' templates
    do); one that would quote them again is an error naming the fix."""
    if not any(m.get("tool_calls") for messages in rows for m in messages):
        return rows
    probe = [{"role": "user", "content": "q"},
             {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "probe", "arguments": ARGUMENTS_PROBE}}]}]
    if ARGUMENTS_PROBE not in tokenizer.apply_chat_template(probe, tokenize=False):
        probe[1]["tool_calls"][0]["function"]["arguments"] = json.loads(ARGUMENTS_PROBE)
        if "7f3a" not in tokenizer.apply_chat_template(probe, tokenize=False):
            raise ValueError("sft: the data has tool calls and the chat template does not render them (no tool_calls "
                             "in its output), so the student would never see them; give sft.chat_template a template "
                             "that renders tools, tool_calls and tool messages (Qwen2.5's, Hermes')")
        raise ValueError("sft: the chat template writes tool-call arguments given as JSON text as a quoted string; "
                         "give sft.chat_template a template that renders text arguments as they are "
                         "(`{% if arguments is string %}{{ arguments }}{% else %}{{ arguments | tojson }}{% endif %}`)")
    out = []
    for messages in rows:
        chat = Chat(tools=tools_of(messages))
        for m in messages:
            if m.get("tool_calls"):
                m = {**m, "tool_calls": [{"type": "function", "function": {
                    "name": c["function"]["name"],
                    "arguments": a if isinstance(a := c["function"]["arguments"], str) else json.dumps(a, ensure_ascii=False)}}
                    for c in m["tool_calls"]]}
            chat.append(m)
        out.append(chat)
    return out


def read_pairs(path: Path, field: str = "sft.dpo.pairs") -> list[dict[str, Any]]:
    """Preference pairs (`synth pairs`) of a JSONL file, validated: errors name the file,
    the line and the field."""
    if not path.is_file():
        raise ValueError(f"{field}: {path} does not exist; run `synth pairs RECIPE` first (or set {field})")
    example = '{"prompt": [{"role": "user", "content": "..."}], "chosen": [{"role": "assistant", "content": "..."}], "rejected": [...]}'
    rows = []
    for lineno, row in read_jsonl_objects(path, field, example):
        where = f"{field}: {path} line {lineno}"
        for name in ("prompt", "chosen", "rejected"):
            value = row.get(name)
            if not isinstance(value, list) or not value or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value):
                raise ValueError(f"{where}: '{name}' must be a non-empty list of {{role, content}} messages ({example})")
        if row["prompt"][-1]["role"] != "user":
            raise ValueError(f"{where}: 'prompt' must end with a user turn")
        for name in ("chosen", "rejected"):
            if [m["role"] for m in row[name]] != ["assistant"]:
                raise ValueError(f"{where}: '{name}' must be one assistant message")
        if row["chosen"] == row["rejected"]:
            raise ValueError(f"{where}: 'chosen' and 'rejected' are the same answer")
        rows.append({name: row[name] for name in ("prompt", "chosen", "rejected")})
    if not rows:
        raise ValueError(f"{field}: {path} has no pairs; nothing to train on")
    return rows
