"""Samplers: exact unpadded evaluation shards, deterministic sharded training order."""

from __future__ import annotations

from collections import Counter

import pytest

from risbench.data import samplers
from risbench.data.samplers import TrainSampler


@pytest.mark.parametrize("length,ranks", [(11, 2), (10, 2), (7, 3), (0, 2)])
def test_eval_shards_cover_every_index_once_in_order(length, ranks, monkeypatch):
    shards = []
    for rank in range(ranks):
        monkeypatch.setattr(samplers, "world", lambda rank=rank: (ranks, rank))
        shards.append(list(samplers.eval_sampler(range(length))))
    assert sorted(i for shard in shards for i in shard) == list(range(length))
    assert all(shard == sorted(shard) for shard in shards)  # no shuffling: a referent's expressions stay together
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


GROUPS = [[0, 1, 2], [3], [4, 5], [6, 7, 8], [9]]


def test_train_order_is_seeded_and_changes_per_epoch():
    a, b = TrainSampler(GROUPS, seed=3), TrainSampler(GROUPS, seed=3)
    assert list(a) == list(b) and sorted(a) == list(range(10))
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(10))
    assert list(TrainSampler(GROUPS, seed=4)) != first


def test_train_shards_are_disjoint_and_padded_by_repetition():
    shards = [list(TrainSampler(GROUPS, seed=0, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    counts = Counter(i for s in shards for i in s)
    assert set(counts) == set(range(10)) and sum(counts.values()) == 12


def test_one_per_ref_draws_one_expression_per_referent():
    sampler = TrainSampler(GROUPS, seed=0, one_per_ref=True)
    seen = set()
    for epoch in range(20):
        sampler.set_epoch(epoch)
        picks = list(sampler)
        assert len(picks) == len(sampler) == len(GROUPS)
        assert sorted(next(g for g, group in enumerate(GROUPS) if i in group) for i in picks) == list(range(5))
        seen |= set(picks)
    assert seen == set(range(10))  # over epochs every expression gets its turn
