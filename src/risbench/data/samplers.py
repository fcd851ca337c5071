"""Samplers for a trainer run with ``use_distributed_sampler=False``: sharding is done here.

* `TrainSampler`: a seeded shuffle per epoch (``set_epoch``, which Lightning calls), over every
  (referent, expression) pair or one random expression per referent; sharded over DDP ranks, the last
  shard padded by repetition so every rank runs the same number of steps.
* `eval_sampler`: evaluation; Lightning's `UnrepeatedDistributedSampler`, every sample exactly once over
  all ranks, no padding (shards may differ in length by one), so metrics gathered from the ranks are exact.

`TrainSampler` is written here because no library sampler draws one expression per referent (LAVT).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Sampler


def world() -> tuple[int, int]:
    """(number of ranks, this rank); (1, 0) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class TrainSampler(Sampler[int]):
    """Shuffled indices of this rank; `groups` lists each referent's sample indices.

    With ``one_per_ref`` an epoch visits every referent once through one of its expressions (LAVT);
    otherwise every sample once.
    """

    def __init__(self, groups: list[list[int]], seed: int = 0, one_per_ref: bool = False,
                 num_replicas: int | None = None, rank: int | None = None):
        replicas, this_rank = world()
        self.groups = groups
        self.seed, self.one_per_ref = int(seed), one_per_ref
        self.num_replicas = replicas if num_replicas is None else num_replicas
        self.rank = this_rank if rank is None else rank
        self.epoch = 0
        total = len(groups) if one_per_ref else sum(len(g) for g in groups)
        self.num_samples = math.ceil(total / self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.one_per_ref:
            draws = torch.rand(len(self.groups), generator=g).tolist()
            picks = [group[int(u * len(group))] for u, group in zip(draws, self.groups)]
        else:
            picks = [i for group in self.groups for i in group]
        order = [picks[i] for i in torch.randperm(len(picks), generator=g).tolist()]
        padded = (order * math.ceil(self.num_samples * self.num_replicas / max(len(order), 1)))
        padded = padded[: self.num_samples * self.num_replicas]
        return iter(padded[self.rank::self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


def eval_sampler(dataset) -> UnrepeatedDistributedSampler:
    """Lightning's unpadded sampler over this process group: each sample exactly once over the ranks."""
    replicas, rank = world()
    return UnrepeatedDistributedSampler(dataset, num_replicas=replicas, rank=rank, shuffle=False)
