"""Candidates from every rank: the contrastive losses see the global batch.

Under torchrun each rank holds one micro-batch. InfoNCE, masked-feature NCE
and the alignment negatives score a row against the other rows of the batch,
so with ``N`` ranks they gather what they score against from every rank
(open_clip's ``gather_features``): the dual-encoder embeddings **with
gradient**, the NCE targets and the alignment inputs without (they are data).

Gradient through the gather: every rank computes the same global InfoNCE loss
``L`` from the gathered embeddings, so the gradient a rank's own embeddings
receive is the sum over ranks, ``N * dL/de``; DDP then averages parameter
gradients over the ``N`` ranks, which leaves exactly ``dL/dtheta``, the
gradient one process computing ``L`` over the whole batch gets. (open_clip
uses ``torch.distributed.nn.functional.all_gather``, deprecated in torch
2.14; ``GatherWithGrad`` below is the same thing: all_gather forward,
all_reduce of the gradient and this rank's slice backward.)

The collectives run on a process group of their own (``RankGroup.new``), so
they never interleave with DDP's gradient all-reduces on the default group.
A single process uses ``RankGroup()``: every method is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


class GatherWithGrad(torch.autograd.Function):
    """(B, ...) on each rank -> (N * B, ...), rank order; backward sums the
    gradient over ranks and returns this rank's rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Any, rank: int, world_size: int) -> torch.Tensor:
        ctx.group, ctx.rank, ctx.rows = group, rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world_size)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows], None, None, None


@dataclass(frozen=True)
class RankGroup:
    """The ranks one optimizer step's micro-batches are spread over."""

    world_size: int = 1
    rank: int = 0
    group: Any = None  # torch.distributed process group of its own; None for one process

    @classmethod
    def new(cls, world_size: int, rank: int) -> "RankGroup":
        """Call on every rank, in the same order (it creates a process group)."""
        if world_size <= 1:
            return cls()
        return cls(world_size, rank, dist.new_group(list(range(world_size))))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def gather(self, x: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """(B, ...) -> (world_size * B, ...), rank order; the same B on every rank."""
        if not self.enabled:
            return x
        if grad:
            return GatherWithGrad.apply(x, self.group, self.rank, self.world_size)
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x.detach().contiguous(), group=self.group)
        return torch.cat(parts)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (no gradient): e.g. counts of masked positions."""
        if not self.enabled:
            return x
        x = x.detach().clone()
        dist.all_reduce(x, group=self.group)
        return x

    def max_ints(self, values: list[int]) -> list[int]:
        """Element-wise max over ranks of a few host integers (padding sizes)."""
        if not self.enabled:
            return list(values)
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(self.group) == "nccl" \
            else torch.device("cpu")
        t = torch.tensor(values, dtype=torch.long, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return t.tolist()


def pad_dim1(x: torch.Tensor, length: int, value: float | int | bool = 0) -> torch.Tensor:
    """Right-pad dim 1 of (B, T, ...) to ``length`` with ``value``."""
    if x.shape[1] == length:
        return x
    pad = x.new_full((x.shape[0], length - x.shape[1], *x.shape[2:]), value)
    return torch.cat([x, pad], 1)


def pad_dim0(x: torch.Tensor, length: int, value: float | int | bool = 0) -> torch.Tensor:
    """Right-pad dim 0 of (M, ...) to ``length`` with ``value``."""
    if x.shape[0] == length:
        return x
    return torch.cat([x, x.new_full((length - x.shape[0], *x.shape[1:]), value)])
