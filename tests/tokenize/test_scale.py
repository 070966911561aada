"""The tokenizer at scale: sampling shard by shard, fitting on that sample,
encoding shard by shard, and the tokens' memory-mapped index (and the
format-1 index.jsonl it replaced). Small stores; the memory figures are in
benchmarks/tokenize_scale.py."""

import glob
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.tokenize.conftest import write_store
from videolm.features.store import FeatureStore
from videolm.tokenize.kmeans import HierarchicalKMeans, KMeansConfig
from videolm.tokenize.vocab import TokenStore, encode_store, fit_vocabulary, sample_store, store_shards


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """23 videos of 1-12 clips (161 in all), 8-dim float16, 3 videos per shard (8 shards)."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(6, 8)) * 3
    videos = {}
    for i in range(23):
        n = int(rng.integers(1, 13))
        videos[f"vidéo-{i:02d}"] = (centres[rng.integers(6, size=n)] + rng.normal(size=(n, 8))).astype(np.float16)
    return write_store(tmp_path_factory.mktemp("scale") / "store", videos, dtype="float16", videos_per_shard=3)


def shard_files(root) -> list[np.ndarray]:
    """Every shard read whole with plain numpy, in name order."""
    return [np.load(p) for p in sorted(glob.glob(os.path.join(root, "shards", "*.npy")))]


def test_fit_from_the_store_equals_an_in_memory_fit_on_the_same_sample(store):
    every = np.concatenate(shard_files(store)).astype(np.float32)  # (161, 8), clip r = row r of the shards in order
    config = KMeansConfig(k=3, depth=3, sample_size=60, seed=7)
    sample = sample_store(FeatureStore(store), config.sample_size, config.seed)
    assert len(sample.rows) == 60 and len(np.unique(sample.rows)) == 60 and sample.num_clips == len(every) == 161
    assert np.array_equal(sample.features, every[sample.rows])  # the rows it says, read right

    ours = fit_vocabulary(store, config).tree
    reference = HierarchicalKMeans.fit(every[sample.rows], config)
    for name, array in reference.state_dict().items():
        assert np.array_equal(ours.state_dict()[name], array), name
    assert np.array_equal(ours.encode(every).ids, reference.encode(every).ids)


def test_the_sample_is_uniform_and_without_replacement(store):
    fs = FeatureStore(store)
    total, size, draws = fs.num_clips, 15, 1500
    counts = np.zeros(total, np.int64)
    pair = 0  # draws holding both clip 0 (the first shard) and the last clip (the last shard)
    for seed in range(draws):
        rows = sample_store(fs, size, seed).rows
        assert len(np.unique(rows)) == size and rows.min() >= 0 and rows.max() < total
        counts[rows] += 1
        pair += rows[0] == 0 and rows[-1] == total - 1
    expected = draws * size / total  # 140 per clip
    spread = np.sqrt(draws * size / total * (1 - size / total))  # binomial sd, ~11.3
    assert np.abs(counts - expected).max() < 4.5 * spread
    both = draws * size * (size - 1) / (total * (total - 1))  # ~12.2 draws
    assert abs(pair - both) < 4.5 * np.sqrt(both)
    assert np.array_equal(sample_store(fs, 15, 3).rows, sample_store(fs, 15, 3).rows)
    assert np.array_equal(sample_store(fs, 10**6, 0).rows, np.arange(total))  # more than there is: all, in order


def test_a_shard_file_outside_the_index_is_left_out(store, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    first = np.load(copy / "shards" / "00000.npy")
    np.save(copy / "shards" / "00099.npy", np.full_like(first, np.nan))  # as if a killed writer left it
    fs, clean = FeatureStore(str(copy)), FeatureStore(store)
    assert [s.name for s in store_shards(fs)] == [s.name for s in store_shards(clean)]
    a, b = sample_store(fs, 40, 2), sample_store(clean, 40, 2)
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.features, b.features) and a.skipped == {}


def test_encoding_shard_by_shard_equals_encoding_everything_at_once(store, tmp_path):
    vocab = fit_vocabulary(store, KMeansConfig(k=3, depth=2, seed=1))
    vocab.save_pretrained(str(tmp_path / "vocab"))
    out = encode_store(store, vocab, out=str(tmp_path / "tokens"), batch_size=5).out
    fs, tokens = FeatureStore(store), TokenStore(out)
    whole = vocab.encode(np.concatenate([np.asarray(fs.features(v), np.float32) for v in fs.ids()]))
    assert np.array_equal(np.concatenate([tokens.tokens(v) for v in fs.ids()]), whole.ids)
    assert np.array_equal(np.concatenate([tokens.distances(v) for v in fs.ids()]), whole.distances)


def test_the_token_index_is_memory_mapped_and_format_1_still_reads(store, tmp_path):
    vocab = fit_vocabulary(store, KMeansConfig(k=3, depth=2, seed=1))
    vocab.save_pretrained(str(tmp_path / "vocab"))
    out = encode_store(store, vocab, out=str(tmp_path / "tokens")).out
    fs = FeatureStore(store)
    tokens = TokenStore(out)
    assert isinstance(tokens._index, np.memmap) and len(tokens) == len(fs) == 23 and tokens.ids() == fs.ids()
    expected = {v: np.load(os.path.join(out, fs.entry(v)["shard"]))[fs.entry(v)["offset"]:][: fs.entry(v)["num_clips"]]
                for v in fs.ids()}
    for v in fs.ids():
        assert v in tokens and np.array_equal(tokens.tokens(v), expected[v])
        assert {k: tokens.entry(v)[k] for k in ("shard", "offset", "num_clips")} == {
            k: fs.entry(v)[k] for k in ("shard", "offset", "num_clips")}
    assert "vidéo-99" not in tokens
    with pytest.raises(KeyError, match="vidéo-99"):
        tokens.tokens("vidéo-99")

    # the layout before: index.jsonl, one JSON row per video, written here by hand
    os.remove(os.path.join(out, "index.npy"))
    os.remove(os.path.join(out, "index_shards.npy"))
    with open(os.path.join(out, "index.jsonl"), "w") as f:
        for v in fs.ids():
            e = fs.entry(v)
            f.write(json.dumps({"video_id": v, "shard": e["shard"], "offset": e["offset"],
                                "num_clips": e["num_clips"]}) + "\n")
    meta = json.loads(Path(os.path.join(out, "meta.json")).read_text())
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(dict(meta, format_version=1), f)
    old = TokenStore(out)
    assert old.ids() == fs.ids() and len(old) == 23
    assert all(np.array_equal(old.tokens(v), expected[v]) for v in fs.ids())
    assert [r["num_clips"] for r in old.rows] == [fs.entry(v)["num_clips"] for v in fs.ids()]

    again = encode_store(store, vocab, out=out)  # rewrites the index in format 2, token files kept
    assert (again.shards_encoded, again.shards_skipped) == (0, 8)
    assert not os.path.exists(os.path.join(out, "index.jsonl"))
    assert json.loads(Path(os.path.join(out, "meta.json")).read_text())["format_version"] == 2
    new = TokenStore(out)
    assert new.ids() == fs.ids() and all(np.array_equal(new.tokens(v), expected[v]) for v in fs.ids())
