"""The fixture's task check: a deterministic pass or fail of an answer (its characters' parity)."""


def ok(record: dict) -> bool:
    return sum(map(ord, record["messages"][-1]["content"])) % 2 == 0
