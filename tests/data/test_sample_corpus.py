"""The shipped sample manifests (configs/data) against real features of the
sample media, under the ids `make demo` gives them."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from videolm.data.config import DataConfig, SourceConfig
from videolm.data.corpus import build_pretrain_dataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLES = {kind: os.path.join(REPO, "configs", "data", f"sample_{name}.jsonl")
           for kind, name in (("caption", "captions"), ("asr", "asr"), ("image", "images"))}


def test_sample_times_lie_inside_the_videos(sample_media_store):
    from videolm.features.store import FeatureStore

    store = FeatureStore(os.path.join(sample_media_store, "store"))
    index = {video_id: store.entry(video_id) for video_id in store.ids()}
    for kind, path in SAMPLES.items():
        for line in Path(path).read_text().splitlines():
            row = json.loads(line)
            entry = index[row.get("video_id", row.get("image_id"))]
            assert entry["kind"] == ("image" if kind == "image" else "video")
            timed = row.get("segments", []) + [c for c in row.get("captions", []) if isinstance(c, dict)]
            for t in timed:
                assert 0 <= t["start"] < t["end"] <= entry["duration"] + 1e-6, (path, t)
            if kind != "asr":
                assert 2 <= len(row["captions"]) <= 3


@pytest.mark.parametrize("mode", ["videobert", "cbt"])
def test_sample_corpus_builds_batches(sample_media_store, tokenizer, mode):
    cfg = DataConfig(store=os.path.join(sample_media_store, "store"), vocab=os.path.join(sample_media_store, "vocab"),
                     sources=[SourceConfig("caption", SAMPLES["caption"], weight=2.0),
                              SourceConfig("asr", SAMPLES["asr"]), SourceConfig("image", SAMPLES["image"])],
                     max_text_len=24, max_visual_len=8, epoch_size=64)  # as configs/*_tiny.yaml
    ds = build_pretrain_dataset(cfg, mode, tokenizer, seed=0)
    assert ds.bad_rows == [] and ds.missing == []
    d = ds.describe()
    assert [s["per_epoch"] for s in d["sources"]] == [32, 16, 16]
    batch = ds.collate([ds[(0, p)] for p in range(16)])
    assert batch.text_ids.shape[1] <= 24 and batch.visual_attention.shape[1] <= 8
    assert batch.visual_attention.any(dim=1).all() and batch.is_image.any()
    if mode == "cbt":
        assert batch.visual_feats.shape[2] == ds.feature_dim == 1280
        assert np.isfinite(batch.visual_feats.numpy()).all()
    else:
        assert int(batch.visual_ids.max()) < ds.vocab.vocab_size
