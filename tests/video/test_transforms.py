import numpy as np
import torch

from videolm.video.transforms import normalize_clips


def test_normalize_matches_the_textbook_formula():
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, (2, 3, 5, 4, 3), dtype=np.uint8)  # (B, T, H, W, C)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = normalize_clips(torch.from_numpy(clips), mean, std)
    ref = (clips.astype(np.float64) / 255.0 - np.array(mean)) / np.array(std)  # (B, T, H, W, C)
    ref = ref.transpose(0, 4, 1, 2, 3)  # (B, C, T, H, W)
    assert out.shape == (2, 3, 3, 5, 4) and out.dtype == torch.float32 and out.is_contiguous()
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)
