import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from videolm.features.store import FeatureStore
from videolm.tokenize.kmeans import KMeansConfig
from videolm.tokenize.vocab import TokenizeError, TokenStore, Vocabulary, encode_store, fit_vocabulary
from videolm.tokenize.vocab import sample_store as draw_sample

SMALL = KMeansConfig(k=4, depth=2, seed=0)


@pytest.fixture(scope="module")
def vocab(sample_store, tmp_path_factory):
    v = fit_vocabulary(sample_store, SMALL)
    v.save_pretrained(str(tmp_path_factory.mktemp("vocab") / "v4x2"))
    return v


def _one_line(err) -> bool:
    return "\n" not in str(err.value) and len(str(err.value)) < 300


def test_ids_words_and_special_tokens(vocab):
    assert (vocab.num_words, vocab.vocab_size) == (16, 18)
    assert vocab.special_ids == {"[PAD]": 16, "[MASK]": 17} and (vocab.pad_id, vocab.mask_id) == (16, 17)
    assert list(vocab.is_word([-1, 0, 15, 16, 17])) == [False, True, True, False, False]
    assert vocab.path_of(13) == (3, 1)
    assert vocab.word_centroids().shape == (16, 1280) and vocab.word_centroids().dtype == np.float32


def test_save_load_round_trip_without_the_store(vocab, sample_store, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(vocab.path, moved)  # loadable from anywhere, without the store
    loaded = Vocabulary.from_pretrained(str(moved))
    store = FeatureStore(sample_store)
    feats = np.concatenate([f for _, f in store])
    a, b = vocab.encode(feats), loaded.encode(feats)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.distances, b.distances)
    assert loaded.fingerprint() == vocab.fingerprint() and loaded.config == vocab.config
    np.testing.assert_array_equal(loaded.word_centroids(), vocab.word_centroids())

    # the files, read with plain json + safetensors, say what docs/tokenizer.md says
    meta = json.loads((moved / "meta.json").read_text())
    assert (meta["k"], meta["depth"], meta["dim"], meta["num_words"]) == (4, 2, 1280, 16)
    assert meta["source"]["backbone"] == "mobilenet_v2" and meta["source"]["clips"] == 52
    assert meta["special_tokens"] == ["[PAD]", "[MASK]"] and meta["config"]["seed"] == 0
    arrays = load_file(str(moved / "centroids.safetensors"))
    assert {n: a.shape for n, a in arrays.items()} == {
        "centroids.0": (4, 1280), "centroids.1": (16, 1280), "children.0": (1,), "children.1": (4,),
        "counts.0": (4,), "counts.1": (16,)}
    assert arrays["counts.1"].sum() == 52 and arrays["children.0"][0] == 4


def test_sample_is_drawn_from_the_store_rows(sample_store):
    store = FeatureStore(sample_store)
    every = np.concatenate([f for _, f in store]).astype(np.float32)  # (52, 1280)
    s = draw_sample(store, 20, seed=3)
    assert s.features.shape == (20, 1280) and s.num_clips == 52 and s.skipped == {}
    match = (s.features[:, None, :] == every[None, :, :]).all(-1)  # (20, 52)
    assert (match.sum(1) >= 1).all()  # every sampled row is a clip of the store ...
    assert len({int(np.argmax(m)) for m in match}) == 20  # ... and no clip twice
    assert np.array_equal(draw_sample(store, 20, seed=3).features, s.features)
    assert draw_sample(store, 500).features.shape == (52, 1280)  # asks for more than there is: all


def test_encode_store_writes_ids_in_store_order_and_resumes(vocab, sample_store, tmp_path, descend):
    store_copy = str(tmp_path / "store")
    shutil.copytree(sample_store, store_copy)
    result = encode_store(store_copy, vocab.path)
    assert result.out == os.path.join(store_copy, "tokens", "v4x2")
    assert (result.shards_encoded, result.shards_skipped, result.clips) == (2, 0, 52)
    store, tokens = FeatureStore(store_copy), TokenStore(result.out)
    assert tokens.ids() == store.ids()
    for video_id, feats in store:
        ids, dist = descend(feats, vocab.tree.centroids, vocab.tree.children, 4)
        assert tokens.tokens(video_id).dtype == np.int32
        assert np.array_equal(tokens.tokens(video_id), ids), video_id
        np.testing.assert_allclose(tokens.distances(video_id), dist, rtol=1e-3, atol=1e-2)
    assert tokens.meta["vocab_fingerprint"] == vocab.fingerprint() and tokens.meta["special_ids"]["[MASK]"] == 17

    # a killed run: one shard missing, a temp file left; the rerun redoes only that shard
    shard1 = os.path.join(result.out, "shards", "00001.npy")
    before = Path(shard1).read_bytes()
    os.remove(shard1)
    Path(os.path.join(result.out, "shards", "00001.npy.tmp-99.npy")).write_bytes(b"half")
    again = encode_store(store_copy, vocab.path)
    in_shard1 = len(np.load(os.path.join(store_copy, "shards", "00001.npy"), mmap_mode="r"))
    assert (again.shards_encoded, again.shards_skipped, again.clips) == (1, 1, in_shard1)
    assert Path(shard1).read_bytes() == before
    assert sorted(os.listdir(os.path.join(result.out, "shards"))) == [   # .source.json: the feature shard it read
        "00000.dist.npy", "00000.npy", "00000.source.json", "00001.dist.npy", "00001.npy", "00001.source.json"]

    other = fit_vocabulary(store_copy, KMeansConfig(k=3, depth=2))
    with pytest.raises(TokenizeError, match="tokens of another vocabulary") as err:
        encode_store(store_copy, other, out=result.out)
    assert _one_line(err)


# ------------------------------------------------------------------ bad inputs


def test_nan_features_are_skipped_with_a_warning_or_refused(nan_store, caplog):
    with caplog.at_level(logging.WARNING, logger="videolm"):
        v = fit_vocabulary(nan_store, SMALL)
    assert v.sample == {"points": 50, "skipped_nonfinite": 2, "videos_with_nonfinite": 2}
    assert any("'bikes'" in r.getMessage() for r in caplog.records)
    with pytest.raises(TokenizeError, match=r"video 'bikes' has NaN/Inf features in clip 2") as err:
        fit_vocabulary(nan_store, SMALL, strict=True)
    assert _one_line(err)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="videolm"):
        result = encode_store(nan_store, v, out=os.path.join(nan_store, "tokens", "x"))
    assert result.nonfinite == {"bikes": 1, "photos/coffee": 1}
    assert {"'bikes'" in r.getMessage() or "'photos/coffee'" in r.getMessage() for r in caplog.records} == {True}
    tokens = TokenStore(result.out)
    assert tokens.tokens("bikes")[2] == -1 and np.isnan(tokens.distances("bikes")[2])
    assert (np.delete(tokens.tokens("bikes"), 2) >= 0).all()
    with pytest.raises(TokenizeError, match=r"video 'bikes' has NaN/Inf features in clip 2 \(1 of 20 clips\)") as err:
        encode_store(nan_store, v, out=os.path.join(nan_store, "tokens", "strict"), strict=True)
    assert _one_line(err)
    assert not os.path.exists(os.path.join(nan_store, "tokens", "strict", "shards", "00000.npy"))


def test_store_of_another_dim_or_backbone_is_refused(vocab, sample_store, store_writer, tmp_path):
    rng = np.random.default_rng(0)
    small = store_writer(tmp_path / "dim16", {"a": rng.standard_normal((5, 16)), "b": rng.standard_normal((4, 16))})
    with pytest.raises(TokenizeError, match=r"features are 16-dim \(synthetic\) but .*v4x2 was fit on 1280-dim") as err:
        encode_store(small, vocab.path)
    assert _one_line(err)
    other = tmp_path / "resnet"
    shutil.copytree(sample_store, other)
    meta = json.loads((other / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps(dict(meta, backbone="resnet50")))
    with pytest.raises(TokenizeError, match=r"backbone 'resnet50' but .* fit on 'mobilenet_v2'") as err:
        encode_store(str(other), vocab.path)
    assert _one_line(err)


def test_too_few_points_empty_store_missing_vocabulary(sample_store, store_writer, tmp_path):
    with pytest.raises(TokenizeError, match=r"52 usable clip\(s\), need at least k=60") as err:
        fit_vocabulary(sample_store, KMeansConfig(k=60, depth=1))
    assert _one_line(err)
    empty = store_writer(tmp_path / "empty", {})
    for call in (lambda: fit_vocabulary(empty, SMALL), lambda: encode_store(empty, fit_vocabulary(sample_store, SMALL),
                                                                             out=str(tmp_path / "t"))):
        with pytest.raises(TokenizeError, match="the store has no clips") as err:
            call()
        assert _one_line(err)
    with pytest.raises(TokenizeError, match="no such feature store"):
        fit_vocabulary(str(tmp_path / "nowhere"), SMALL)

    with pytest.raises(TokenizeError, match="no such vocabulary directory"):
        Vocabulary.from_pretrained(str(tmp_path / "nope"))
    v = fit_vocabulary(sample_store, SMALL)
    v.save_pretrained(str(tmp_path / "v"))
    with pytest.raises(TokenizeError, match="already exists"):
        v.save_pretrained(str(tmp_path / "v"))
    os.remove(tmp_path / "v" / "centroids.safetensors")
    with pytest.raises(TokenizeError, match=r"v/centroids.safetensors: missing") as err:
        Vocabulary.from_pretrained(str(tmp_path / "v"))
    assert _one_line(err)
    (tmp_path / "v" / "centroids.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(TokenizeError, match="centroids.safetensors: cannot read") as err:
        Vocabulary.from_pretrained(str(tmp_path / "v"))
    assert _one_line(err)
    os.remove(tmp_path / "v" / "meta.json")
    with pytest.raises(TokenizeError, match="not a visual vocabulary"):
        Vocabulary.from_pretrained(str(tmp_path / "v"))
