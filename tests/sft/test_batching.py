"""sft.batching: padded batches of similar lengths, dealt out in random order."""

import random

import torch
from transformers.trainer_pt_utils import get_length_grouped_indices

from sft.batching import MEGA_BATCH, grouped_batches


def _batches(order, size):
    return [order[i:i + size] for i in range(0, len(order), size)]


def _padded_tokens(order, lengths, size):
    return sum(max(lengths[i] for i in b) * len(b) for b in _batches(order, size))


def _share_of_descents(order, lengths, size):
    """How often a batch's longest example is shorter than the previous batch's."""
    tops = [max(lengths[i] for i in b) for b in _batches(order, size)]
    return sum(b < a for a, b in zip(tops, tops[1:], strict=False)) / (len(tops) - 1)


def test_similar_lengths_in_a_batch_batches_in_random_order():
    rng = random.Random(0)
    lengths = [rng.randint(16, 1024) for _ in range(8003)]  # 1,000 batches of 8 and a short one
    size = 8
    order = grouped_batches(lengths, size, generator=torch.Generator().manual_seed(0))

    assert sorted(order) == list(range(len(lengths))), "every example exactly once"
    batches = _batches(order, size)
    assert [len(b) for b in batches] == [size] * 1000 + [3], "the short batch stays last"
    assert lengths[order[0]] == max(lengths), "the longest batch comes first"
    assert all([lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True) for b in batches)

    shuffled = list(range(len(lengths)))
    rng.shuffle(shuffled)
    assert _padded_tokens(order, lengths, size) < 0.6 * _padded_tokens(shuffled, lengths, size)
    # transformers' sampler walks each mega-batch from long to short; these batches do not.
    walk = get_length_grouped_indices(lengths, size, generator=torch.Generator().manual_seed(0))
    assert _share_of_descents(walk, lengths, size) > 0.9
    assert 0.4 < _share_of_descents(order, lengths, size) < 0.6


def test_a_new_order_each_draw_and_tiny_sets():
    lengths = list(range(3 * MEGA_BATCH * 4))
    first, second = grouped_batches(lengths, 4), grouped_batches(lengths, 4)
    assert sorted(first) == sorted(second) and first != second
    assert sorted(grouped_batches([5, 1, 3], 8)) == [0, 1, 2]
