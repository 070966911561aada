"""What each backbone is and what clips it takes, without importing torch.

``BACKBONES`` holds, per backbone, what a run must know before any network
exists: the clip (T frames every tau), the sizes and mean/std of each
official weight's eval transform, the weights' URLs, the vector's length.
``videolm.features.backbones`` builds the networks from it. Kept torch-free
so that a Ray driver (``--engine ray``), which plans the run and writes the
store but never runs a network, does not pay the 5-6 s that torch and
torchvision take to import, nor need a torch at all on its node.

The torchvision entries are the eval transforms of torchvision's weight
enums (``weights.transforms()``: ``resize_size``, ``crop_size``, ``mean``,
``std``) and their URLs, written out here; ``tests/features/test_backbones.py``
reads them back from torchvision and checks every value, so a torchvision
that changes one fails the suite rather than drifting silently.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from videolm.features.config import TEMPORAL_MODES
from videolm.video.sampling import KINETICS_MEAN, KINETICS_STD

PTV_ZOO = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics"
TV_ZOO = "https://download.pytorch.org/models"
# torchvision's eval transforms (weights.transforms()), see the module doc
TV_KINETICS_MEAN, TV_KINETICS_STD = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class BackboneError(ValueError):
    """User-facing error; str() is ONE line, no traceback needed."""


@dataclass(frozen=True)
class BackboneSpec:
    """What clips a backbone expects and what it returns (``backbones.BUILDERS`` builds it)."""

    dim: int  # feature dim of the pooled vector
    frames: int  # T the network is trained with
    sampling_rate: int  # tau, in frames of a 30 fps source (window = frames*tau/30 s, fps = 30/tau)
    short_side: int  # resize short side to this, then centre crop `crop`
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    kind: str  # "3d" or "2d"
    source: str  # "torchvision" | "pytorchvideo"
    official: dict[str, str]  # official weight name -> download URL
    # Modules after the pooled vector (the classifier, and pytorchvideo's
    # softmax); dotted paths in the full model, replaced by nn.Identity.
    classifier: tuple[str, ...] = ()
    # SlowFast only: the slow pathway sees every alpha-th frame of the clip.
    alpha: int | None = None
    # MViT only: positional embeddings accept exactly frames x crop x crop.
    fixed_input: bool = False
    # official weight name -> its own eval sizes / mean / std where they differ
    # from the fields above (torchvision's IMAGENET1K_V2: 232 px, not 256)
    weight_preprocessing: dict[str, dict] = field(default_factory=dict)

    def preprocessing(self, weights: str = "none") -> dict:
        """short_side, crop, mean, std for clips fed to these weights."""
        base = dict(short_side=self.short_side, crop=self.crop, mean=self.mean, std=self.std)
        return dict(base, **self.weight_preprocessing.get(weights, {}))


def _kinetics(file: str, **kw) -> dict:
    return dict(mean=KINETICS_MEAN, std=KINETICS_STD, kind="3d", source="pytorchvideo",
                official={"KINETICS400": f"{PTV_ZOO}/{file}"}, **kw)


BACKBONES: dict[str, BackboneSpec] = {
    # torchvision 3-D. S3D: 16 frames at 15 fps (torchvision evaluates at
    # 15 fps); its eval transform resizes to a fixed 256x256, we keep aspect.
    "s3d": BackboneSpec(
        dim=1024, frames=16, sampling_rate=2, short_side=256, crop=224, mean=TV_KINETICS_MEAN, std=TV_KINETICS_STD,
        kind="3d", source="torchvision", official={"KINETICS400_V1": f"{TV_ZOO}/s3d-d76dad2f.pth"},
        classifier=("classifier",),
    ),
    "r2plus1d_18": BackboneSpec(
        dim=512, frames=16, sampling_rate=2, short_side=128, crop=112, mean=TV_KINETICS_MEAN, std=TV_KINETICS_STD,
        kind="3d", source="torchvision", official={"KINETICS400_V1": f"{TV_ZOO}/r2plus1d_18-91a641e6.pth"},
        classifier=("fc",),
    ),
    # MViT's positional embedding fixes the input to exactly 16x224x224.
    "mvit_v2_s": BackboneSpec(
        dim=768, frames=16, sampling_rate=4, short_side=256, crop=224, mean=KINETICS_MEAN, std=KINETICS_STD,
        kind="3d", source="torchvision", official={"KINETICS400_V1": f"{TV_ZOO}/mvit_v2_s-ae3be167.pth"},
        classifier=("head",), fixed_input=True,
    ),
    # pytorchvideo model zoo (Kinetics-400). T x tau from each checkpoint's
    # name; sizes from the torch hub recipes (the pytorchvideo hub pages and
    # tutorial_torchhub_inference: X3D-XS/S 182/182, X3D-M, Slow and SlowFast
    # 256/256, i.e. the crop covers the short side). I3D and R(2+1)D-50 have no
    # hub recipe: they keep the 256 / 224 centre crop of their training size.
    # X3D's pooled vector is the 2048-d output of the head's projected pool.
    "x3d_xs": BackboneSpec(dim=2048, frames=4, sampling_rate=12, short_side=182, crop=182,
                           **_kinetics("X3D_XS.pyth", classifier=("blocks.5.proj", "blocks.5.activation"))),
    "x3d_s": BackboneSpec(dim=2048, frames=13, sampling_rate=6, short_side=182, crop=182,
                          **_kinetics("X3D_S.pyth", classifier=("blocks.5.proj", "blocks.5.activation"))),
    "x3d_m": BackboneSpec(dim=2048, frames=16, sampling_rate=5, short_side=256, crop=256,
                          **_kinetics("X3D_M.pyth", classifier=("blocks.5.proj", "blocks.5.activation"))),
    "slow_r50": BackboneSpec(dim=2048, frames=8, sampling_rate=8, short_side=256, crop=256,
                             **_kinetics("SLOW_8x8_R50.pyth", classifier=("blocks.5.proj",))),
    # SlowFast 8x8: the fast pathway reads 32 frames at tau=2, the slow one
    # every 4th of them (8 frames at tau=8); 2048 slow + 256 fast channels.
    "slowfast_r50": BackboneSpec(dim=2304, frames=32, sampling_rate=2, short_side=256, crop=256, alpha=4,
                                 **_kinetics("SLOWFAST_8x8_R50.pyth", classifier=("blocks.6.proj",))),
    "i3d_r50": BackboneSpec(dim=2048, frames=8, sampling_rate=8, short_side=256, crop=224,
                            **_kinetics("I3D_8x8_R50.pyth", classifier=("blocks.6.proj",))),
    "r2plus1d_r50": BackboneSpec(dim=2048, frames=16, sampling_rate=4, short_side=256, crop=224,
                                 **_kinetics("R2PLUS1D_16x4_R50.pyth",
                                             classifier=("blocks.5.proj", "blocks.5.activation"))),
    # 2-D ImageNet networks, frame by frame then mean over T (video_features'
    # ResNet mode). 16 frames at 15 fps is our choice, not a training setting;
    # 256/224 is the IMAGENET1K_V1 eval transform; IMAGENET1K_V2 weights get
    # their own 232/224 (weight_preprocessing).
    "mobilenet_v2": BackboneSpec(
        dim=1280, frames=16, sampling_rate=2, short_side=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        kind="2d", source="torchvision",
        official={"IMAGENET1K_V1": f"{TV_ZOO}/mobilenet_v2-b0353104.pth",
                  "IMAGENET1K_V2": f"{TV_ZOO}/mobilenet_v2-7ebf99e0.pth"},
        classifier=("classifier",), weight_preprocessing={"IMAGENET1K_V2": {"short_side": 232}},
    ),
    "resnet50": BackboneSpec(
        dim=2048, frames=16, sampling_rate=2, short_side=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        kind="2d", source="torchvision",
        official={"IMAGENET1K_V1": f"{TV_ZOO}/resnet50-0676ba61.pth",
                  "IMAGENET1K_V2": f"{TV_ZOO}/resnet50-11ad3fa6.pth"},
        classifier=("fc",), weight_preprocessing={"IMAGENET1K_V2": {"short_side": 232}},
    ),
}


def check_backbone(name: str, temporal: str = "mean") -> BackboneSpec:
    """The spec of ``name``, or BackboneError for an unknown name or a
    temporal mode the network cannot take."""
    if name not in BACKBONES:
        raise BackboneError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
    spec = BACKBONES[name]
    if temporal not in TEMPORAL_MODES:
        raise BackboneError(f"unknown temporal mode {temporal!r}; valid: {', '.join(TEMPORAL_MODES)}")
    if temporal != "mean" and spec.kind != "2d":
        raise BackboneError(f"--temporal {temporal}: {name} is a 3-D network, which models time itself; "
                            "the option is for 2-D backbones")
    return spec


def feature_dim(name: str, temporal: str = "mean") -> int:
    """Length of one clip's vector: the network's pooled vector, twice with a motion half."""
    return check_backbone(name, temporal).dim * (1 if temporal == "mean" else 2)


def hub_dir() -> str:
    """``torch.hub.get_dir()``: torch's own answer once torch is loaded (it
    may have been moved with ``torch.hub.set_dir``), else the same rule:
    ``$TORCH_HOME/hub``, ``$TORCH_HOME`` defaulting to ``$XDG_CACHE_HOME/torch``
    and that to ``~/.cache/torch``."""
    if "torch.hub" in sys.modules:
        return sys.modules["torch.hub"].get_dir()
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return os.path.join(os.path.expanduser(home), "hub")


def official_weights_path(name: str, weights: str) -> Path:
    """Where an official weight file must be for offline use: the torch hub
    cache, under the URL's file name (as torch.hub would save it)."""
    return Path(hub_dir()) / "checkpoints" / os.path.basename(BACKBONES[name].official[weights])


def weights_path(name: str, weights: str, must_exist: bool = True) -> Path | None:
    """The file that ``weights`` (an official name or a path) names for
    backbone ``name``; None for ``"none"``. BackboneError (one line) for an
    unknown name and, with ``must_exist`` (this machine loads it), for an
    official file not on this machine or a missing file."""
    spec = BACKBONES[name]
    if weights == "none":
        return None
    if weights in spec.official:
        path = official_weights_path(name, weights)
        if must_exist and not path.is_file():
            raise BackboneError(
                f"{name}: weights {weights} are not on this machine (offline); download "
                f"{spec.official[weights]} and put it at {path}, or pass --weights /path/to/file"
            )
        return path
    if Path(weights).is_file() or os.sep in weights or Path(weights).suffix:
        path = Path(weights)
        if must_exist and not path.is_file():
            raise BackboneError(f"{path}: no such weights file")
        return path
    valid = ", ".join(["none", *spec.official])
    raise BackboneError(f"{name}: unknown weights {weights!r}; valid: {valid}, or a path to a weights file")
