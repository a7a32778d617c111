"""The batch plan: which examples each micro-batch of each process takes (genllava/train/batches.py)."""

from __future__ import annotations

import pytest

from genllava.data.conversation import RecordError
from genllava.train.batches import BatchPlan, MicroBatches, loader


class Lengths:
    """A stand-in source: example i is the int i; odd ones have no input image (negative length)."""

    def __init__(self, size: int, broken: set[int] = frozenset()):
        self.size, self.broken = size, broken

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        if index in self.broken:
            raise RecordError("broken on purpose", index)
        return index

    def length(self, index: int) -> int:
        return (index % 7 + 1) * (-1 if index % 2 else 1)


def step_examples(plan: BatchPlan, step: int) -> list[list[int]]:
    micro = plan.global_batch // plan.micro_batch
    return [[i for _, i in plan.micro_batch_indices(step, j)] for j in range(micro)]


@pytest.mark.parametrize("grouped", [False, True])
def test_a_step_sees_the_same_examples_whatever_the_number_of_processes(grouped):
    source = Lengths(50)
    one = BatchPlan(source, global_batch=8, micro_batch=2, processes=1, seed=3, group_by_modality_length=grouped)
    two = BatchPlan(source, global_batch=8, micro_batch=2, processes=2, seed=3, group_by_modality_length=grouped)
    assert (one.accumulation, two.accumulation) == (4, 2)
    for step in range(12):  # past an epoch boundary (50 examples, 8 per step)
        assert step_examples(one, step) == step_examples(two, step)
        flat = [i for micro in step_examples(one, step) for i in micro]
        positions = range(step * 8, step * 8 + 8)
        assert sorted(flat) == sorted(one.index_at(p) for p in positions)  # each position exactly once
    # process p at accumulation pass m takes micro-batch m * P + p
    assert [two.micro_index(m, p) for m in range(2) for p in range(2)] == [0, 1, 2, 3]


def test_each_epoch_is_a_seeded_permutation():
    plan = BatchPlan(Lengths(20), global_batch=4, micro_batch=2, processes=1, seed=5)
    first = [plan.index_at(p) for p in range(20)]
    second = [plan.index_at(p) for p in range(20, 40)]
    assert sorted(first) == sorted(second) == list(range(20)) and first != second
    again = BatchPlan(Lengths(20), global_batch=4, micro_batch=2, processes=1, seed=5)
    assert [again.index_at(p) for p in range(40)] == first + second
    other = BatchPlan(Lengths(20), global_batch=4, micro_batch=2, processes=1, seed=6)
    assert [other.index_at(p) for p in range(20)] != first


def test_grouping_puts_image_examples_together_longest_first():
    source = Lengths(64)
    plan = BatchPlan(source, global_batch=16, micro_batch=4, processes=1, seed=0, group_by_modality_length=True)
    for step in range(4):
        lengths = [source.length(i) for micro in step_examples(plan, step) for i in micro]
        images = [n for n in lengths if n > 0]
        assert lengths[:len(images)] == sorted(images, reverse=True)  # image examples first, longest first
        assert lengths[len(images):] == sorted(lengths[len(images):])  # then text-only, longest (most negative) first


def test_a_broken_record_is_replaced_the_same_way_every_time_and_counted():
    broken = {3, 11, 17}
    plan = BatchPlan(Lengths(40, broken), global_batch=8, micro_batch=4, processes=1, seed=1)
    batches = MicroBatches(plan, collate=lambda examples: {"examples": examples}, process=0)
    seen, skipped = [], []
    for k in range(10):
        batch = batches[k]
        assert len(batch["examples"]) == 4  # micro-batches stay full
        seen += batch["examples"]
        skipped += batch["skipped"]
    assert not broken & set(seen)
    assert {record for _, record in skipped} <= broken and skipped
    assert all(reason == "broken on purpose" for reason, _ in skipped)
    again = MicroBatches(plan, collate=lambda examples: {"examples": examples}, process=0)
    assert [again[k]["examples"] for k in range(10)] == [batches[k]["examples"] for k in range(10)]


def test_the_loader_starts_at_a_step_without_replaying_earlier_ones():
    plan = BatchPlan(Lengths(40), global_batch=4, micro_batch=2, processes=1, seed=2)
    collate = lambda examples: {"examples": examples}  # noqa: E731
    whole = [b["examples"] for b in loader(plan, collate, 0, 0, 6)]
    tail = [b["examples"] for b in loader(plan, collate, 0, 4, 6)]
    assert len(whole) == 12 and tail == whole[8:]
    with_workers = [b["examples"] for b in loader(plan, collate, 0, 4, 6, workers=2)]
    assert with_workers == tail
