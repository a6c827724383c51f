"""Padded batches of similar lengths, in random order (`sft.group_by_length`).

transformers' LengthGroupedSampler sorts each mega-batch of 50 batches by length and
yields its batches in that order, so training walks from long to short examples every 50
steps; where length goes with content (a format, a task) that walk is a curriculum nobody
asked for. Here the batches are cut the same way (shuffle, sort within a mega-batch, cut)
but then dealt out in random order: the padding saving stays, the walk goes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

MEGA_BATCH = 50  # batches sorted together: more means less padding, less mixing


def grouped_batches(lengths: Sequence[int], batch_size: int, generator: Any = None) -> list[int]:
    """Indices of every example once: consecutive runs of `batch_size` have similar lengths,
    the runs come in random order, the longest run first (an out-of-memory shows at step 1)
    and a short last run (fewer than batch_size left over) stays last, so the runs keep
    their alignment with the data loader's batches. `generator`: a torch.Generator, or None
    for torch's global one."""
    import torch  # heavy: torch

    n = len(lengths)
    order = torch.randperm(n, generator=generator).tolist()
    span = MEGA_BATCH * batch_size
    batches = []
    for start in range(0, n, span):
        chunk = sorted(order[start:start + span], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    tail = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    if batches:
        longest = max(range(len(batches)), key=lambda b: lengths[batches[b][0]])
        batches[0], batches[longest] = batches[longest], batches[0]
    return [i for batch in batches + tail for i in batch]


class GroupedBatchSampler:
    """A Trainer's train sampler over `grouped_batches` (a new order each epoch, drawn from
    torch's global generator, which the Trainer seeds and restores on resume). A sampler is
    any sized iterable of indices to torch's DataLoader."""

    def __init__(self, lengths: Sequence[int], batch_size: int) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(grouped_batches(self.lengths, self.batch_size))


def grouped_trainer(base: type) -> type:
    """A subclass of the Trainer class `base` whose train sampler deals length-grouped
    batches in random order (GroupedBatchSampler over the tokenised lengths)."""

    class GroupedTrainer(base):
        def _get_train_sampler(self, train_dataset=None):
            dataset = self.train_dataset if train_dataset is None else train_dataset
            lengths = [len(row["input_ids"]) for row in dataset.select_columns(["input_ids"])]
            return GroupedBatchSampler(lengths, self.args.per_device_train_batch_size)

    GroupedTrainer.__name__ = GroupedTrainer.__qualname__ = f"Grouped{base.__name__}"
    return GroupedTrainer
