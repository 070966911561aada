"""A small pre-training corpus on the real sample store: visual vocabulary,
token ids, and caption / ASR / image-caption manifests written by hand."""

from __future__ import annotations

import json
import shutil

import pytest

VIDEO_CAPTIONS = {
    "bigbuckbunny": ["a big white rabbit stands in a green meadow", "a cartoon rabbit watches a butterfly"],
    "bikes": ["cyclists ride their bikes along a street", "people on bicycles pass by"],
    "carphone_pristine": ["a man talks on a phone in a car"],
    "carphone_distorted": ["a blurry video of a man on the phone in a car"],
    "blue": ["a plain blue screen"],
}
ASR = {
    "bigbuckbunny": [(0.0, 2.5, "look at this big rabbit"), (2.5, 5.0, "he is standing in the grass"),
                     (5.0, 7.5, "and now a butterfly comes along"), (7.5, 10.0, "he smiles at it")],
    "bikes": [(0.0, 2.0, "here come the cyclists"), (2.0, 5.0, "they ride down the street together")],
}
IMAGE_CAPTIONS = {
    "photos/astronaut": ["an astronaut in an orange suit in front of a flag"],
    "photos/chelsea": ["a tabby cat looks to the side"],
    "photos/coffee": ["a cup of coffee on a saucer"],
}


def write_jsonl(path, rows) -> str:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def corpus(sample_store, tmp_path_factory) -> dict[str, str]:
    """Paths: store (with tokens/vocab), vocab, captions, asr, images."""
    from videolm.tokenize.kmeans import KMeansConfig
    from videolm.tokenize.vocab import encode_store, fit_vocabulary

    root = tmp_path_factory.mktemp("corpus")
    store = root / "store"
    shutil.copytree(sample_store, store)
    vocab = root / "vocab"
    fit_vocabulary(str(store), KMeansConfig(k=3, depth=2, seed=0)).save_pretrained(str(vocab))
    encode_store(str(store), str(vocab))
    return {
        "root": str(root), "store": str(store), "vocab": str(vocab),
        "captions": write_jsonl(root / "captions.jsonl",
                                [{"video_id": v, "captions": c} for v, c in VIDEO_CAPTIONS.items()]),
        "asr": write_jsonl(root / "asr.jsonl", [{"video_id": v, "segments": [
            {"start": s, "end": e, "text": t} for s, e, t in segs]} for v, segs in ASR.items()]),
        "images": write_jsonl(root / "images.jsonl",
                              [{"image_id": i, "captions": c} for i, c in IMAGE_CAPTIONS.items()]),
    }


def tiny_overrides(corpus: dict[str, str], out, mode: str, steps: int = 6, **extra) -> list[str]:
    """key=value overrides of a tiny run (2 layers, hidden 32) on the corpus."""
    values = {
        "model.mode": mode, "model.hidden_size": 32, "model.num_layers": 2, "model.num_heads": 2,
        "model.intermediate_size": 64, "model.embed_dim": 16, "model.dropout": 0.0, "model.attention_dropout": 0.0,
        "data.store": corpus["store"], "data.max_text_len": 16, "data.max_visual_len": 6, "data.epoch_size": 32,
        "train.out": str(out), "train.steps": steps, "train.batch_size": 4, "train.lr": 2e-3,
        "train.warmup_steps": 2, "train.log_every": 1, "train.save_every": 3,
    }
    if mode == "videobert":
        values["data.vocab"] = corpus["vocab"]
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def sources_yaml(corpus: dict[str, str]) -> str:
    return ("data:\n  sources:\n"
            f"    - {{kind: caption, manifest: {corpus['captions']}, weight: 2.0}}\n"
            f"    - {{kind: asr, manifest: {corpus['asr']}, weight: 1.0}}\n"
            f"    - {{kind: image, manifest: {corpus['images']}, weight: 1.0}}\n")


@pytest.fixture
def tiny_config(corpus, tmp_path):
    """(config path, overrides builder): the YAML holds the sources, overrides the rest."""
    path = tmp_path / "tiny.yaml"
    path.write_text(sources_yaml(corpus))

    def overrides(out, mode, steps=6, **extra):
        return tiny_overrides(corpus, out, mode, steps, **extra)

    return str(path), overrides
