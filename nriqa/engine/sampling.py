"""Samplers that make data order and crops a pure function of (seed, epoch, index).

nriqa does its own sharding instead of Lightning's ``DistributedSampler`` wrapping, so that:

* the training sampler yields ``(epoch, index)`` keys and the dataset draws its random crops from
  them: the same run gives the same crops whatever the number of workers, and a resumed run sees
  exactly the crops an uninterrupted one would;
* evaluation shards images across ranks with known padding, so gathered predictions can be
  de-duplicated by image and every test image is scored exactly once.
"""

from __future__ import annotations

import math

import numpy as np
from torch.utils.data import Dataset, Sampler

from nriqa.data.distributed import dist_info

__all__ = ["EpochKeyed", "EvalSampler", "TrainSampler", "dist_info"]


class TrainSampler(Sampler):
    """Seeded shuffle per epoch, split evenly over ranks; yields ``(epoch, index)`` keys."""

    def __init__(self, length: int, seed: int = 0, rank: int | None = None, world: int | None = None):
        self.length, self.seed, self.epoch = length, seed, 0
        default_rank, default_world = dist_info()
        self.rank = default_rank if rank is None else rank
        self.world = default_world if world is None else world
        self.per_rank = math.ceil(length / self.world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.length)
        pad = self.per_rank * self.world - self.length
        order = np.concatenate([order, order[:pad]])
        for idx in order[self.rank :: self.world]:
            yield (self.epoch, int(idx))


class EvalSampler(Sampler):
    """Contiguous shards of ``range(length)``, padded by repeating the last index so every rank
    has the same count (needed by ``all_gather``); duplicates are dropped after gathering."""

    def __init__(self, length: int, rank: int | None = None, world: int | None = None):
        default_rank, default_world = dist_info()
        self.rank = default_rank if rank is None else rank
        self.world = default_world if world is None else world
        self.length = length
        self.per_rank = math.ceil(length / self.world)

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self):
        start = self.rank * self.per_rank
        for i in range(start, start + self.per_rank):
            yield min(i, self.length - 1)


class EpochKeyed(Dataset):
    """Adapts a dataset with ``set_epoch`` to ``(epoch, index)`` keys, inside whichever worker
    process fetches the item."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, idx = key
        if getattr(self.dataset, "epoch", None) != epoch:
            self.dataset.set_epoch(epoch)
        return self.dataset[idx]
