"""Which examples make each micro-batch, and the DataLoader that builds them in worker processes.

Optimizer step s trains on the global batch at positions [s*G, (s+1)*G) of a seeded, per-epoch
shuffle of the examples. The global batch is cut into micro-batches j = 0..G/micro-1; process p at
accumulation pass m takes micro-batch j = m*P + p. So a run sees the same global batches whatever
its number of processes, a resumed run starts at step s without replaying anything, and with
`group_by_modality_length` each global batch is sorted by modality and length first (LLaVA's
grouping), so micro-batches are not mostly padding.

Example sources are random-access: `InMemoryExamples` (a list) or `MixtureExamples` (a built
mixture, read by offset from its tar shards, decoded and encoded in the loader's workers).
"""

from __future__ import annotations

import json
import random
import tarfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.conversation import RecordError
from ..data.shards import decode_record, shard_paths
from .examples import Collator, Example, to_example

RETRIES = 8  # a record that cannot be trained on is replaced by another, deterministically, at most this often


class InMemoryExamples:
    """Encoded examples held in memory (the shapes world's path)."""

    def __init__(self, examples: list[Example]):
        if not examples:
            raise ValueError("no training examples left after filtering; see the skip report")
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]

    def length(self, index: int) -> int:
        """Tokens, negative for examples without an input image (LLaVA's modality-length sign)."""
        example = self.examples[index]
        return len(example.encoded.input_ids) * (1 if example.image is not None else -1)


class MixtureExamples:
    """A built mixture (`genllava data build`) as random-access examples.

    Opening indexes every shard once (tar headers and the small record JSONs, not the images);
    `__getitem__` then reads one record and its images by offset, decodes and encodes them, so loader
    workers do that work in parallel. Raises RecordError for a record that cannot be trained on.
    """

    def __init__(self, root, processor):
        self.root, self.processor = Path(root), processor
        self.shards = shard_paths(root)
        self.records: list[tuple[int, int, int, int]] = []  # (shard, offset, size, signed length)
        self.images: list[dict[str, tuple[int, int]]] = []  # per shard: member name -> (offset, size)
        for number, path in enumerate(self.shards):
            members: dict[str, tuple[int, int]] = {}
            with tarfile.open(path, "r:") as tar:
                for member in tar.getmembers():
                    if member.name.endswith(".json"):
                        record = json.loads(tar.extractfile(member).read())
                        words = sum(len(str(turn.get("value", "")).split()) for turn in record.get("conversations", []))
                        sign = 1 if record.get("image") else -1
                        self.records.append((number, member.offset_data, member.size, sign * max(words, 1)))
                    else:
                        members[member.name] = (member.offset_data, member.size)
            self.images.append(members)
        if not self.records:
            raise ValueError(f"{root} holds no records")
        self._files: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.records)

    def length(self, index: int) -> int:
        """Words in the conversation (a cheap proxy for tokens), negative without an input image."""
        return self.records[index][3]

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        if shard not in self._files:  # opened lazily, so each loader worker holds its own handles
            self._files[shard] = open(self.shards[shard], "rb")
        handle = self._files[shard]
        handle.seek(offset)
        return handle.read(size)

    def __getitem__(self, index: int) -> Example:
        shard, offset, size, _ = self.records[index]
        record = json.loads(self._read(shard, offset, size))
        names = ([record["image"]] if record.get("image") else []) + list(record.get("target_image", []))
        try:
            images = {name: self._read(shard, *self.images[shard][name]) for name in names}
        except KeyError as missing:
            raise RecordError(f"image {missing} is not in its shard", record.get("id")) from None
        return to_example(decode_record(record, images), self.processor)

    def __getstate__(self):  # file handles stay with the process that opened them
        return {**self.__dict__, "_files": {}}


class BatchPlan:
    """The positions each micro-batch takes; see the module docstring."""

    def __init__(self, source, global_batch: int, micro_batch: int, processes: int, seed: int,
                 group_by_modality_length: bool = False):
        self.source, self.size = source, len(source)
        self.global_batch, self.micro_batch, self.processes = global_batch, micro_batch, processes
        self.accumulation = global_batch // (micro_batch * processes)
        self.seed, self.grouped = seed, group_by_modality_length
        self._epoch, self._order = None, []

    def _order_of(self, epoch: int) -> list[int]:
        if epoch != self._epoch:  # one shuffle per epoch
            self._order = list(range(self.size))
            random.Random(self.seed * 100_003 + epoch).shuffle(self._order)
            self._epoch = epoch
        return self._order

    def index_at(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        return self._order_of(epoch)[offset]

    def micro_batch_indices(self, step: int, micro_index: int) -> list[tuple[int, int]]:
        """(position, example index) of micro-batch `micro_index` (0..G/micro-1) of step `step`."""
        start = step * self.global_batch
        if not self.grouped:
            first = start + micro_index * self.micro_batch
            return [(p, self.index_at(p)) for p in range(first, first + self.micro_batch)]
        batch = [(p, self.index_at(p)) for p in range(start, start + self.global_batch)]
        # Image examples first, then text-only; longest first within each (a stable, seed-free order).
        batch.sort(key=lambda item: (self.source.length(item[1]) < 0, -abs(self.source.length(item[1])), item[0]))
        return batch[micro_index * self.micro_batch:(micro_index + 1) * self.micro_batch]

    def micro_index(self, step_pass: int, process: int) -> int:
        """Micro-batch j of a step for accumulation pass m on process p: j = m*P + p."""
        return step_pass * self.processes + process


class MicroBatches(Dataset):
    """Item k of process p: step k // A, accumulation pass k % A, collated (in a loader worker)."""

    def __init__(self, plan: BatchPlan, collate: Collator, process: int):
        self.plan, self.collate, self.process = plan, collate, process

    def __getitem__(self, k: int) -> dict:
        step, step_pass = divmod(k, self.plan.accumulation)
        micro_index = self.plan.micro_index(step_pass, self.process)
        examples, skipped = [], []
        for position, index in self.plan.micro_batch_indices(step, micro_index):
            for attempt in range(RETRIES + 1):
                try:
                    examples.append(self.plan.source[index])
                    break
                except RecordError as err:
                    skipped.append((err.reason, err.record_id))
                    # Another example from far along the same epoch: the same on every run.
                    index = self.plan.index_at(position + (attempt + 1) * self.plan.size // (RETRIES + 1) + 1)
            else:
                raise ValueError(f"{RETRIES + 1} records in a row could not be trained on; see the skip report: "
                                 f"{skipped[-3:]}")
        batch = self.collate(examples)
        batch["skipped"], batch["micro_index"] = skipped, micro_index
        return batch


class _Steps(torch.utils.data.Sampler):
    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


def loader(plan: BatchPlan, collate: Collator, process: int, first_step: int, last_step: int,
           workers: int = 0) -> DataLoader:
    """This process's micro-batches for steps [first_step, last_step), in order, built by `workers`."""
    a = plan.accumulation
    return DataLoader(MicroBatches(plan, collate, process), batch_size=None,
                      sampler=_Steps(first_step * a, last_step * a), num_workers=workers,
                      prefetch_factor=4 if workers else None, persistent_workers=False,
                      # Its own generator: starting the loader must not draw from the global RNG, which
                      # the model's dropout uses and a resume restores.
                      generator=torch.Generator().manual_seed(plan.seed))
