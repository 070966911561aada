"""store join: features of stores over the same clips side by side."""

from __future__ import annotations

import numpy as np
import pytest

from videolm.cli import main as cli
from videolm.features.store import FeatureStore, Finished, StoreError, StoreWriter, join_stores


def make_store(root, dim, videos, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    w = StoreWriter(str(root), {"backbone": f"net{dim}", "weights": "w", "clip_spec": {"window_s": 1.0}, "dim": dim,
                                "dtype": "float32"}, 2)
    w.plan(list(videos))
    feats = {}
    for v, n in videos.items():
        feats[v] = rng.normal(size=(n, dim)).astype(np.float32) * (1 + 9 * seed)   # parts of other scales
        w.add(Finished(v, f"/m/{v}.mp4", feats[v], {"kind": "video", "fps": 10.0, "duration": float(n),
                                                   "clip_start": [i + shift for i in range(n)],
                                                   "clip_end": [i + 1.0 + shift for i in range(n)]}))
    w.finalize()
    return feats


def test_join_normalises_each_part_and_keeps_common_ids(tmp_path, capsys):
    a = make_store(tmp_path / "a", 3, {"x": 2, "y": 3, "only_a": 1}, 0)
    b = make_store(tmp_path / "b", 2, {"y": 3, "x": 2}, 1)
    assert cli(["store", "join", str(tmp_path / "ab"), str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "2 inputs, 5 clips x 5 (net3+net2)" in capsys.readouterr().out
    joined = FeatureStore(str(tmp_path / "ab"))
    assert joined.ids() == ["x", "y"] and joined.dim == 5
    for v in ("x", "y"):
        expect = np.concatenate([a[v] / np.linalg.norm(a[v], axis=1, keepdims=True),
                                 b[v] / np.linalg.norm(b[v], axis=1, keepdims=True)], axis=1)
        np.testing.assert_allclose(joined.features(v), expect, rtol=1e-6)
        np.testing.assert_array_equal(joined.clip_times(v), FeatureStore(str(tmp_path / "a")).clip_times(v))
    assert [p["dim"] for p in joined.meta["joined"]] == [3, 2]


def test_join_refuses_other_clip_times(tmp_path):
    make_store(tmp_path / "a", 3, {"x": 2}, 0)
    make_store(tmp_path / "b", 2, {"x": 2}, 1, shift=0.5)
    with pytest.raises(StoreError, match="'x' has 2 clips in .* with other times"):
        join_stores(str(tmp_path / "ab"), [str(tmp_path / "a"), str(tmp_path / "b")])
    with pytest.raises(StoreError, match="at least two stores"):
        join_stores(str(tmp_path / "ab"), [str(tmp_path / "a")])


def test_a_joined_real_store_feeds_the_tokenizer(sample_store, tmp_path):
    import shutil

    from videolm.tokenize.kmeans import KMeansConfig
    from videolm.tokenize.vocab import fit_vocabulary

    other = tmp_path / "copy"
    shutil.copytree(sample_store, other)
    joined = join_stores(str(tmp_path / "joined"), [sample_store, str(other)])
    first = FeatureStore(sample_store)
    assert joined.ids() == first.ids() and joined.dim == 2 * first.dim
    vocab = fit_vocabulary(joined, KMeansConfig(k=2, depth=1, seed=0))
    assert vocab.dim == 2 * first.dim
