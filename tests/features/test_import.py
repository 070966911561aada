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
    assert cli(["store", "info", str(out)]) == 0
    assert "clip       1.0 s window, stride 0.5 s, frames and size not recorded (imported features)\n" in \
        capsys.readouterr().out
    # float16 by default: the arrays rounded as numpy rounds them
    assert run(tmp_path / "half", d, "--window", 1, "--suffix", "_s3d") == 0
    half = FeatureStore(str(tmp_path / "half"))
    v = next(iter(arrays))
    assert np.array_equal(np.asarray(half.features(v)), arrays[v].astype(np.float16))


def test_bad_files_are_rows_and_the_rest_is_imported(npy_dir, tmp_path, capsys):
    d, arrays, _ = npy_dir
    dim = next(iter(arrays.values())).shape[1]
    # "a_narrow" sorts first: the store's dim is what most files hold, not the first file's
    bad = {"cube": np.zeros((2, 3, 4), np.float32), "ints": np.ones((2, dim), np.int64),
           "nan": np.full((3, dim), np.nan, np.float32), "a_narrow": np.ones((2, dim - 1), np.float32),
           "empty": np.zeros((0, dim), np.float32), "huge": np.full((1, dim), 1e5, np.float32)}
    for name, a in bad.items():
        np.save(d / f"{name}_s3d.npy", a)
    np.save(d / "objects_s3d.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (d / "text_s3d.npy").write_text("0.1 0.2 0.3\n")
    out = tmp_path / "store"
    assert run(out, d, "--window", 1, "--suffix", "_s3d") == 1
    assert f"{len(arrays)} imported" in capsys.readouterr().out
    reasons = {r["video_id"]: r["reason"] for r in map(json.loads, open(out / "errors.jsonl"))}
    assert reasons == {"cube": "an array of shape (2, 3, 4); expected (clips, dim)",
                       "ints": "dtype int64; expected floating-point features",
                       "nan": f"NaN/Inf in clip 0 (3 clip(s))", "a_narrow": f"dim {dim - 1}, where the store's is {dim}",
                       "empty": "no clips (shape (0, dim))",
                       "huge": "a value of magnitude 1e+05 does not fit float16 (at most 65504); "
                               "import with --dtype float32",
                       "objects": "holds Python objects (a pickle); only numeric arrays are read",
                       "text": "not a numpy .npy file (no .npy header)"}
    assert sorted(FeatureStore(str(out)).ids()) == sorted(arrays)
    # a rerun does nothing, keeps the store's bytes and still exits 1 for the failed files
    before = (out / "shards" / "00000.npy").read_bytes()
    assert run(out, d, "--window", 1, "--suffix", "_s3d") == 1
    assert (f"{len(arrays) + 8} already done (8 of them failed in an earlier run; --retry-failed reads them again)"
            in capsys.readouterr().out)
    assert (out / "shards" / "00000.npy").read_bytes() == before
    # one file put right: --retry-failed reads the failed ones again and stores it; the rest stay rows
    fixed = np.linspace(-1, 1, 3 * dim, dtype=np.float32).reshape(3, dim)
    np.save(d / "a_narrow_s3d.npy", fixed)
    assert run(out, d, "--window", 1, "--suffix", "_s3d", "--retry-failed") == 1
    assert "1 imported (3 clips), 7 failed" in capsys.readouterr().out
    store = FeatureStore(str(out))
    assert np.array_equal(np.asarray(store.features("a_narrow")), fixed.astype(np.float16))
    assert all(np.array_equal(np.asarray(store.features(v)), a.astype(np.float16)) for v, a in arrays.items())
    # another clip spacing into the same store: refused in one line
    assert run(out, d, "--window", 2, "--suffix", "_s3d") == 2
    assert "clip_spec.window_s" in capsys.readouterr().err


def test_what_a_directory_holds_besides_the_features(npy_dir, tmp_path, capsys):
    """A store written under its own input (or any store below one) is not read
    back as features; --suffix picks files by name; features of two dims in
    one directory are refused naming both; a file given twice counts once."""
    d, arrays, _ = npy_dir
    dim = next(iter(arrays.values())).shape[1]
    for v in arrays:   # motion features beside the appearance ones, of another dim
        np.save(d / f"{v}_flow.npy", np.ones((2, 7), np.float32))
    inside = d / "store"
    for _ in range(2):   # the rerun must not find the store's own shards
        assert run(inside, d, "--window", 1, "--suffix", "_s3d") == 0
    assert f"0 imported (0 clips), 0 failed, {len(arrays)} already done" in capsys.readouterr().out
    assert sorted(FeatureStore(str(inside)).ids()) == sorted(arrays)
    assert not (inside / "errors.jsonl").exists() or (inside / "errors.jsonl").read_text() == ""
    # no --suffix: appearance and motion files together, half and half: refused in one line
    assert run(tmp_path / "mixed", d, "--window", 1) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the files hold features of different dims: ") and len(err.splitlines()) == 1
    assert f"{dim} (" in err and "7 (" in err and not (tmp_path / "mixed").exists()
    # --suffix _flow: only the motion files (the store under d is skipped too)
    assert run(tmp_path / "flow", d, "--window", 1, "--suffix", "_flow", "--dtype", "float32") == 0
    flow = FeatureStore(str(tmp_path / "flow"))
    assert sorted(flow.ids()) == sorted(arrays) and flow.dim == 7
    # a file and the directory that holds it: one input, not an id from two files, whatever the order
    v = next(iter(arrays))
    assert run(tmp_path / "twice", d / f"{v}_s3d.npy", d, "--window", 1, "--suffix", "_s3d") == 0
    assert sorted(FeatureStore(str(tmp_path / "twice")).ids()) == sorted(arrays)
    (d / "sub").mkdir()
    np.save(d / "sub" / "nested_s3d.npy", arrays[v])
    assert run(tmp_path / "nested", d, d / "sub" / "nested_s3d.npy", "--window", 1, "--suffix", "_s3d") == 0
    assert sorted(FeatureStore(str(tmp_path / "nested")).ids()) == sorted([*arrays, "sub/nested"])
    # a store given as an input: one line
    assert run(tmp_path / "again", inside, "--window", 1) == 2
    assert "a videolm feature store, not .npy features" in capsys.readouterr().err


def test_usage_mistakes_are_one_line_and_write_nothing(npy_dir, tmp_path, capsys):
    d, arrays, _ = npy_dir
    other = tmp_path / "other"
    other.mkdir()
    v = next(iter(arrays))
    np.save(other / f"{v}_s3d.npy", arrays[v])
    cases = [((d, other, "--window", 1, "--suffix", "_s3d"), f"error: id {v!r} comes from two files"),
             ((tmp_path / "none", "--window", 1), f"error: {tmp_path / 'none'}: no such file or directory"),
             ((d, "--window", 0), "error: --window must be a finite number of seconds > 0, not 0.0"),
             ((d, "--window", "inf"), "error: --window must be a finite number of seconds > 0, not inf"),
             ((d, "--window", 1, "--stride", "nan"), "error: --stride must be a finite number of seconds > 0, not nan"),
             ((d, "--window", 1, "--media", tmp_path / "nowhere"), f"error: --media {tmp_path / 'nowhere'}: no such"),
             ((tmp_path / "empty_dir", "--window", 1), "no .npy feature file in it")]
    (tmp_path / "empty_dir").mkdir()
    for args, message in cases:
        assert run(tmp_path / "s", *args) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "s").exists()
    # into a file, or below one: one line each
    (tmp_path / "a_file").write_text("")
    for out, message in ((tmp_path / "a_file", "exists and is not a directory"),
                         (tmp_path / "a_file" / "s", "cannot write the store")):
        assert run(out, d, "--window", 1, "--suffix", "_s3d") == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {out}: {message}") and len(err.splitlines()) == 1, err


def test_what_reads_an_imported_store(npy_dir, tmp_path, capsys):
    """Visual words fit on it; with --media its gallery shows the source frames, found by
    id below the folder in any extension case, photos too; without it the pictures say so
    and --media-root finds them; search by example, which would need the network that
    computed the features, is refused in one line."""
    from PIL import Image

    from videolm.eval.sheet import _frame_or_missing, middle_frame_of
    from videolm.features.media_root import MediaRoot
    from videolm.samples import skimage_photo
    from videolm.video.decode import load_image

    d, arrays, src = npy_dir
    media = tmp_path / "media"
    (media / "clips").mkdir(parents=True)
    for v in arrays:   # as YouCook2 keeps them: in folders, while the features are flat
        stem, ext = os.path.splitext(os.path.basename(src.entry(v)["path"]))
        os.symlink(os.path.abspath(src.entry(v)["path"]), media / "clips" / (stem + ext.upper()))
    dim = next(iter(arrays.values())).shape[1]
    np.save(d / "still_s3d.npy", np.ones(dim, np.float32))   # a still's one vector, and its photo
    Image.open(skimage_photo("astronaut")).convert("RGB").save(media / "still.JPG")
    out = tmp_path / "store"
    assert run(out, d, "--window", 0.5, "--suffix", "_s3d", "--media", media) == 0
    assert f"--media {media}: a source for {len(arrays) + 1} of the {len(arrays) + 1} files read now\n" in \
        capsys.readouterr().out
    store = FeatureStore(str(out))
    v = "bikes"
    assert store.entry(v)["media"] == str(media / "clips" / "bikes.MP4")
    # a rerun reads nothing, so it records no source: it says so rather than count the folder's files
    assert run(out, d, "--window", 0.5, "--suffix", "_s3d", "--media", media) == 0
    assert (f"a source for 0 of the 0 files read now; the {len(arrays) + 1} already done keep what their import "
            f"recorded") in capsys.readouterr().out
    assert np.array_equal(middle_frame_of(store, "still", 32), load_image(str(media / "still.JPG"), 32, 32)[0])
    vocab = tmp_path / "vocab"
    assert cli(["tokenize", "fit", str(out), "-o", str(vocab), "--k", "2", "--depth", "2", "-q"]) == 0
    gallery = ["tokenize", "gallery", "--vocab", str(vocab), "-o", str(tmp_path / "w.png"), "--size", "32", "-q"]
    assert cli(gallery[:2] + [str(out)] + gallery[2:]) == 0
    assert "could not be read" not in capsys.readouterr().out
    np.save(tmp_path / "unseen.npy", np.ones(dim, np.float32))   # no source below the folder
    assert run(tmp_path / "two", tmp_path / "unseen.npy", d / "bikes_s3d.npy", "--window", 1, "--suffix", "_s3d",
               "--media", media) == 0
    assert (f"--media {media}: a source for 1 of the 2 files read now (the others' pictures are grey tiles)"
            in capsys.readouterr().out)
    # imported without --media: no source, and the .npy is never decoded as a video
    bare = tmp_path / "bare"
    assert run(bare, d, "--window", 0.5, "--suffix", "_s3d") == 0
    assert cli(gallery[:2] + [str(bare)] + gallery[2:]) == 1
    shown = capsys.readouterr().out
    assert "(imported without --media)" in shown and "--media-root DIR finds DIR/<id>.<ext>" in shown
    bare_store, missing = FeatureStore(str(bare)), []
    assert _frame_or_missing(bare_store, v, 32, None, None, missing) is None
    assert missing == [f"{v} (imported without --media)"]
    assert "--media-root DIR finds DIR/<id>.<ext>" in MediaRoot().hint(missing)
    found = _frame_or_missing(bare_store, v, 32, MediaRoot(str(media)), None, [])
    assert np.array_equal(found, middle_frame_of(store, v, 32))
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
    (tmp_path / "a_file").write_text("")
    for bad, says in ((tmp_path / "a_file", "exists and is not a directory"),
                      (tmp_path / "a_file" / "x", "cannot write the export")):
        assert cli(["store", "export", sample_store, str(bad), "-q"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {bad}: {says}") and len(err.splitlines()) == 1, err
    # ... and read back by import, the clip spacing, kinds and clip times from the export's own files:
    # the same features, stills and clips under the same ids
    assert cli(["store", "import", str(tmp_path / "again"), str(out), "-q"]) == 0
    again = FeatureStore(str(tmp_path / "again"))
    assert sorted(again.ids()) == sorted(src.ids()) and any(src.is_image(v) for v in src.ids())
    for v in src.ids():
        assert np.array_equal(np.asarray(again.features(v)), np.asarray(src.features(v)))
        assert again.is_image(v) == src.is_image(v) and np.array_equal(again.clip_times(v), src.clip_times(v))
    spec = src.meta["clip_spec"]
    assert again.meta["clip_spec"]["window_s"] == spec["window_s"]
    # another spacing than the export's is refused; a clips.jsonl row that does not fit its file fails that file
    assert cli(["store", "import", str(tmp_path / "other"), str(out), "--window", str(spec["window_s"] * 3), "-q"]) == 2
    assert "leave --window and --stride out" in capsys.readouterr().err
    # --stride alone, or plain files beside the export: refused, as their spacing would be the export's
    assert cli(["store", "import", str(tmp_path / "other"), str(out), "--stride", "0.01", "-q"]) == 2
    assert "leave --window and --stride out" in capsys.readouterr().err
    plain = tmp_path / "plain_dir"
    plain.mkdir()
    np.save(plain / "z.npy", np.ones((2, src.dim), np.float32))
    assert cli(["store", "import", str(tmp_path / "mixed"), str(out), str(plain), "-q"]) == 2
    assert f"{plain}: not an export; import an export on its own" in capsys.readouterr().err
    rows = [json.loads(line) for line in open(out / "clips.jsonl")]
    video = next(r for r in rows if r["kind"] == "video")
    video.update(num_clips=video["num_clips"] + 1, clip_start=video["clip_start"] + [0.0],
                 clip_end=video["clip_end"] + [0.0])
    (out / "clips.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli(["store", "import", str(tmp_path / "tampered"), str(out), "-q"]) == 1
    reasons = {r["video_id"]: r["reason"] for r in map(json.loads, open(tmp_path / "tampered" / "errors.jsonl"))}
    n = len(src.features(video["video_id"]))
    assert reasons == {video["video_id"]: f"clips.jsonl lists {n + 1} clip(s) for it; the file holds {n}"}
    (out / "clips.jsonl").write_text("{not json\n")
    assert cli(["store", "import", str(tmp_path / "broken"), str(out), "-q"]) == 2
    assert f"{out / 'clips.jsonl'}:1: not a clips.jsonl row" in capsys.readouterr().err
    for bad_row, says in (('{"video_id": "a", "file": 5, "kind": "video", "num_clips": 1, "clip_start": [0], '
                           '"clip_end": [1]}', "file must be a .npy path, not 5"),
                          ('{"video_id": "a", "file": "a.npy", "kind": "video", "num_clips": 2, "clip_start": [0, '
                           'null], "clip_end": [1, 2]}', "clip_start must be 2 finite numbers of seconds"),
                          ('{"video_id": "\xff"}', "not a clips.jsonl row")):
        (out / "clips.jsonl").write_bytes(bad_row.encode("latin-1") + b"\n")
        assert cli(["store", "import", str(tmp_path / "broken"), str(out), "-q"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {out / 'clips.jsonl'}:1: not a clips.jsonl row") and says in err, err
        assert len(err.splitlines()) == 1 and not (tmp_path / "broken").exists()
    # plain .npy files still need the spacing
    assert cli(["store", "import", str(tmp_path / "plain"), str(out / f"{video['video_id']}.npy"), "-q"]) == 2
    assert "--window is needed" in capsys.readouterr().err


def test_a_killed_import_resumes_and_loses_nothing(npy_dir, tmp_path, monkeypatch, capsys):
    """Interrupted at the third file (as Ctrl-C would), with two files a shard:
    a rerun finds the first two stored, stores the rest, and the store is
    every file's array."""
    from videolm.features import importer

    d, arrays, _ = npy_dir
    real, calls = importer.read_features, []

    def interrupted(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(importer, "read_features", interrupted)
    out = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        importer.import_features([str(d)], str(out), 1.0, suffix="_s3d", dtype="float32", videos_per_shard=2)
    monkeypatch.setattr(importer, "read_features", real)
    result = importer.import_features([str(d)], str(out), 1.0, suffix="_s3d", dtype="float32", videos_per_shard=2)
    assert (result.skipped, result.ok, result.failed) == (2, len(arrays) - 2, 0)   # the 2 were stored
    store = FeatureStore(str(out))
    assert sorted(store.ids()) == sorted(arrays)
    assert all(np.array_equal(np.asarray(store.features(v)), a) for v, a in arrays.items())


def test_an_export_keeps_ids_named_like_sidecars(npy_dir, tmp_path, capsys):
    """video_features' sidecar names are skipped in a plain folder, never in an
    export, which holds nothing but features: every id comes back."""
    d, arrays, _ = npy_dir
    v = next(iter(arrays))
    np.save(tmp_path / "run_fps.npy", arrays[v])   # given as a file: read, whatever its name
    assert run(tmp_path / "s", d / f"{v}_s3d.npy", tmp_path / "run_fps.npy", "--window", 1, "--suffix", "_s3d") == 0
    assert sorted(FeatureStore(str(tmp_path / "s")).ids()) == sorted([v, "run_fps"])
    assert cli(["store", "export", str(tmp_path / "s"), str(tmp_path / "exp"), "-q"]) == 0
    assert run(tmp_path / "back", tmp_path / "exp") == 0
    assert sorted(FeatureStore(str(tmp_path / "back")).ids()) == sorted([v, "run_fps"])


def test_video_features_timestamps_give_the_clip_times(tmp_path, capsys):
    """video_features' frame-wise extractors (CLIP, ResNet) stamp each
    frame's own time, its I3D (_rgb / _flow) the last frame of each stack:
    the clips start, or end, at those times (milliseconds, as its
    cv2 CAP_PROP_POS_MSEC gives them), each --window long."""
    d = tmp_path / "vf"
    d.mkdir()
    rng = np.random.default_rng(0)
    frames_ms = np.array([0.0, 40.0, 80.0, 120.0, 200.0])   # a dropped frame: not every 40 ms
    np.save(d / "a_CLIP-ViT-B-32.npy", rng.standard_normal((5, 6)).astype(np.float32))
    np.save(d / "a_fps.npy", np.array(25.0))
    np.save(d / "a_timestamps_ms.npy", frames_ms)
    np.save(d / "b_CLIP-ViT-B-32.npy", rng.standard_normal((3, 6)).astype(np.float32))
    np.save(d / "b_timestamps_ms.npy", np.array([0.0, 40.0]))   # one short: b fails, naming its sidecar
    np.save(d / "c_CLIP-ViT-B-32.npy", rng.standard_normal((2, 6)).astype(np.float32))   # no sidecar
    out = tmp_path / "clip"
    assert run(out, d, "--window", 0.04, "--suffix", "_CLIP-ViT-B-32") == 1
    store = FeatureStore(str(out))
    assert sorted(store.ids()) == ["a", "c"]
    assert np.allclose(store.clip_times("a"), np.stack([frames_ms / 1000, frames_ms / 1000 + 0.04], 1))
    assert np.allclose(store.clip_times("c"), [[0.0, 0.04], [0.04, 0.08]])   # the spacing, as before
    assert cli(["store", "info", str(out)]) == 0
    assert "clip times from video_features' _timestamps_ms.npy" in capsys.readouterr().out
    row = json.loads((out / "errors.jsonl").read_text().splitlines()[0])
    assert row["video_id"] == "b" and "b_timestamps_ms.npy holds 2 timestamp(s); the file holds 3 clip(s)" in \
        row["reason"]
    # I3D: 64-frame stacks every 64 frames at 25 fps, stamped at each stack's last frame
    i3d = tmp_path / "i3d"
    i3d.mkdir()
    ends_ms = np.array([2560.0, 5120.0, 7680.0])
    for key, dim in (("rgb", 8), ("flow", 8)):
        np.save(i3d / f"v_{key}.npy", rng.standard_normal((3, dim)).astype(np.float32))
    np.save(i3d / "v_timestamps_ms.npy", ends_ms)
    capsys.readouterr()
    assert run(tmp_path / "rgb", i3d, "--window", 2.56, "--suffix", "_rgb") == 0
    assert np.allclose(FeatureStore(str(tmp_path / "rgb")).clip_times("v"),
                       [[0.0, 2.56], [2.56, 5.12], [5.12, 7.68]])
    # without --suffix, the sidecar of the longest matching prefix ("v") is found, and the key is flow
    assert run(tmp_path / "flow", i3d / "v_flow.npy", "--window", 2.56) == 0
    assert np.allclose(FeatureStore(str(tmp_path / "flow")).clip_times("v_flow"),
                       [[0.0, 2.56], [2.56, 5.12], [5.12, 7.68]])
    # --no-timestamps: clip i at i * stride, the sidecar left alone
    assert run(tmp_path / "plain", d / "a_CLIP-ViT-B-32.npy", "--window", 0.04, "--suffix", "_CLIP-ViT-B-32",
               "--no-timestamps") == 0
    plain = FeatureStore(str(tmp_path / "plain"))
    assert np.allclose(plain.clip_times("a")[:, 0], 0.04 * np.arange(5))
    assert plain.meta["imported"]["clip_times"] == "spacing"
    # a rerun that would place clips otherwise than the import that began the store: one line
    capsys.readouterr()
    assert run(tmp_path / "plain", d, "--window", 0.04, "--suffix", "_CLIP-ViT-B-32") == 2
    assert "its import placed clips by spacing, this one by timestamps" in capsys.readouterr().err
