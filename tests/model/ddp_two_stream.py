"""One optimizer step of tiny two-stream models, as one process over a global
batch or as a rank of ``torchrun --nproc-per-node 2`` over its half
(test_two_stream.py runs both and compares). tests/train/ddp_equivalence.py
supplies the batch, the halves and the step; this file only builds the models:

    python -m torch.distributed.run --nproc-per-node 2 tests/model/ddp_two_stream.py OUT.pt
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


eq = _load("videolm_tests_ddp_equivalence", os.path.join(HERE, "..", "train", "ddp_equivalence.py"))

from videolm.model.gather import RankGroup  # noqa: E402
from videolm.model.pretraining import VideoLMForPretraining  # noqa: E402

# name -> (mode, two-stream overrides): ViLBERT wiring in both modes, and cbt_paper (own context, cross-modal NCE)
VARIANTS = {
    "videobert": ("videobert", {}),
    "cbt": ("cbt", {}),
    "cbt_paper": ("cbt", {"masked_context": "own", "align_loss": "nce"}),
}


def mode_of(name: str) -> str:
    return VARIANTS[name][0]


def build(name: str) -> VideoLMForPretraining:
    mode, overrides = VARIANTS[name]
    torch.manual_seed(0)
    config = eq.tiny_config(mode, arch="two_stream", text_layers=1, visual_layers=1, cross_layers=1, **overrides)
    return VideoLMForPretraining(config).train()


def main(out_path: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ranks = RankGroup.new(world, rank)
    results = {}
    for name in VARIANTS:
        model = build(name)
        ddp = DistributedDataParallel(model, find_unused_parameters=True)
        r = eq.one_step(model, ddp, eq.part(eq.global_batch(mode_of(name)), rank, world), ranks)
        values = torch.stack([r["loss"], *r["losses"].values()])  # what the trainer logs: means over ranks
        dist.all_reduce(values)
        values /= world
        r["loss"], r["losses"] = values[0], dict(zip(r["losses"], values[1:]))
        results[name] = r
    if rank == 0:
        torch.save(results, out_path)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
