"""`videolm store import`: per-video .npy features written here with np.save (as
video_features and fairseq MMPT ship them), checked against the arrays and
clip times computed by hand, bad files, reruns, and what reads the store."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from videolm.cli import main as cli
from videolm.features.store import FeatureStore


@pytest.fixture
def npy_dir(tmp_path, sample_store):
    """The sample store's real MobileNetV2 clip features of its videos, one
    <id>_s3d.npy per video (float32, video_features' naming) with a sidecar."""
    src = FeatureStore(sample_store)
    d = tmp_path / "npy"
    d.mkdir()
    arrays = {}
    for v in src.ids():
        if src.entry(v)["kind"] == "video":
            arrays[v] = np.asarray(src.features(v), np.float32)
            np.save(d / f"{v}_s3d.npy", arrays[v])
    np.save(d / f"{next(iter(arrays))}_s3d_fps.npy", np.array([25.0]))   # a sidecar: not features
    return d, arrays, src


def run(*args):
    return cli(["store", "import", *map(str, args), "-q"])


def test_imported_features_and_clip_times_are_the_files(npy_dir, tmp_path, capsys):
    d, arrays, _ = npy_dir
    out = tmp_path / "store"
    assert run(out, d, "--window", 1, "--stride", 0.5, "--suffix", "_s3d", "--name", "s3d", "--dtype", "float32") == 0
    assert f"{len(arrays)} imported ({sum(len(a) for a in arrays.values())} clips), 0 failed" in capsys.readouterr().out
    store = FeatureStore(str(out))
    assert sorted(store.ids()) == sorted(arrays)
    for v, a in arrays.items():
        assert np.array_equal(np.asarray(store.features(v)), a)
        n = len(a)   # clip i: [0.5 i, 0.5 i + 1] seconds
        assert np.allclose(store.clip_times(v), np.stack([0.5 * np.arange(n), 0.5 * np.arange(n) + 1], 1))
    assert store.meta["backbone"] == "imported:s3d" and store.meta["clip_spec"]["window_s"] == 1.0
    # float16 by default: the arrays rounded as numpy rounds them
    assert run(tmp_path / "half", d, "--window", 1, "--suffix", "_s3d") == 0
    half = FeatureStore(str(tmp_path / "half"))
    v = next(iter(arrays))
    assert np.array_equal(np.asarray(half.features(v)), arrays[v].astype(np.float16))


def test_bad_files_are_rows_and_the_rest_is_imported(npy_dir, tmp_path, capsys):
    d, arrays, _ = npy_dir
    dim = next(iter(arrays.values())).shape[1]
    bad = {"cube": np.zeros((2, 3, 4), np.float32), "ints": np.ones((2, dim), np.int64),
           "nan": np.full((3, dim), np.nan, np.float32), "narrow": np.ones((2, dim - 1), np.float32),
           "empty": np.zeros((0, dim), np.float32)}
    for name, a in bad.items():
        np.save(d / f"{name}_s3d.npy", a)
    np.save(d / "objects_s3d.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    out = tmp_path / "store"
    assert run(out, d, "--window", 1, "--suffix", "_s3d") == 1
    assert f"{len(arrays)} imported" in capsys.readouterr().out
    reasons = {r["video_id"]: r["reason"] for r in map(json.loads, open(out / "errors.jsonl"))}
    assert reasons == {"cube": "an array of shape (2, 3, 4); expected (clips, dim)",
                       "ints": "dtype int64; expected floating-point features",
                       "nan": f"NaN/Inf in clip 0 (3 clip(s))", "narrow": f"dim {dim - 1}, where the store's is {dim}",
                       "empty": "no clips (shape (0, dim))",
                       "objects": "holds Python objects (a pickle); only numeric arrays are read"}
    assert sorted(FeatureStore(str(out)).ids()) == sorted(arrays)
    # a rerun does nothing, keeps the store's bytes and still exits 1 for the failed files
    before = (out / "shards" / "00000.npy").read_bytes()
    assert run(out, d, "--window", 1, "--suffix", "_s3d") == 1
    assert f"{len(arrays) + 6} already done (6 of them failed in an earlier run)" in capsys.readouterr().out
    assert (out / "shards" / "00000.npy").read_bytes() == before
    # another clip spacing into the same store: refused in one line
    assert run(out, d, "--window", 2, "--suffix", "_s3d") == 2
    assert "clip_spec.window_s" in capsys.readouterr().err


def test_usage_mistakes_are_one_line_and_write_nothing(npy_dir, tmp_path, capsys):
    d, arrays, _ = npy_dir
    other = tmp_path / "other"
    other.mkdir()
    v = next(iter(arrays))
    np.save(other / f"{v}.npy", arrays[v])
    cases = [((d, other, "--window", 1, "--suffix", "_s3d"), f"error: id {v!r} comes from two files"),
             ((tmp_path / "none", "--window", 1), f"error: {tmp_path / 'none'}: no such file or directory"),
             ((d, "--window", 0), "error: --window must be > 0 seconds, not 0.0"),
             ((d, "--window", 1, "--media", tmp_path / "nowhere"), f"error: --media {tmp_path / 'nowhere'}: no such"),
             ((tmp_path / "empty_dir", "--window", 1), "no .npy feature file in it")]
    (tmp_path / "empty_dir").mkdir()
    for args, message in cases:
        assert run(tmp_path / "s", *args) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "s").exists()


def test_what_reads_an_imported_store(npy_dir, tmp_path, capsys):
    """Visual words fit on it; with --media its gallery shows the source frames; search by
    example, which would need the network that computed the features, is refused in one line."""
    d, arrays, src = npy_dir
    media = tmp_path / "media"
    media.mkdir()
    for v in arrays:
        path = src.entry(v)["path"]
        os.symlink(os.path.abspath(path), media / os.path.basename(path))
    out = tmp_path / "store"
    assert run(out, d, "--window", 0.5, "--suffix", "_s3d", "--media", media) == 0
    store = FeatureStore(str(out))
    v = "bikes"
    assert store.entry(v)["media"] == str(media / "bikes.mp4") and store.entry(v)["fps"] == src.entry(v)["fps"]
    vocab = tmp_path / "vocab"
    assert cli(["tokenize", "fit", str(out), "-o", str(vocab), "--k", "2", "--depth", "2", "-q"]) == 0
    assert cli(["tokenize", "gallery", str(out), "--vocab", str(vocab), "-o", str(tmp_path / "w.png"),
                "--size", "32", "-q"]) == 0
    assert "could not be read" not in capsys.readouterr().out
    from videolm.eval.errors import EvalError
    from videolm.eval.search import example_features

    with pytest.raises(EvalError, match=r"its features were imported \(videolm store import\), backbone imported"):
        example_features(src.entry(v)["path"], store)


def test_export_writes_every_input_and_imports_back(sample_store, tmp_path, capsys):
    src = FeatureStore(sample_store)
    out = tmp_path / "export"
    assert cli(["store", "export", sample_store, str(out), "-q"]) == 0
    assert f"{len(src)} written, 0 already there ({src.num_clips} clips)" in capsys.readouterr().out
    rows = {r["video_id"]: r for r in map(json.loads, open(out / "clips.jsonl"))}
    assert sorted(rows) == sorted(src.ids())
    for v in src.ids():
        a = np.load(out / f"{v}.npy", allow_pickle=False)
        assert a.dtype == np.float16 and np.array_equal(a, np.asarray(src.features(v)))
        assert np.array_equal(np.stack([rows[v]["clip_start"], rows[v]["clip_end"]], 1), src.clip_times(v))
        assert rows[v]["kind"] == src.entry(v)["kind"] and rows[v]["file"] == f"{v}.npy"
    # a rerun skips what is there; another store into the same directory is refused
    before = os.stat(out / f"{src.ids()[0]}.npy").st_mtime_ns
    assert cli(["store", "export", sample_store, str(out), "-q"]) == 0
    assert f"0 written, {len(src)} already there" in capsys.readouterr().out
    assert os.stat(out / f"{src.ids()[0]}.npy").st_mtime_ns == before
    assert cli(["store", "export", sample_store, str(out), "--dtype", "float32", "-q"]) == 2
    assert f"{out}: holds an export of" in capsys.readouterr().err
    # ... and read back by import: the same features under the same ids (clips.jsonl is not an .npy)
    assert cli(["store", "import", str(tmp_path / "again"), str(out), "--window", "0.5", "-q"]) == 0
    again = FeatureStore(str(tmp_path / "again"))
    assert sorted(again.ids()) == sorted(src.ids())
    assert all(np.array_equal(np.asarray(again.features(v)), np.asarray(src.features(v))) for v in src.ids())
