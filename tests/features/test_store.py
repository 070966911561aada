import json
import os

import numpy as np
import pytest

from videolm.features.store import FeatureStore, Finished, StoreError, StoreWriter, merge_stores

META = {"backbone": "s3d", "weights": "none", "clip_spec": {"window_s": 1.5, "frames": 30}, "dim": 4,
        "dtype": "float16", "videolm_version": "test"}


def _result(vid, n, value=None):
    feats = np.full((n, 4), value if value is not None else len(vid), np.float32) + np.arange(n)[:, None]
    row = {"kind": "video", "fps": 30.0, "duration": 1.5 * n, "clip_start": [1.5 * i for i in range(n)],
           "clip_end": [1.5 * (i + 1) for i in range(n)]}
    return Finished(vid, f"/videos/{vid}.mp4", feats, row)


def _write(root, ids, clips, videos_per_shard=2, fail=()):
    w = StoreWriter(str(root), dict(META), videos_per_shard)
    w.plan([v for v in ids if not w.is_done(v)])
    for v in ids:
        if w.is_done(v):
            continue
        if v in fail:
            w.add(Finished(v, f"/videos/{v}.mp4", None, {}, "cannot decode (test)"))
        else:
            w.add(_result(v, clips[v]))
    w.finalize()
    return w


def test_round_trip_readable_with_plain_numpy_and_json(tmp_path):
    ids = ["a", "bb", "ccc", "d", "e"]
    clips = {"a": 3, "bb": 1, "ccc": 0, "d": 2, "e": 5}
    _write(tmp_path / "s", ids, clips, fail={"d"})
    store = FeatureStore(str(tmp_path / "s"))
    assert store.ids() == ["a", "bb", "ccc", "e"] and store.num_clips == 9 and store.dim == 4
    assert np.array_equal(store.features("e"), np.float16(np.full((5, 4), 1) + np.arange(5)[:, None]))
    assert store.clip_times("a").tolist() == [[0, 1.5], [1.5, 3.0], [3.0, 4.5]]
    assert store.features("ccc").shape == (0, 4)
    assert [e["video_id"] for e in store.errors()] == ["d"]
    # the documented format, without videolm:
    index = {name: np.load(tmp_path / "s" / "index" / f"{name}.npy", mmap_mode="r")
             for name in ("video_id", "shard", "offset", "num_clips")}
    r = index["video_id"].tolist().index(b"a")
    shard = np.load(tmp_path / "s" / "shards" / f"{index['shard'][r]:05d}.npy", mmap_mode="r")
    assert isinstance(shard, np.memmap) and shard.dtype == np.float16
    assert np.array_equal(shard[index["offset"][r] : index["offset"][r] + index["num_clips"][r]], store.features("a"))
    assert not (tmp_path / "s" / ".partial").exists()
    with pytest.raises(KeyError, match="no video 'zz'"):
        store.features("zz")


def test_shards_commit_in_plan_order_and_rerun_is_byte_identical(tmp_path):
    ids = [f"v{i}" for i in range(7)]
    clips = {v: i % 3 + 1 for i, v in enumerate(ids)}
    _write(tmp_path / "full", ids, clips, videos_per_shard=3)

    # an interrupted run: results arrive out of order, the process dies before the end
    w = StoreWriter(str(tmp_path / "cut"), dict(META), 3)
    w.plan(ids)
    assert w.add(_result("v1", clips["v1"])) == []  # group 0 not complete
    assert w.add(_result("v4", clips["v4"])) == []  # group 1 waits for group 0
    assert w.add(_result("v0", clips["v0"])) == []
    assert w.add(_result("v2", clips["v2"])) == [0]
    assert w.add(_result("v3", clips["v3"])) == []  # partial: v4 done, v5 not
    del w  # killed here: shard 0 committed, v3 and v4 in .partial
    assert sorted(os.listdir(tmp_path / "cut" / "shards")) == ["00000.jsonl", "00000.npy"]
    (tmp_path / "cut" / "shards" / "00001.npy.tmp-1.npy").write_bytes(b"half-written")

    w = StoreWriter(str(tmp_path / "cut"), dict(META), 3)
    todo = [v for v in ids if not w.is_done(v)]
    assert todo == ["v3", "v4", "v5", "v6"]
    w.plan(todo)
    assert w.has_partial("v3") and w.has_partial("v4") and not w.has_partial("v5")
    for v in ("v5", "v6"):
        w.add(_result(v, clips[v]))
    w.finalize()
    for name in _store_files(tmp_path / "full"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "cut" / name).read_bytes(), name
    assert _store_files(tmp_path / "cut") == _store_files(tmp_path / "full")


def _store_files(root):
    """Every file of a finished store but the lock, as paths relative to it."""
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files
                  if f != ".lock")


def test_other_settings_are_refused_naming_what_differs(tmp_path):
    _write(tmp_path / "s", ["a"], {"a": 1})
    other = dict(META, backbone="x3d_xs", clip_spec={"window_s": 1.6, "frames": 30})
    with pytest.raises(StoreError, match=r"backbone, clip_spec.window_s differ"):
        StoreWriter(str(tmp_path / "s"), other)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(StoreError, match="not a feature store"):
        StoreWriter(str(tmp_path / "junk"), dict(META))
    with pytest.raises(StoreError, match="no meta.json"):
        FeatureStore(str(tmp_path / "junk"))


def test_failed_inputs_are_skipped_on_rerun_unless_retried(tmp_path):
    root = tmp_path / "s"
    _write(root, ["a", "b", "c"], {"a": 1, "b": 2, "c": 1}, fail={"b"})
    w = StoreWriter(str(root), dict(META), 2)
    assert w.is_done("b") and not w.is_done("b", retry_failed=True)
    w.plan(["b"])
    w.add(_result("b", 2))
    w.finalize()
    store = FeatureStore(str(root))
    assert store.ids() == ["a", "c", "b"] and store.errors() == []
    assert store.features("b").shape == (2, 4)


def test_merge_parts(tmp_path):
    ids = [f"v{i}" for i in range(5)]
    clips = {v: 2 for v in ids}
    _write(tmp_path / "p0", ids[0::2], clips)
    _write(tmp_path / "p1", ids[1::2], clips, fail={"v3"})
    merged = merge_stores(str(tmp_path / "m"), [str(tmp_path / "p0"), str(tmp_path / "p1")])
    assert sorted(merged.ids()) == ["v0", "v1", "v2", "v4"]
    for v in merged.ids():
        part = FeatureStore(str(tmp_path / ("p0" if v in ids[0::2] else "p1")))
        assert np.array_equal(merged.features(v), part.features(v))
    assert [e["video_id"] for e in merged.errors()] == ["v3"]
    with pytest.raises(StoreError, match="also in"):
        merge_stores(str(tmp_path / "m2"), [str(tmp_path / "p0"), str(tmp_path / "p0")])
    _write(tmp_path / "p2", ["x"], {"x": 1})
    meta = json.loads((tmp_path / "p2" / "meta.json").read_text())
    (tmp_path / "p2" / "meta.json").write_text(json.dumps(dict(meta, dim=8)))
    with pytest.raises(StoreError, match="dim differ"):
        merge_stores(str(tmp_path / "m3"), [str(tmp_path / "p0"), str(tmp_path / "p2")])


def test_wrong_feature_shape_is_refused(tmp_path):
    w = StoreWriter(str(tmp_path / "s"), dict(META))
    w.plan(["a"])
    with pytest.raises(StoreError, match="expects"):
        w.add(Finished("a", "a.mp4", np.zeros((2, 5), np.float32), {}))


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    root = tmp_path / "s"
    first = StoreWriter(str(root), dict(META))
    with pytest.raises(StoreError) as err:
        StoreWriter(str(root), dict(META))
    assert str(err.value) == (f"{root}: another process (pid {os.getpid()}) is writing this store; "
                              "wait for it to finish, or write to another directory")
    first.plan(["a"])
    first.add(_result("a", 1))
    first.finalize()  # releases the store
    _write(root, ["a", "b"], {"a": 1, "b": 2})
    assert FeatureStore(str(root)).ids() == ["a", "b"]


def test_a_lock_left_by_a_killed_writer_does_not_block(tmp_path):
    import signal
    import subprocess
    import sys

    root = tmp_path / "s"
    script = ("import sys, time\n"
              "from videolm.features.store import StoreWriter\n"
              f"w = StoreWriter({str(root)!r}, {META!r})\n"
              "print('locked', flush=True)\n"
              "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError, match=f"pid {proc.pid}"):
            StoreWriter(str(root), dict(META))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert (root / ".lock").read_text().strip() == str(proc.pid)  # the file stays; the kernel dropped the lock
    _write(root, ["a"], {"a": 1})
    assert FeatureStore(str(root)).ids() == ["a"]


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "cut_header"])
def test_an_unreadable_partial_is_redone_with_a_warning(tmp_path, caplog, damage):
    ids = ["v0", "v1", "v2"]
    clips = {"v0": 3, "v1": 2, "v2": 1}
    _write(tmp_path / "ref", ids, clips, videos_per_shard=3)
    w = StoreWriter(str(tmp_path / "cut"), dict(META), 3)
    w.plan(ids)
    w.add(_result("v1", 2))
    w.add(_result("v0", 3))  # the last record of the log
    del w  # killed (a power loss cut the log short)
    (log,) = (tmp_path / "cut" / ".partial").iterdir()
    data = log.read_bytes()
    last = data.rindex(b'{"crc"')  # where v0's record starts
    if damage == "truncate":
        log.write_bytes(data[:-7])
    elif damage == "flip_byte":
        log.write_bytes(data[:-3] + bytes([data[-3] ^ 1]) + data[-2:])
    else:
        log.write_bytes(data[: last + 10])
    w = StoreWriter(str(tmp_path / "cut"), dict(META), 3)
    with caplog.at_level("WARNING", logger="videolm"):
        w.plan(ids)
    assert not w.has_partial("v0") and w.has_partial("v1")
    assert "extracting it again" in caplog.text
    if damage != "cut_header":
        assert "'v0' cannot be read" in caplog.text
    w.add(_result("v0", 3))
    w.add(_result("v2", 1))
    w.finalize()
    assert not (tmp_path / "cut" / ".partial").exists()
    for name in _store_files(tmp_path / "ref"):
        assert (tmp_path / "ref" / name).read_bytes() == (tmp_path / "cut" / name).read_bytes(), name


def test_index_follows_each_committed_shard(tmp_path):
    ids = [f"v{i}" for i in range(5)]
    w = StoreWriter(str(tmp_path / "s"), dict(META), 2)
    w.plan(ids)
    for v in ids[:3]:
        w.add(_result(v, 1))
    del w  # killed: shard 0 (v0, v1) committed, v2 in .partial, index never finalised
    assert not (tmp_path / "s" / "index").exists()
    shard = tmp_path / "s" / "shards" / "00000.jsonl"
    on_disk = [json.loads(line)["video_id"] for line in shard.read_text().splitlines()]
    assert on_disk == ["v0", "v1"]  # plain json readers see the committed shard
    store = FeatureStore(str(tmp_path / "s"))
    assert store.ids() == ["v0", "v1"] and store.num_clips == 2
    assert np.array_equal(store.features("v1"), np.float16([[2, 2, 2, 2]]))


def test_readers_keep_a_bounded_number_of_shards_open(tmp_path):
    ids = [f"v{i}" for i in range(12)]
    _write(tmp_path / "s", ids, {v: 2 for v in ids}, videos_per_shard=1)  # 12 shards
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):
        pytest.skip("needs /proc")
    store = FeatureStore(str(tmp_path / "s"), max_open_shards=3)
    before = len(os.listdir(fd_dir))  # the index's arrays hold one each, whatever the number of shards
    for _ in range(2):
        for i, v in enumerate(ids):  # through the reader, then checked against the file read directly
            expected = np.load(tmp_path / "s" / "shards" / f"{i:05d}.npy")
            assert np.array_equal(store.features(v), expected)
    assert len(os.listdir(fd_dir)) - before <= 3
    kept = store.features("v0")  # a view handed out stays valid after its shard is closed
    for v in ids[1:]:
        store.features(v)
    assert np.array_equal(kept, np.load(tmp_path / "s" / "shards" / "00000.npy"))


def test_a_value_beyond_float16_fails_its_input_not_the_store(tmp_path):
    w = StoreWriter(str(tmp_path / "s"), dict(META), 2)
    w.plan(["big", "ok"])
    w.add(_result("big", 1, value=70000.0))   # float16's largest is 65504: it would be stored as inf
    w.add(_result("ok", 1))
    w.finalize()
    store = FeatureStore(str(tmp_path / "s"))
    assert store.ids() == ["ok"] and np.isfinite(np.asarray(store.features("ok"))).all()
    (error,) = store.errors()
    assert error["video_id"] == "big" and "does not fit float16" in error["reason"] and "float32" in error["reason"]


def test_a_killed_retry_run_resumes_from_its_log(tmp_path):
    root = tmp_path / "s"
    _write(root, ["a", "b", "c"], {"a": 1, "b": 2, "c": 1}, fail={"b"})
    w = StoreWriter(str(root), dict(META), 1)
    w.plan(["b", "c2"])
    w.add(_result("c2", 1))   # waits for b's shard
    w.add(_result("b", 2))    # b's shard commits; c2's too
    w2_ids = ["b2", "x"]
    w.plan(w2_ids)
    w.add(_result("x", 1))    # logged, waiting for b2: then the run is killed
    w.close()
    again = StoreWriter(str(root), dict(META), 1)
    again.plan([v for v in w2_ids if not again.is_done(v, retry_failed=True)])
    assert again.has_partial("x") and not again.has_partial("b2")
    again.add(_result("b2", 1))
    again.finalize()
    assert sorted(FeatureStore(str(root)).ids()) == ["a", "b", "b2", "c", "c2", "x"]


def test_the_log_holds_what_waits_not_every_feature(tmp_path):
    """Results out of order (decode workers): each commit rewrites the waiting
    records into a fresh log, so the logs stay the size of what waits."""
    ids = [f"v{i:03d}" for i in range(200)]
    w = StoreWriter(str(tmp_path / "s"), dict(META), 4)
    w.plan(ids)
    order = [ids[i + 1] if i % 2 == 0 else ids[i - 1] for i in range(len(ids))]   # pairs swapped
    for n, v in enumerate(order, 1):
        w.add(_result(v, 3))
        logs = os.listdir(tmp_path / "s" / ".partial")
        size = sum(os.path.getsize(tmp_path / "s" / ".partial" / f) for f in logs)
        assert size < 6 * (3 * 4 * 2 + 400), (n, logs, size)   # a few records' worth, never the run's
    w.finalize()
    assert FeatureStore(str(tmp_path / "s")).ids() == ids


def test_store_files_damaged_or_missing_times_are_one_line(tmp_path, monkeypatch):
    import errno

    from videolm.features.store import join_stores

    _write(tmp_path / "s", ["a", "b", "c"], {"a": 1, "b": 1, "c": 1}, fail={"b"})
    jsonl = tmp_path / "s" / "shards" / "00000.jsonl"
    lines = jsonl.read_text().splitlines()
    failed_line = next(i for i, line in enumerate(lines) if '"failed"' in line)
    lines[failed_line] = lines[failed_line][:-12]   # cut inside the row, its "failed" kept
    jsonl.write_text("\n".join(lines) + "\n")
    with pytest.raises(StoreError, match=rf"00000.jsonl:{failed_line + 1}: damaged shard row"):
        StoreWriter(str(tmp_path / "s"), dict(META), 2)
    # running out of file descriptors is not a damaged shard
    _write(tmp_path / "t", ["a"], {"a": 1})
    store = FeatureStore(str(tmp_path / "t"))
    monkeypatch.setattr(np, "load", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EMFILE, "Too many open files")))
    with pytest.raises(StoreError, match="cannot be opened .*ulimit -n"):
        store.features("a")
    monkeypatch.undo()
    # join: clip times 30 ms apart at one hour are not the same clips (the tolerance was relative too)
    for name, start in (("p", 3600.0), ("q", 3600.03)):
        w = StoreWriter(str(tmp_path / name), dict(META), 2)
        w.plan(["v"])
        w.add(Finished("v", "/v.mp4", np.ones((1, 4), np.float32), {"kind": "video", "clip_start": [start],
                                                                     "clip_end": [start + 1.5]}))
        w.finalize()
    with pytest.raises(StoreError, match="'v' has 1 clips .* with other times"):
        join_stores(str(tmp_path / "j"), [str(tmp_path / "p"), str(tmp_path / "q")])
    with pytest.raises(StoreError, match="a store is given twice"):
        join_stores(str(tmp_path / "j"), [str(tmp_path / "p"), str(tmp_path / "p")])


def test_a_stopped_merge_can_be_run_again(tmp_path, monkeypatch):
    import videolm.features.store as store_module

    _write(tmp_path / "p0", ["a", "b"], {"a": 1, "b": 1})
    _write(tmp_path / "p1", ["c"], {"c": 1})
    parts = [str(tmp_path / "p0"), str(tmp_path / "p1")]
    real = store_module.write_index_dir
    monkeypatch.setattr(store_module, "write_index_dir", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        merge_stores(str(tmp_path / "m"), parts)
    monkeypatch.setattr(store_module, "write_index_dir", real)
    with pytest.raises(StoreError, match="unfinished merge of other stores"):
        merge_stores(str(tmp_path / "m"), parts[:1])
    merged = merge_stores(str(tmp_path / "m"), parts)
    assert merged.ids() == ["a", "b", "c"] and not (tmp_path / "m" / ".merging.json").exists()
