"""Verifiers used by the curation tests (loaded by name, as a user's would be)."""


def mentions_a_number(record):
    answer = record["messages"][-1]["content"]
    if any(ch.isdigit() for ch in answer):
        return True
    return False, "no number in the answer"


def explodes(record):
    raise RuntimeError("verifier bug")


def number_count(record):
    """A graded verifier: how many digits the answer has (0 fails)."""
    return sum(ch.isdigit() for ch in record["messages"][-1]["content"])


def answer_chars(record):
    """A graded verifier for random text: the longer answer scores higher."""
    return len(record["messages"][-1]["content"].strip())
