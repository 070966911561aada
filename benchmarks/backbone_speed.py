"""Backbone forward throughput on this machine, each at its own clip size,
as clips/s and as a ratio to S3D measured in the same run (rates vary with
machine load; the ratios are what to compare).

    python benchmarks/backbone_speed.py [--batch-size 4] [--batches 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from videolm.features.backbones import BACKBONES, build_backbone


def clips_per_s(name: str, batch: int, batches: int) -> float:
    spec = BACKBONES[name]
    net = build_backbone(name)
    x = torch.randn(batch, 3, spec.frames, spec.crop, spec.crop)
    with torch.no_grad():
        net(x)  # warm-up
        t = time.perf_counter()
        for _ in range(batches):
            net(x)
    return batch * batches / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--backbones", nargs="*", default=list(BACKBONES))
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, random weights")
    rates = {name: clips_per_s(name, args.batch_size, args.batches) for name in args.backbones}
    ref = rates.get("s3d") or clips_per_s("s3d", args.batch_size, args.batches)
    print(f"{'backbone':14s} {'clip':>12s} {'clips/s':>8s} {'vs s3d':>7s}")
    for name, rate in rates.items():
        spec = BACKBONES[name]
        print(f"{name:14s} {spec.frames:>4d}x{spec.crop:>3d}px {rate:8.2f} {rate / ref:6.2f}x")


if __name__ == "__main__":
    main()
