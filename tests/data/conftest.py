"""Tiny hand-built stores (exact clip times), a tiny visual vocabulary over
them, the real MiniLM WordPiece tokenizer, and a real store of the sample
media under the demo's ids (for the shipped sample manifests)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from videolm.features.store import Finished, StoreWriter


@pytest.fixture(scope="session")
def tokenizer(minilm):
    """The real MiniLM WordPiece tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm)


def make_store(root, videos: dict[str, list[tuple[float, float]] | None], dim: int = 8, dtype: str = "float16",
               seed: int = 0, backbone: str = "synthetic") -> str:
    """A store whose video ``v`` has one clip per (start, end) in ``videos[v]``;
    ``None`` makes an image (one clip at [0, 0]). Features: seeded normal."""
    rng = np.random.default_rng(seed)
    meta = {"backbone": backbone, "weights": "none", "dim": dim, "dtype": dtype,
            "clip_spec": {"window_s": 1.0, "frames": 2}, "videolm_version": "test"}
    w = StoreWriter(str(root), meta, videos_per_shard=2)
    w.plan(list(videos))
    for video_id, times in videos.items():
        kind = "image" if times is None else "video"
        times = [(0.0, 0.0)] if times is None else times
        row = {"kind": kind, "fps": 0.0 if kind == "image" else 10.0, "num_frames": 1,
               "duration": max(e for _, e in times), "clip_start": [float(s) for s, _ in times],
               "clip_end": [float(e) for _, e in times]}
        feats = rng.normal(size=(len(times), dim)).astype(np.float32)
        w.add(Finished(video_id, f"/media/{video_id}", feats, row))
    w.finalize()
    return str(root)


def write_jsonl(path, rows) -> str:
    """Rows are dicts (written as JSON) or raw strings (written as they are)."""
    with open(path, "w") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


def tiles(n: int, window: float = 1.5) -> list[tuple[float, float]]:
    return [(i * window, (i + 1) * window) for i in range(n)]


# Four videos and two images; clips tile 1.5 s windows except "gappy".
VIDEOS = {"v_long": tiles(8), "v_short": tiles(2), "v_three": tiles(3),
          "gappy": [(0.0, 1.0), (2.0, 3.0), (5.0, 6.0)], "img_a": None, "img_b": None}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """{store, vocab, tokens}: the VIDEOS store, a 2x2 vocabulary fit on it, its tokens."""
    from videolm.tokenize.kmeans import KMeansConfig
    from videolm.tokenize.vocab import encode_store, fit_vocabulary

    root = tmp_path_factory.mktemp("data")
    store = make_store(root / "store", VIDEOS)
    vocab = fit_vocabulary(store, KMeansConfig(k=2, depth=2, iterations=5, seedings=1, seed=0))
    vocab.save_pretrained(str(root / "vocab"))
    tokens = encode_store(store, vocab).out
    return {"store": store, "vocab": str(root / "vocab"), "tokens": tokens, "root": root}


@pytest.fixture
def store_maker():
    return make_store


@pytest.fixture
def jsonl():
    return write_jsonl
