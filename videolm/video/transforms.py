"""From uint8 frames to the tensor a backbone reads."""

from __future__ import annotations

import torch


def normalize_clips(clips: torch.Tensor, mean, std) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B, 3, T, H, W) float32, scaled to [0, 1] and
    normalised per channel. Run it on the backbone's device: moving uint8 is
    4x cheaper than moving floats."""
    x = clips.permute(0, 4, 1, 2, 3).float().div_(255.0)  # (B, 3, T, H, W)
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1, 1)
    return x.sub_(mean_t).div_(std_t)
