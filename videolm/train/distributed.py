"""torchrun support: process group set-up and a resumable distributed sampler.

Under ``torchrun --nproc-per-node N`` the environment carries RANK,
WORLD_SIZE and LOCAL_RANK; without them the run is one process and nothing
here talks to ``torch.distributed``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_from_torchrun() -> DistEnv:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    return DistEnv(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(env: DistEnv, device: torch.device) -> None:
    """gloo on CPU, NCCL on CUDA; a no-op for a single process."""
    if not env.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives (and all_gather_object) use the current device
    dist.init_process_group(backend, rank=env.rank, world_size=env.world_size, timeout=timedelta(minutes=30))


def _comm_device() -> torch.device:
    """Where a collective's tensors must live: NCCL only moves CUDA tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def mean_across_ranks(values: dict[str, float], env: DistEnv) -> dict[str, float]:
    """Average each logged value over ranks (every rank must pass the same keys)."""
    if not env.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return {k: float(v) / env.world_size for k, v in zip(keys, t.tolist())}


def broadcast_flag(flag: bool, env: DistEnv) -> bool:
    """True on every rank when rank 0 says so (e.g. 'stop now')."""
    if not env.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=_comm_device())
    dist.broadcast(t, 0)
    return bool(t.item())


class ResumableDistributedSampler(DistributedSampler):
    """A DistributedSampler that is laid out in optimizer steps and starts at any step.

    The dataset is indexed by ``(epoch, position)`` keys and does its own
    seeded shuffling and source mixing per epoch, so this sampler only decides
    *which positions* each rank reads at each step. Optimizer step ``s`` uses
    the global batch of positions ``[b, b + G)`` of its epoch
    (``b = (s mod steps_per_epoch) * G``; the last partial batch of an epoch
    is dropped). That batch is cut into ``grad_accum`` consecutive groups,
    one per accumulation step ``a``, and each group into ``world_size``
    micro-batches: rank ``r`` takes micro-batch ``a * world_size + r``, i.e.
    positions ``b + (a * world_size + r) * m`` onwards (``m = G /
    (world_size * grad_accum)``).

    Two consequences the tests rely on: a run resumed at step ``s`` reads
    exactly what an uninterrupted run reads from step ``s`` on, and at each
    accumulation step the ranks together hold the same group of positions
    whatever their number, so (the model gathering its contrastive candidates
    over the ranks) N ranks compute the optimizer steps one process with the
    same ``grad_accum`` computes.
    """

    def __init__(self, dataset, global_batch: int, grad_accum: int, num_replicas: int, rank: int,
                 start_step: int, total_steps: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=True)
        parts = num_replicas * grad_accum
        if global_batch % parts:
            raise ValueError(f"batch size {global_batch} is not divisible by world size x grad_accum = {parts}")
        self.global_batch = global_batch
        self.grad_accum = grad_accum
        self.micro_batch = global_batch // parts
        self.steps_per_epoch = len(dataset) // global_batch
        if self.steps_per_epoch < 1:
            raise ValueError(f"an epoch of {len(dataset)} examples is smaller than one batch of {global_batch}")
        self.start_step = start_step
        self.total_steps = total_steps

    def keys_for_step(self, step: int) -> list[list[tuple[int, int]]]:
        """This rank's micro-batches of ``(epoch, position)`` keys for one step."""
        epoch, within = divmod(step, self.steps_per_epoch)
        base = within * self.global_batch
        out = []
        for a in range(self.grad_accum):
            start = base + (a * self.num_replicas + self.rank) * self.micro_batch
            out.append([(epoch, p) for p in range(start, start + self.micro_batch)])
        return out

    def __iter__(self):
        for step in range(self.start_step, self.total_steps):
            for micro in self.keys_for_step(step):
                yield from micro

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step) * self.grad_accum * self.micro_batch
