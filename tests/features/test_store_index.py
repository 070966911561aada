"""Format 2 of the feature store: the index/ columns against the rows written,
the format 1 reader and `videolm store upgrade`, merge by reference, a reader
during a killed run, and the numpy-only reader of docs/formats.md."""

import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from videolm.cli import main as cli_main
from videolm.features.store import FeatureStore, Finished, StoreError, StoreWriter, merge_stores

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
META = {"backbone": "s3d", "weights": "none", "clip_spec": {"window_s": 1.5, "frames": 30}, "dim": 3,
        "dtype": "float16", "videolm_version": "test"}


def _videos(prefix, count, seed=0):
    """What the tests write: id -> (features float32 (n, 3), row), and the failed ids.
    Some ids are unicode or long, one video has no clips, one image, one row without clip times."""
    rng = np.random.default_rng(seed)
    videos = {}
    for i in range(count):
        vid = f"{prefix}{i}" if i % 7 else f"{prefix}é/{'x' * (i % 13)}{i}"
        n = 0 if i == 3 else int(rng.integers(1, 6))
        start = np.round(rng.uniform(0, 2), 3) + 1.5 * np.arange(n)
        row = {"kind": "video", "fps": 25.0, "duration": float(1.5 * n + 2), "size": 1000 + i, "mtime_ns": 7 * i,
               "clip_start": start.tolist(), "clip_end": (start + 1.5).tolist()}
        if i == 5:
            row = {"kind": "image", "fps": 0.0, "duration": 0.0, "clip_start": [0.0], "clip_end": [0.0]}
            n = 1
        if i == 6:
            row = {"kind": "video"}  # no clip times recorded
        videos[vid] = (rng.normal(size=(n, 3)).astype(np.float32), row)
    return videos


def _write(root, videos, failed=(), videos_per_shard=4, finalize=True):
    w = StoreWriter(str(root), dict(META), videos_per_shard)
    ids = [v for v in list(videos) + list(failed) if not w.is_done(v)]
    w.plan(ids)
    for v in ids:
        if v in failed:
            w.add(Finished(v, f"/m/{v}.mp4", None, {}, "cannot decode (test)"))
        else:
            feats, row = videos[v]
            w.add(Finished(v, f"/m/{v}.mp4", feats, dict(row), warnings=["short"] if v.endswith("2") else []))
    if finalize:
        w.finalize()
    return w


def _expected_entry(video_id, videos):
    feats, row = videos[video_id]
    entry = {"video_id": video_id, "path": f"/m/{video_id}.mp4", **row, "num_clips": len(feats)}
    if video_id.endswith("2"):
        entry["warnings"] = ["short"]
    return entry


def test_round_trip_every_id_against_what_was_written(tmp_path):
    videos = _videos("v", 40)
    _write(tmp_path / "s", videos, failed=["bad1", "bad2"])
    store = FeatureStore(str(tmp_path / "s"))
    assert store.format_version == 2 and store.ids() == list(videos) and len(store) == 40
    assert store.num_clips == sum(len(f) for f, _ in videos.values())
    for v, (feats, row) in videos.items():
        assert v in store
        entry = store.entry(v)
        shard, offset = entry.pop("shard"), entry.pop("offset")
        assert entry == _expected_entry(v, videos)
        assert np.array_equal(store.features(v), feats.astype(np.float16))
        assert np.array_equal(np.load(tmp_path / "s" / shard)[offset : offset + len(feats)], feats.astype(np.float16))
        if "clip_start" in row:
            assert store.clip_times(v).tolist() == [[s, e] for s, e in zip(row["clip_start"], row["clip_end"])]
    with pytest.raises(StoreError, match="'v6' has no clip times recorded"):
        store.clip_times("v6")  # written without clip times, as format 1 did (a KeyError before)
    assert store.is_image("v5") and not store.is_image("v4")
    for missing in ["bad1", "nope", "", "v" * 500, "v1\0"]:
        assert missing not in store
    assert store.locate(["v9", "nope", "v1", "bad2"]).tolist() == [9, -1, 1, -1]
    assert [e["video_id"] for e in store.errors() if e["level"] == "error"] == ["bad1", "bad2"]
    s = store.summary()
    assert (s["videos"], s["images"], s["failed"], s["warnings"]) == (39, 1, 2, 4)
    assert [r["video_id"] for r in store.rows] == list(videos) and store.rows[-1]["video_id"] == "v39"


def test_pickled_store_carries_its_path_not_its_index(tmp_path):
    _write(tmp_path / "s", _videos("v", 40))
    store = FeatureStore(str(tmp_path / "s"))
    data = pickle.dumps(store)
    assert len(data) < 300 and b"v39" not in data
    again = pickle.loads(data)
    assert again.ids() == store.ids() and np.array_equal(again.features("v8"), store.features("v8"))


def test_the_numpy_only_reader_of_the_docs(tmp_path):
    videos = _videos("v", 25)
    _write(tmp_path / "s", videos)
    text = Path(os.path.join(REPO, "docs", "formats.md")).read_text()
    block = re.search(r"Plain numpy \(tests/features/test_store_index.py runs this block.*?```python\n(.*?)```",
                      text, re.S).group(1)
    scope = {}
    exec(block, scope)
    for v, (feats, row) in videos.items():
        got, times, fields = scope["read"](str(tmp_path / "s"), v)
        assert np.array_equal(got, feats.astype(np.float16))
        if "clip_start" in row:
            assert times.tolist() == [[s, e] for s, e in zip(row["clip_start"], row["clip_end"])]
        assert fields == {k: x for k, x in _expected_entry(v, videos).items()
                          if k not in ("video_id", "num_clips", "clip_start", "clip_end")}
    assert scope["lookup"](str(tmp_path / "s"), "nope") is None


def test_a_reader_during_a_killed_run_sees_the_index_and_the_shards_committed_since(tmp_path):
    first, more = _videos("a", 6), _videos("b", 9, seed=1)
    _write(tmp_path / "s", first, videos_per_shard=4)  # index/ covers shards 0 and 1
    w = StoreWriter(str(tmp_path / "s"), dict(META), 4)
    todo = list(more)  # groups: 4 + 4 + 1
    w.plan(todo)
    for v in [todo[8]] + todo[:7]:  # the last group's input first: it waits; shard 2 commits, group 1 stays open
        w.add(Finished(v, f"/m/{v}.mp4", more[v][0], dict(more[v][1])))
    del w  # killed
    assert sorted(os.listdir(tmp_path / "s" / "shards"))[-2:] == ["00002.jsonl", "00002.npy"]
    store = FeatureStore(str(tmp_path / "s"))
    assert store.ids() == list(first) + todo[:4]
    assert todo[5] not in store and np.array_equal(store.features(todo[3]), more[todo[3]][0].astype(np.float16))
    assert json.loads((tmp_path / "s" / "index" / "index.json").read_text())["shards"] == 2
    w = StoreWriter(str(tmp_path / "s"), dict(META), 4)  # the rerun takes the logged results up
    left = [v for v in todo if not w.is_done(v)]
    assert left == todo[4:]
    w.plan(left)
    assert [w.has_partial(v) for v in left] == [True, True, True, False, True]
    w.add(Finished(todo[7], "/m/x.mp4", more[todo[7]][0], dict(more[todo[7]][1])))
    w.finalize()
    store = FeatureStore(str(tmp_path / "s"))
    assert store.ids() == list(first) + todo and not (tmp_path / "s" / ".partial").exists()
    assert np.array_equal(store.features(todo[8]), more[todo[8]][0].astype(np.float16))


def test_merge_links_the_shards_and_loses_nothing(tmp_path):
    parts = [tmp_path / f"p{i}" for i in range(3)]
    written = {}
    for i, part in enumerate(parts):
        videos = _videos(f"p{i}-", 10, seed=i)
        written.update(videos)
        _write(part, videos, failed=[f"p{i}-bad"])
    assert cli_main(["store", "merge", str(tmp_path / "m"), *map(str, parts)]) == 0
    merged = FeatureStore(str(tmp_path / "m"))
    assert merged.ids() == list(written)
    for v, (feats, _) in written.items():
        assert np.array_equal(merged.features(v), feats.astype(np.float16))
        entry = merged.entry(v)
        del entry["shard"], entry["offset"]
        assert entry == _expected_entry(v, written)
    assert sorted(e["video_id"] for e in merged.errors() if e["level"] == "error") == ["p0-bad", "p1-bad", "p2-bad"]
    n0 = len(os.listdir(parts[0] / "shards")) // 2
    for sub in ("shards", "times"):
        a, b = os.stat(parts[1] / sub / "00000.npy"), os.stat(tmp_path / "m" / sub / f"{n0:05d}.npy")
        assert (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)  # the same file: a hard link, no copy


def test_merge_refuses_an_id_in_two_parts_naming_both(tmp_path, capsys):
    _write(tmp_path / "p0", _videos("v", 5))
    _write(tmp_path / "p1", _videos("w", 5), failed=["v2"])  # a failed id counts too
    with pytest.raises(StoreError) as err:
        merge_stores(str(tmp_path / "m"), [str(tmp_path / "p0"), str(tmp_path / "p1")])
    assert str(err.value) == f"{tmp_path / 'p1'}: video id 'v2' is also in {tmp_path / 'p0'}"
    assert not (tmp_path / "m" / "meta.json").exists()
    assert cli_main(["store", "merge", str(tmp_path / "m2"), str(tmp_path / "p0"), str(tmp_path / "p0")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_merge_refuses_a_part_whose_run_did_not_finish_or_is_running(tmp_path):
    """A part killed mid-run (rows in .partial/, no index) or held by a live writer: merging it
    would leave inputs out without a word, so merge refuses it, naming it; finished, it merges."""
    _write(tmp_path / "p0", _videos("a", 5))
    videos = _videos("b", 9)
    writer = _write(tmp_path / "p1", dict(list(videos.items())[:6]), finalize=False)  # running
    with pytest.raises(StoreError, match=re.escape(f"{tmp_path / 'p1'}: another process (pid {os.getpid()}) is "
                                                   "writing this store; merge it when that run has finished")):
        merge_stores(str(tmp_path / "m"), [str(tmp_path / "p0"), str(tmp_path / "p1")])
    writer.close()  # killed: its lock is gone, its rows are not all in shards
    with pytest.raises(StoreError, match=re.escape(f"{tmp_path / 'p1'}: its last run did not finish")):
        merge_stores(str(tmp_path / "m"), [str(tmp_path / "p0"), str(tmp_path / "p1")])
    assert not (tmp_path / "m").exists()
    _write(tmp_path / "p1", videos)  # the rerun finishes it
    merged = merge_stores(str(tmp_path / "m"), [str(tmp_path / "p0"), str(tmp_path / "p1")])
    assert merged.ids() == list(_videos("a", 5)) + list(videos)


def test_a_damaged_store_file_is_one_line_naming_it(tmp_path, capsys):
    """meta.json, index/index.json, a shard's rows, an index array or a feature shard cut short:
    every command says which file, in one line, instead of a traceback or a wrong hint."""
    import shutil

    _write(tmp_path / "s", _videos("v", 9))
    cases = {
        "meta.json": ("meta.json", r"meta\.json:\d+: not valid JSON \(.*\); the store is damaged: restore the file"),
        "index.json": (os.path.join("index", "index.json"),
                       r"index/index\.json:\d+: not valid JSON \(.*\); the store is damaged: restore the file"),
        "offset.npy": (os.path.join("index", "offset.npy"), r"index/offset\.npy: cannot be read \(.*\); remove "
                                                           r".*/index to read the store from its shards"),
        "shard rows": (os.path.join("shards", "00001.jsonl"),
                       r"shards/00001\.jsonl:1: not valid JSON \(.*\); the store is damaged: restore the file"),
    }
    for name, (rel, pattern) in cases.items():
        root = tmp_path / name.replace(" ", "_")
        shutil.copytree(tmp_path / "s", root)
        path = root / rel
        if rel.endswith(".jsonl"):
            shutil.rmtree(root / "index")  # as a killed run leaves it: the rows are read from the shards
        path.write_bytes(path.read_bytes()[:20])
        assert cli_main(["store", "info", str(root)]) == 2, name
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and re.fullmatch(f"error: {re.escape(str(root))}/{pattern}.*", err), (name, err)
    # the index's remedy holds: without index/ the store reads from its shards, whole
    shutil.rmtree(tmp_path / "offset.npy" / "index")
    assert FeatureStore(str(tmp_path / "offset.npy")).ids() == FeatureStore(str(tmp_path / "s")).ids()
    # a feature shard cut short: reading its features names it
    root = tmp_path / "npy"
    shutil.copytree(tmp_path / "s", root)
    path = root / "shards" / "00000.npy"
    path.write_bytes(path.read_bytes()[:90])
    store = FeatureStore(str(root))
    with pytest.raises(StoreError, match=re.escape(f"{path}: damaged feature shard (")):
        store.features(store.ids()[0])
    # met in the middle of a command (here fitting words, which reads every shard): the same one line
    capsys.readouterr()
    assert cli_main(["tokenize", "fit", str(root), "-o", str(tmp_path / "vocab"), "--k", "2", "--depth", "1",
                     "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: damaged feature shard (") and "\n" not in err


# ---------------------------------------------------------------- format 1


def _write_v1(root, videos, failed=(), videos_per_shard=4):
    """A store as videolm wrote it before format 2, laid out by hand: shard
    jsonl rows with the clip lists and the shard name, index.jsonl, errors.jsonl."""
    os.makedirs(root / "shards")
    (root / "meta.json").write_text(json.dumps({"format": "videolm-features", "format_version": 1, **META}))
    ids = list(videos) + list(failed)
    index, errors = [], []
    for number, start in enumerate(range(0, len(ids), videos_per_shard)):
        rows, arrays, offset = [], [], 0
        for v in ids[start : start + videos_per_shard]:
            if v in failed:
                rows.append({"video_id": v, "path": f"/m/{v}.mp4", "status": "failed", "reason": "bad", "time": "t"})
                errors.append({"level": "error", "video_id": v, "path": f"/m/{v}.mp4", "reason": "bad", "time": "t"})
                continue
            feats, row = videos[v]
            rows.append({"video_id": v, "path": f"/m/{v}.mp4", "status": "ok", **row, "shard": f"shards/{number:05d}.npy",
                         "offset": offset, "num_clips": len(feats)})
            arrays.append(feats.astype(np.float16))
            offset += len(feats)
        np.save(root / "shards" / f"{number:05d}.npy", np.concatenate(arrays) if arrays else np.zeros((0, 3), np.float16))
        with open(root / "shards" / f"{number:05d}.jsonl", "w") as f:
            f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        index += [{k: x for k, x in r.items() if k != "status"} for r in rows if r["status"] == "ok"]
    with open(root / "index.jsonl", "w") as f:
        f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in index)
    with open(root / "errors.jsonl", "w") as f:
        f.writelines(json.dumps(e, sort_keys=True) + "\n" for e in errors)
    return index


def test_format_1_is_read_and_upgraded_to_the_same_rows_and_features(tmp_path, capsys):
    videos = {v: (f, {k: x for k, x in r.items()}) for v, (f, r) in _videos("v", 15).items()}
    root = tmp_path / "old"
    rows = _write_v1(root, videos, failed=["bad"])
    old = FeatureStore(str(root))
    assert old.format_version == 1 and old.ids() == [r["video_id"] for r in rows]
    assert [old.entry(r["video_id"]) for r in rows] == rows
    before = {v: np.array(old.features(v)) for v in old.ids()}
    times = {v: old.clip_times(v) for v in old.ids() if v != "v6"}
    inode = os.stat(root / "shards" / "00001.npy").st_ino
    with pytest.raises(StoreError, match="videolm store upgrade"):
        StoreWriter(str(root), dict(META))
    (root / "tokens" / "k4").mkdir(parents=True)   # what tokenize encode writes there, and a user's notes
    np.save(root / "tokens" / "k4" / "index.npy", np.arange(3))
    (root / "NOTES.txt").write_text("extracted on the lab machine")
    # an upgrade stopped between its two renames: the store moved aside; a reader says how to recover
    os.replace(root, str(root) + ".old-4242")
    with pytest.raises(StoreError, match=r"old-4242 is the store as it was .* `videolm store upgrade"):
        FeatureStore(str(root))

    assert cli_main(["store", "upgrade", str(root)]) == 0
    assert "upgraded" in capsys.readouterr().out
    new = FeatureStore(str(root))
    assert new.format_version == 2 and not (root / "index.jsonl").exists()
    assert [new.entry(r["video_id"]) for r in rows] == rows
    assert all(np.array_equal(new.features(v), before[v]) for v in before)
    assert all(np.array_equal(new.clip_times(v), times[v]) for v in times)
    assert [e["video_id"] for e in new.errors()] == ["bad"] and new.summary()["failed"] == 1
    assert os.stat(root / "shards" / "00001.npy").st_ino == inode  # linked, not copied
    assert np.array_equal(np.load(root / "tokens" / "k4" / "index.npy"), np.arange(3))   # kept, not deleted
    assert (root / "NOTES.txt").read_text() == "extracted on the lab machine"
    assert not [p for p in os.listdir(tmp_path) if p != "old"]  # nothing left beside it
    assert cli_main(["store", "upgrade", str(root)]) == 0 and "already format 2" in capsys.readouterr().out

    more = _videos("w", 3, seed=5)  # and a writer adds to it
    _write(root, more)
    assert FeatureStore(str(root)).ids() == [r["video_id"] for r in rows] + list(more)


def test_upgrade_carries_an_unfinished_format_1_run_over(tmp_path):
    import hashlib

    videos = _videos("v", 6)
    root = tmp_path / "old"
    _write_v1(root, {v: videos[v] for v in list(videos)[:4]})
    os.remove(root / "index.jsonl")
    os.makedirs(root / ".partial")
    v = "v4"  # finished by the killed run, its shard not written: format 1 kept it as HASH.npy + HASH.json
    key = hashlib.sha1(v.encode()).hexdigest()[:20]
    np.save(root / ".partial" / f"{key}.npy", videos[v][0].astype(np.float16))
    partial = {"video_id": v, "path": f"/m/{v}.mp4", "row": videos[v][1], "error": None, "warnings": [], "time": "t"}
    (root / ".partial" / f"{key}.json").write_text(json.dumps(partial))
    assert FeatureStore(str(root)).ids() == list(videos)[:4]  # read from the shards while .partial exists
    assert cli_main(["store", "upgrade", str(root)]) == 0
    w = StoreWriter(str(root), dict(META), 4)
    todo = [x for x in videos if not w.is_done(x)]
    assert todo == ["v4", "v5"]
    w.plan(todo)
    assert w.has_partial("v4") and not w.has_partial("v5")
    w.add(Finished("v5", "/m/v5.mp4", videos["v5"][0], dict(videos["v5"][1])))
    w.finalize()
    store = FeatureStore(str(root))
    assert store.ids() == list(videos)
    assert np.array_equal(store.features("v4"), videos["v4"][0].astype(np.float16))
    assert store.clip_times("v4").tolist() == [[s, e] for s, e in zip(videos["v4"][1]["clip_start"],
                                                                         videos["v4"][1]["clip_end"])]
