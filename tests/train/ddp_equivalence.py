"""One optimizer step of the tiny pre-training model, as one process over a
global batch or as a rank of ``torchrun --nproc-per-node 2`` over its half
(test_gather.py runs both and compares). Run as a script under torchrun:

    python -m torch.distributed.run --nproc-per-node 2 tests/train/ddp_equivalence.py OUT.pt

Not a test module itself (pytest collects test_*.py only).
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))


def _model_conftest():
    """tests/model/conftest.py under a name of its own (pytest has its own 'conftest' modules)."""
    spec = importlib.util.spec_from_file_location("videolm_tests_model_conftest",
                                                  os.path.join(HERE, "..", "model", "conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_batch, tiny_config = _model_conftest().make_batch, _model_conftest().tiny_config

from videolm.data.batch import Batch  # noqa: E402
from videolm.model.gather import RankGroup  # noqa: E402
from videolm.model.pretraining import VideoLMForPretraining  # noqa: E402
from videolm.train.optim import build_optimizer  # noqa: E402

MODES = ("videobert", "cbt")
# name -> (mode, model overrides): both modes with the default objectives, and listwise alignment
VARIANTS = {"videobert": ("videobert", {}), "cbt": ("cbt", {}),
            "cbt_listwise": ("cbt", {"align_loss": "listwise", "align_list_negatives": 2})}
ROWS = 8


def global_batch(mode: str) -> Batch:
    """8 rows: group 0 on both halves (rows 0, 1 | 5), row 4 without a visual
    side, and in CBT mode row 5's masked clip equal to row 0's (the same clip
    masked in two rows of one video, on two ranks)."""
    batch = make_batch(mode, text_lens=(5, 7, 4, 6, 3, 8, 5, 6), visual_lens=(3, 4, 2, 4, 0, 3, 1, 4),
                       groups=(0, 0, 1, 2, 3, 0, 4, 5), seed=0)
    if mode == "cbt":
        batch.visual_feats[5, 0] = batch.visual_feats[0, 0]
    return batch


def part(batch: Batch, rank: int, world: int) -> Batch:
    """This rank's rows, trimmed to their own padding (as its collator would pad them)."""
    n = len(batch) // world
    rows = batch.slice(rank * n, (rank + 1) * n)
    tt = int(rows.text_attention.sum(1).max())
    tv = max(1, int(rows.visual_attention.sum(1).max()))
    cut = {}
    for name in ("text_ids", "text_attention", "text_labels"):
        cut[name] = getattr(rows, name)[:, :tt]
    for name in ("visual_attention", "visual_masked", "visual_ids", "visual_labels", "visual_feats"):
        value = getattr(rows, name)
        cut[name] = None if value is None else value[:, :tv]
    return Batch(group_ids=rows.group_ids, is_image=rows.is_image, **cut)


def build(name: str) -> VideoLMForPretraining:
    mode, overrides = VARIANTS[name]
    torch.manual_seed(0)
    return VideoLMForPretraining(tiny_config(mode, **overrides)).train()


def one_step(model, train_model, batch: Batch, ranks: RankGroup | None) -> dict:
    """Forward (negatives drawn from the same seed everywhere), backward, one
    AdamW step and the clamp, as the trainer does. Returns this process's
    losses, the gradients (after DDP's average) and the weights after the step."""
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.01, betas=[0.9, 0.999], eps=1e-6)
    out = train_model(batch, generator=torch.Generator().manual_seed(7), ranks=ranks)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    model.clamp_parameters()
    return {"loss": out.loss.detach(), "losses": {k: v.detach() for k, v in out.losses.items()},
            "grads": grads, "weights": {n: p.detach().clone() for n, p in model.named_parameters()}}


def main(out_path: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ranks = RankGroup.new(world, rank)
    results = {}
    for name, (mode, _) in VARIANTS.items():
        model = build(name)
        ddp = DistributedDataParallel(model, find_unused_parameters=True)
        r = one_step(model, ddp, part(global_batch(mode), rank, world), ranks)
        # what the trainer logs: each value averaged over ranks
        values = torch.stack([r["loss"], *r["losses"].values()])
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
