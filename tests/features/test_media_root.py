"""--media-root: where the store's sources are now (hand-written paths)."""

from __future__ import annotations

import os

import pytest

from videolm.features.media_root import MediaRoot, MediaRootError


def test_dir_resolves_relative_paths_only(tmp_path):
    root = MediaRoot(str(tmp_path))
    assert root("videos/a.mp4") == os.path.join(str(tmp_path), "videos/a.mp4")
    assert root("/abs/a.mp4") == "/abs/a.mp4"
    assert MediaRoot()("videos/a.mp4") == "videos/a.mp4"


def test_old_new_replaces_a_whole_prefix(tmp_path):
    root = MediaRoot(f"/cluster/data={tmp_path}")
    assert root("/cluster/data/x/a.mp4") == os.path.join(str(tmp_path), "x/a.mp4")
    assert root("/cluster/data/") == str(tmp_path)
    assert root("/cluster/data2/a.mp4") == "/cluster/data2/a.mp4"   # not a component of /cluster/data
    assert root("/elsewhere/a.mp4") == "/elsewhere/a.mp4"
    rel = MediaRoot(f"videos={tmp_path}")                           # a relative prefix, as extraction was given
    assert rel("videos/a.mp4") == os.path.join(str(tmp_path), "a.mp4")
    assert rel("./videos/b.mp4") == os.path.join(str(tmp_path), "b.mp4")


def test_a_directory_whose_name_holds_an_equals_sign_is_a_dir(tmp_path):
    odd = tmp_path / "a=b"
    odd.mkdir()
    assert MediaRoot(str(odd))("v.mp4") == os.path.join(str(odd), "v.mp4")


@pytest.mark.parametrize("spec, message", [
    ("nowhere", "--media-root nowhere: no such directory"),
    ("/old=/no/such/dir", r"--media-root /old=/no/such/dir: NEW \(/no/such/dir\) is not a directory"),
    ("=/tmp", "--media-root =/tmp: OLD is empty"),
])
def test_bad_roots_are_one_line(spec, message):
    with pytest.raises(MediaRootError, match=f"^{message}"):
        MediaRoot(spec)
