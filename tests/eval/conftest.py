"""Tiny models trained on the real sample media (root conftest's sample_media_store),
with caption and image-caption manifests written here."""

from __future__ import annotations

import json
import os

import pytest

VIDEO_CAPTIONS = {
    "bigbuckbunny": ["a big white rabbit stands in a green meadow", "a cartoon rabbit watches a butterfly"],
    "bikes": ["cyclists ride their bikes along a street", "people on bicycles pass by"],
    "carphone_pristine": ["a man talks on a phone in a car"],
    "carphone_distorted": ["a blurry video of a man on the phone in a car"],
    "blue": ["a plain blue screen"],
}
IMAGE_CAPTIONS = {
    "astronaut": ["an astronaut in an orange suit in front of a flag"],
    "chelsea": ["a tabby cat looks to the side"],
    "coffee": ["a cup of coffee on a saucer"],
}


def write_jsonl(path, rows) -> str:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def eval_corpus(sample_media_store, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("eval_corpus")
    return {
        "store": os.path.join(sample_media_store, "store"), "vocab": os.path.join(sample_media_store, "vocab"),
        "captions": write_jsonl(root / "captions.jsonl",
                                [{"video_id": v, "captions": c} for v, c in VIDEO_CAPTIONS.items()]),
        "images": write_jsonl(root / "images.jsonl", [{"image_id": i, "captions": c} for i, c in IMAGE_CAPTIONS.items()]),
        "root": str(root),
    }


def train_tiny(corpus: dict, out: str, mode: str, steps: int = 40, **extra) -> str:
    """A 2-layer, hidden-32 model trained on the manifests; returns its model directory."""
    from videolm.train.config import load_config
    from videolm.train.loop import pretrain

    yaml_path = os.path.join(corpus["root"], f"tiny_{mode}.yaml")
    with open(yaml_path, "w") as f:
        f.write("data:\n  sources:\n"
                f"    - {{kind: caption, manifest: {corpus['captions']}}}\n"
                f"    - {{kind: image, manifest: {corpus['images']}}}\n")
    values = {
        "model.mode": mode, "model.hidden_size": 32, "model.num_layers": 2, "model.num_heads": 2,
        "model.intermediate_size": 64, "model.embed_dim": 16, "model.dropout": 0.0, "model.attention_dropout": 0.0,
        "data.store": corpus["store"], "data.max_text_len": 16, "data.max_visual_len": 4, "data.epoch_size": 32,
        "train.out": out, "train.steps": steps, "train.batch_size": 8, "train.lr": 3e-3,
        "train.warmup_steps": 4, "train.log_every": 10, "train.save_every": 1000,
    }
    if mode == "videobert":
        values["data.vocab"] = corpus["vocab"]
    values.update(extra)
    result = pretrain(load_config(yaml_path, [f"{k}={v}" for k, v in values.items()]))
    return result.model_dir


@pytest.fixture(scope="session")
def tiny_models(eval_corpus, tmp_path_factory) -> dict[str, str]:
    """mode -> model directory (CBT and VideoBERT), trained 40 steps each."""
    root = tmp_path_factory.mktemp("eval_models")
    return {mode: train_tiny(eval_corpus, str(root / mode), mode) for mode in ("cbt", "videobert")}


@pytest.fixture(scope="session")
def trainer():
    """train_tiny, for tests that train with their own settings."""
    return train_tiny
