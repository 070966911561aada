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


def test_two_ranks_read_what_one_process_with_accumulation_reads():
    data = Sized(64)
    one = micro_batches(ResumableDistributedSampler(data, 8, 2, 1, 0, 0, 5))
    r0 = micro_batches(ResumableDistributedSampler(data, 8, 1, 2, 0, 0, 5))
    r1 = micro_batches(ResumableDistributedSampler(data, 8, 1, 2, 1, 0, 5))
    for step in range(5):
        assert one[2 * step] == r0[step]
        assert one[2 * step + 1] == r1[step]


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
