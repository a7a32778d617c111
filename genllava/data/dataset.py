"""A torch IterableDataset over a built mixture: shards split over distributed ranks and loader workers.

    dataset = MixtureDataset("runs/gvit-mix", seed=0)
    loader = DataLoader(dataset, batch_size=16, num_workers=4, collate_fn=list)
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        for batch in loader: ...   # lists of records in the record contract

Every rank and worker shuffles the shard list with the same seed and takes every n-th shard, so each
record is seen once per epoch, by exactly one of them, without coordination. Give the mixture at
least (ranks x workers) shards: a rank with fewer shards than another ends its epoch sooner, so
train for a number of steps rather than to the end of the iterator when shard counts are uneven.
"""

from __future__ import annotations

import random

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .shards import iter_records, shard_paths


class MixtureDataset(IterableDataset):
    def __init__(self, root, seed: int = 0, shuffle: bool = True, buffer_size: int = 1000,
                 rank: int | None = None, world_size: int | None = None):
        self.root, self.seed, self.shuffle, self.buffer_size = root, seed, shuffle, buffer_size
        if rank is None and torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.rank, self.world_size = rank or 0, world_size or 1
        self.shards = shard_paths(root)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        shards = list(self.shards)
        seed = self.seed * 1_000_003 + self.epoch  # a new order each epoch, the same on every rank
        if self.shuffle:
            random.Random(seed).shuffle(shards)
        mine = shards[self.rank * workers + worker_id::self.world_size * workers]
        return iter_records(self.root, seed=seed + 7919 * (self.rank * workers + worker_id) + 1,
                            shuffle=self.shuffle, shards=mine, buffer_size=self.buffer_size)
