"""sft.reasoning: the teacher's reasoning kept (through the chat template, or written before
the answer) or dropped, checked on the tokenised examples and the loss mask."""

import pytest
from transformers import AutoTokenizer

from sft.data import read_conversations, with_reasoning
from synth.tiny_model import CHATML_TEMPLATE

from conftest import REASONING_TEMPLATE as RENDERS
from conftest import write_jsonl

TRACE = "first add the tens then the ones"
ROWS = [{"messages": [{"role": "user", "content": "What is 12 plus 30?"},
                      {"role": "assistant", "content": "42", "reasoning_content": TRACE}]}]

# ... and one that renders it outside them (shown, never trained on).
GENERATION = "{% generation %}{{ message['content'] or '' }}"
assert GENERATION in CHATML_TEMPLATE
OUTSIDE = CHATML_TEMPLATE.replace(
    GENERATION, "{% if message.get('reasoning_content') %}{{ message['reasoning_content'] }}{% endif %}" + GENERATION)


def _trained_text(tokenizer, messages):
    enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    text = tokenizer.decode(enc["input_ids"])
    trained = tokenizer.decode([t for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m])
    return text, trained


@pytest.fixture
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def test_kept_reasoning_is_rendered_by_a_template_that_reads_it_and_is_trained_on(tmp_path, tokenizer):
    rows = read_conversations(write_jsonl(tmp_path / "t.jsonl", ROWS), reasoning="keep")
    assert rows[0][1]["reasoning_content"] == TRACE
    tokenizer.chat_template = RENDERS
    kept, how = with_reasoning(rows, tokenizer, "<think>", "</think>", assistant_only_loss=True)
    assert "rendered by the chat template" in how and kept[0][1]["content"] == "42"
    text, trained = _trained_text(tokenizer, kept[0])
    assert TRACE in trained and "42" in trained and text.count(TRACE) == 1


def test_a_template_that_ignores_reasoning_gets_it_written_before_the_answer(tmp_path, tokenizer):
    rows = read_conversations(write_jsonl(tmp_path / "t.jsonl", ROWS), reasoning="keep")
    tokenizer.chat_template = CHATML_TEMPLATE  # renders content only
    kept, how = with_reasoning(rows, tokenizer, "<think>", "</think>", assistant_only_loss=True)
    assert "written into the answer" in how
    assert kept[0][1]["content"] == f"<think>\n{TRACE}\n</think>\n\n42" and "reasoning_content" not in kept[0][1]
    _, trained = _trained_text(tokenizer, kept[0])
    assert TRACE in trained


def test_dropped_reasoning_is_absent_from_the_tokenised_example(tmp_path, tokenizer):
    rows = read_conversations(write_jsonl(tmp_path / "t.jsonl", ROWS), reasoning="drop")
    assert "reasoning_content" not in rows[0][1]
    tokenizer.chat_template = RENDERS
    text, _ = _trained_text(tokenizer, rows[0])
    assert TRACE not in text and "42" in text


def test_reasoning_rendered_outside_the_generation_markers_is_an_error(tmp_path, tokenizer):
    rows = read_conversations(write_jsonl(tmp_path / "t.jsonl", ROWS), reasoning="keep")
    tokenizer.chat_template = OUTSIDE
    with pytest.raises(ValueError, match="outside its .% generation %. markers"):
        with_reasoning(rows, tokenizer, "<think>", "</think>", assistant_only_loss=True)
    # Without an assistant-only loss every token is trained: nothing to refuse.
    assert with_reasoning(rows, tokenizer, "<think>", "</think>", assistant_only_loss=False)[0] == rows


def test_a_conversation_trains_on_every_assistant_turn_and_no_user_turn(tmp_path, tokenizer):
    """Multi-turn records (conversation.turns > 1): the loss mask covers each answer."""
    from sft.train import check_assistant_masks

    turns = [{"role": "system", "content": "Be terse."}]
    for i in range(3):
        turns += [{"role": "user", "content": f"question number {i}"}, {"role": "assistant", "content": f"answer {i} here"}]
    rows = read_conversations(write_jsonl(tmp_path / "t.jsonl", [{"messages": turns}]))
    tokenizer.chat_template = CHATML_TEMPLATE
    trained = check_assistant_masks(rows, tokenizer, "<|im_end|>")
    assert all(f"answer {i} here" in trained for i in range(3))
    assert "question" not in trained and "terse" not in trained
