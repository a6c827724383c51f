"""Verifiers used by the curation tests (loaded by name, as a user's would be)."""


def mentions_a_number(record):
    answer = record["messages"][-1]["content"]
    if any(ch.isdigit() for ch in answer):
        return True
    return False, "no number in the answer"


def explodes(record):
    raise RuntimeError("verifier bug")
