"""DDP sharding without processes: each rank's share of the global batches, as `fit` draws them.

The real multi-process runs (gloo) are in tests/e2e/test_distributed.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from modelfoundry.data.prepare import ArrayData
from modelfoundry.training import distributed


def shares(monkeypatch, examples: int, batch_size: int, world: int) -> tuple[list, list]:
    """Per rank, the target batches `shard` gives it; and the global batches of one process."""
    data = ArrayData(torch.zeros(examples, 1), torch.arange(examples))
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    per_rank = []
    for rank in range(world):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        batches = data.batches(batch_size * world, shuffle=True, generator=torch.Generator().manual_seed(7))
        per_rank.append([targets for _, targets in distributed.shard(batches)])
        assert len(per_rank[-1]) == distributed.batches_per_epoch(examples, batch_size)
    one_process = [
        t
        for _, t in data.batches(batch_size * world, shuffle=True, generator=torch.Generator().manual_seed(7))
    ]
    return per_rank, one_process


@pytest.mark.parametrize(
    ("examples", "batch_size", "world"), [(23, 4, 3), (24, 4, 3), (25, 4, 3), (13, 4, 2), (5, 8, 4)]
)
def test_ranks_split_each_global_batch_into_equal_disjoint_parts(monkeypatch, examples, batch_size, world):
    per_rank, one_process = shares(monkeypatch, examples, batch_size, world)
    for step, parts in enumerate(zip(*per_rank, strict=True)):
        assert len({len(part) for part in parts}) == 1  # DDP averages the ranks' gradients with equal weight
        assert set(torch.cat(parts).tolist()) <= set(one_process[step].tolist())
    used = [i for parts in per_rank for part in parts for i in part.tolist()]
    assert len(used) == len(set(used))  # nothing repeated
    dropped = examples % (batch_size * world) % world
    assert len(used) == examples - dropped
    line, setup = _describe(monkeypatch, examples, batch_size, world)
    assert setup["examples_dropped_per_epoch"] == dropped
    assert f"effective batch {batch_size * world}" in line


def test_one_process_keeps_every_batch_as_it_is(monkeypatch):
    per_rank, one_process = shares(monkeypatch, 23, 4, 1)
    assert len(per_rank[0]) == math.ceil(23 / 4) == len(one_process)
    assert all(torch.equal(a, b) for a, b in zip(per_rank[0], one_process, strict=True))


def _describe(monkeypatch, examples: int, batch_size: int, world: int):
    from modelfoundry.config import TrainConfig

    monkeypatch.setattr(distributed.dist, "get_backend", lambda: "gloo")
    return distributed.describe(TrainConfig(batch_size=batch_size), examples)
