"""The step-laid-out distributed sampler: resumable, and rank/accumulation symmetric."""

from __future__ import annotations

import pytest
from torch.utils.data.distributed import DistributedSampler

from videolm.train.distributed import ResumableDistributedSampler


class Sized:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def micro_batches(sampler):
    keys = list(sampler)
    m = sampler.micro_batch
    return [keys[i:i + m] for i in range(0, len(keys), m)]


def test_is_a_distributed_sampler_and_covers_each_epoch_without_overlap():
    data = Sized(20)  # batch 8 -> 2 steps per epoch, 4 positions dropped
    ranks = [ResumableDistributedSampler(data, 8, 1, 2, r, 0, 4) for r in range(2)]
    assert all(isinstance(s, DistributedSampler) for s in ranks)
    seen = [k for s in ranks for k in s]
    assert sorted(seen) == [(e, p) for e in range(2) for p in range(16)]
    assert len(ranks[0]) == 16 == len(list(ranks[0]))


def test_ranks_together_hold_each_accumulation_group_of_one_process():
    """Accumulation step a reads the same positions whatever the number of
    ranks: ranks split each group, accumulation splits the step."""
    data = Sized(64)
    one = micro_batches(ResumableDistributedSampler(data, 8, 2, 1, 0, 0, 5))
    r0 = micro_batches(ResumableDistributedSampler(data, 8, 2, 2, 0, 0, 5))
    r1 = micro_batches(ResumableDistributedSampler(data, 8, 2, 2, 1, 0, 5))
    for step in range(5):
        for a in range(2):
            assert one[2 * step + a] == r0[2 * step + a] + r1[2 * step + a]
    # by hand, step 0: group 0 is positions 0-3 (rank 0: 0, 1; rank 1: 2, 3), group 1 is 4-7
    assert [p for _, p in r0[0]] == [0, 1] and [p for _, p in r1[0]] == [2, 3]
    assert [p for _, p in r0[1]] == [4, 5] and [p for _, p in r1[1]] == [6, 7]
    # without accumulation, two ranks split the one process's batch
    whole = micro_batches(ResumableDistributedSampler(data, 8, 1, 1, 0, 0, 5))
    halves = [micro_batches(ResumableDistributedSampler(data, 8, 1, 2, r, 0, 5)) for r in range(2)]
    assert all(whole[s] == halves[0][s] + halves[1][s] for s in range(5))


def test_resuming_at_a_step_continues_exactly():
    data = Sized(30)
    full = list(ResumableDistributedSampler(data, 6, 1, 1, 0, 0, 12))
    tail = list(ResumableDistributedSampler(data, 6, 1, 1, 0, 7, 12))
    assert tail == full[7 * 6:]
    assert tail[0] == (1, 12)  # 5 steps per epoch: step 7 is epoch 1, second batch


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="not divisible"):
        ResumableDistributedSampler(Sized(64), 10, 1, 4, 0, 0, 1)
    with pytest.raises(ValueError, match="smaller than one batch"):
        ResumableDistributedSampler(Sized(4), 8, 1, 1, 0, 0, 1)
