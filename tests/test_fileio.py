"""videolm.fileio: a failed atomic write leaves the old file and no temporary."""

from __future__ import annotations

import os

import numpy as np
import pytest

from videolm import fileio


class NoArray:
    def __array__(self, *args, **kwargs):
        raise TypeError("no array here")


@pytest.mark.parametrize("write", [
    lambda p: fileio.atomic_write_bytes(p, "text, not bytes"),   # fails inside the write
    lambda p: fileio.atomic_write_json(p, {"x": object()}),      # fails before the file opens
    lambda p: fileio.atomic_save_npy(p, NoArray()),              # fails after the temporary is open
    lambda p: fileio.atomic_save_npz(p, a=NoArray()),
])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, write):
    path = tmp_path / "f.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        write(str(path))
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.json"]


def test_a_failed_streamed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "clips.jsonl"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with fileio.atomic_writer(str(path)) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["clips.jsonl"]
