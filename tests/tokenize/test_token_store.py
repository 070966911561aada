import os

import numpy as np
import pytest

from tests.tokenize.conftest import write_store
from videolm.tokenize.kmeans import KMeansConfig
from videolm.tokenize.vocab import TokenStore, encode_store, fit_vocabulary


def test_token_store_keeps_a_bounded_number_of_files_open(tmp_path):
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc")
    rng = np.random.default_rng(0)
    videos = {f"v{i}": rng.normal(size=(3, 4)).astype(np.float32) for i in range(10)}
    store = write_store(tmp_path / "store", videos, videos_per_shard=1)  # 10 shards
    vocab = fit_vocabulary(store, KMeansConfig(k=2, depth=1, seed=0))
    vocab.save_pretrained(str(tmp_path / "vocab"))
    out = encode_store(store, vocab).out
    before = len(os.listdir("/proc/self/fd"))
    tokens = TokenStore(out, max_open_files=3)
    for _ in range(2):
        for i, v in enumerate(videos):  # against the files read directly
            assert np.array_equal(tokens.tokens(v), np.load(os.path.join(out, "shards", f"{i:05d}.npy")))
            assert np.array_equal(tokens.distances(v), np.load(os.path.join(out, "shards", f"{i:05d}.dist.npy")))
    assert len(os.listdir("/proc/self/fd")) - before <= 3 + 1  # the token files, and index.npy
