"""sft.data: the training rows as a datasets.Dataset."""

import datasets

from sft.data import conversations_dataset

ROWS = [
    [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4 ✓"}],
]


def test_same_rows_and_features_as_from_list_with_a_content_fingerprint():
    ds = conversations_dataset(ROWS)
    reference = datasets.Dataset.from_list([{"messages": m} for m in ROWS])
    assert ds.features == reference.features
    assert ds.to_list() == reference.to_list() == [{"messages": m} for m in ROWS]
    assert conversations_dataset(ROWS)._fingerprint == ds._fingerprint
    changed = [ROWS[0], [*ROWS[1][:2], {"role": "assistant", "content": "5"}]]
    assert conversations_dataset(changed)._fingerprint != ds._fingerprint
    assert conversations_dataset(ROWS[:1])._fingerprint != ds._fingerprint
