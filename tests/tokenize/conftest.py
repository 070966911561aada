"""Synthetic stores, a store with NaN/Inf clips, and an
independent (plain numpy, float64) tree descent to check encode against."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from videolm.features.store import FeatureStore, Finished, StoreWriter


@pytest.fixture
def nan_store(sample_store, tmp_path):
    """The sample store with NaN in clip 2 of 'bikes' and Inf in clip 0 of 'photos/coffee'."""
    root = tmp_path / "nan_store"
    shutil.copytree(sample_store, root)
    store = FeatureStore(str(root))
    for video_id, clip, value in (("bikes", 2, np.nan), ("photos/coffee", 0, np.inf)):
        row = store.entry(video_id)
        path = root / row["shard"]
        data = np.load(path)
        data[row["offset"] + clip, 5] = value
        np.save(path, data)
    return str(root)


def write_store(root, videos: dict[str, np.ndarray], backbone: str = "synthetic", dtype: str = "float32",
                videos_per_shard: int = 2) -> str:
    """A feature store holding the given (n_clips, dim) arrays, one clip per second."""
    dim = next(iter(videos.values())).shape[1] if videos else 8
    meta = {"backbone": backbone, "weights": "none", "dim": dim, "dtype": dtype,
            "clip_spec": {"window_s": 1.0, "frames": 2}, "videolm_version": "test"}
    w = StoreWriter(str(root), meta, videos_per_shard)
    w.plan(list(videos))
    for video_id, feats in videos.items():
        n = len(feats)
        row = {"kind": "video", "fps": 10.0, "num_frames": 10 * n, "duration": float(n),
               "clip_start": [float(i) for i in range(n)], "clip_end": [float(i + 1) for i in range(n)]}
        w.add(Finished(video_id, f"/videos/{video_id}.mp4", np.asarray(feats), row))
    w.finalize()
    return str(root)


def reference_descent(x, centroids, children, k):
    """Word id and squared distance of each row by the tree's rule, written
    out point by point in float64: at each level, the nearest of the node's
    existing children (the lowest digit on a tie)."""
    x = np.asarray(x, np.float64)
    ids = np.empty(len(x), np.int64)
    dist = np.empty(len(x), np.float64)
    for i, point in enumerate(x):
        node = 0
        for level, (level_centroids, level_children) in enumerate(zip(centroids, children)):
            n = int(level_children[node])
            cands = np.asarray(level_centroids[node * k : node * k + n], np.float64)
            d = ((cands - point) ** 2).sum(axis=1)
            digit = int(np.argmin(d))
            node = node * k + digit
            dist[i] = d[digit]
        ids[i] = node
    return ids, dist


@pytest.fixture
def store_writer():
    return write_store


@pytest.fixture
def descend():
    return reference_descent
