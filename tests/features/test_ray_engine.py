"""`videolm extract --engine ray` on a local Ray of 2 CPUs, on the real sample
media, checked against `--engine local` on the same inputs and settings: the
two stores must be the same store (ids, shards, rows, features bit for bit)."""

import os
import sys

import numpy as np
import pytest
import ray
import torch

from videolm import samples
from videolm.cli import main
from videolm.features.store import FeatureStore

WEIGHTS = samples.mobilenet_v2_weights()  # real ImageNet weights: random MobileNetV2 gives all-zero vectors
SMALL = ["--backbone", "mobilenet_v2", "--weights", str(WEIGHTS), "--frames", "2", "--window", "1.0",
         "--short-side", "64", "--crop", "64", "--batch-size", "4", "--videos-per-shard", "2", "-q"]
# the actor's torch threads = this process's: the local engine's backbone runs here
RAY = ["--engine", "ray", "--threads", str(torch.get_num_threads())]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module (the engine joins a running Ray and leaves it running)."""
    ray.init(address="local", num_cpus=2, object_store_memory=100 * 1024 * 1024, include_dashboard=False,
             logging_level="WARNING")
    yield
    ray.shutdown()


def run_cli(*args):
    return main([str(a) for a in args])


@pytest.fixture
def inputs(media_dir, bad_files, tmp_path):
    """The sample media (2 videos, the MPEG-1 file, 2 photos) and two bad files."""
    listing = tmp_path / "inputs.txt"
    paths = [media_dir / "bikes.mp4", bad_files["notes.mp4"], media_dir / "blue.mpg", media_dir / "carphone.mp4",
             bad_files["empty.mp4"], media_dir / "photos" / "chelsea.png", media_dir / "photos" / "coffee.png"]
    listing.write_text("".join(f"{p}\n" for p in paths))
    return listing


def assert_same_store(a: str, b: str) -> None:
    """Same ids in the same order and shards, same rows, same features and clip times, same failures."""
    sa, sb = FeatureStore(a), FeatureStore(b)
    assert sa.ids() == sb.ids()
    assert sa.meta == sb.meta
    for video_id in sa.ids():
        assert sa.entry(video_id) == sb.entry(video_id)
        fa, fb = np.asarray(sa.features(video_id)), np.asarray(sb.features(video_id))
        assert fa.dtype == fb.dtype and np.array_equal(fa, fb), video_id  # bit for bit
        assert np.array_equal(sa.clip_times(video_id), sb.clip_times(video_id))

    def failures(store):
        return [{k: v for k, v in e.items() if k != "time"} for e in store.errors()]

    assert failures(sa) == failures(sb)


def test_ray_store_equals_local_store(inputs, bad_files, tmp_path, capsys):
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert run_cli("extract", inputs, "-o", local, *SMALL) == 1  # two bad inputs
    capsys.readouterr()
    assert run_cli("extract", inputs, "-o", on_ray, *SMALL, *RAY) == 1
    captured = capsys.readouterr()
    assert "5 ok, 2 failed, 0 already done" in captured.out
    assert "Traceback" not in captured.err
    for name in ("notes.mp4", "empty.mp4"):  # one line each, naming the file
        line = next(l for l in captured.err.splitlines() if bad_files[name] in l)
        assert line.startswith("error: ") and line.endswith(f"recorded in {on_ray / 'errors.jsonl'}")
    assert_same_store(str(local), str(on_ray))
    store = FeatureStore(str(on_ray))
    # checked by hand: bikes 10 s -> 10 clips of 1 s, carphone 4.0 s -> 4, blue 0.8 s -> 1 padded, photos 1 each
    assert store.ids() == ["bikes", "blue", "carphone", "chelsea", "coffee"]
    assert [store.entry(v)["num_clips"] for v in store.ids()] == [10, 1, 4, 1, 1]
    assert len({store.entry(v)["shard"] for v in store.ids()}) == 4  # 7 inputs, 2 per shard, failures included
    errors = {e["path"]: e for e in store.errors()}
    assert errors[bad_files["empty.mp4"]]["level"] == "error" and "empty file" in errors[bad_files["empty.mp4"]]["reason"]
    assert "Invalid data" in errors[bad_files["notes.mp4"]]["reason"]
    assert errors[str(inputs.parent / "media" / "blue.mpg")]["level"] == "warning"  # shorter than one clip


def test_ray_resumes_a_local_run_and_a_rerun_adds_nothing(inputs, tmp_path, capsys):
    on_local, on_ray = tmp_path / "local", tmp_path / "ray"
    for out in (on_local, on_ray):  # a run cut short, then resumed by either engine
        assert run_cli("extract", inputs, "-o", out, *SMALL, "--limit", "3") == 1
    capsys.readouterr()
    assert run_cli("extract", inputs, "-o", on_local, *SMALL) == 1
    capsys.readouterr()
    assert run_cli("extract", inputs, "-o", on_ray, *SMALL, *RAY) == 1  # empty.mp4 fails now
    assert "3 ok, 1 failed, 3 already done" in capsys.readouterr().out
    assert_same_store(str(on_local), str(on_ray))
    shards = sorted(os.listdir(on_ray / "shards"))
    assert run_cli("extract", inputs, "-o", on_ray, *SMALL, *RAY) == 1  # the two bad files stay failed
    assert "0 ok, 0 failed, 7 already done (2 of them failed in an earlier run;" in capsys.readouterr().out
    assert sorted(os.listdir(on_ray / "shards")) == shards
    assert_same_store(str(on_local), str(on_ray))


def test_without_ray_one_line_says_what_to_install(media_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    monkeypatch.setitem(sys.modules, "ray.data", None)
    assert run_cli("extract", media_dir, "-o", tmp_path / "s", *SMALL, "--engine", "ray") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "pip install 'videolm[ray]'" in err
    assert not (tmp_path / "s").exists()
    assert run_cli("extract", media_dir, "-o", tmp_path / "s", *SMALL, "--ray-actors", "2") == 2
    assert "--ray-actors needs --engine ray" in capsys.readouterr().err


def test_a_killed_driver_loses_only_what_was_in_flight(inputs, tmp_path):
    from videolm.features.extract import ExtractConfig
    from videolm.features.inputs import collect_inputs
    from videolm.features.ray_engine import RayConfig, extract_ray
    from videolm.progress import Progress

    class KilledAfterThree(Progress):
        def __init__(self):
            self.paths = []

        def finished(self, path, status, message=None):
            self.paths.append(path)
            if len(self.paths) == 3:
                raise KeyboardInterrupt  # as Ctrl-C in the driver, right after a result was saved

    full, killed = tmp_path / "full", tmp_path / "killed"
    assert run_cli("extract", inputs, "-o", full, *SMALL) == 1
    items, errors = collect_inputs([str(inputs)])
    cfg = ExtractConfig(backbone="mobilenet_v2", weights=str(WEIGHTS), frames=2, window_s=1.0, short_side=64, crop=64,
                        batch_size=4, videos_per_shard=2)
    first = KilledAfterThree()
    with pytest.raises(KeyboardInterrupt):
        extract_ray(items, str(killed), cfg, RayConfig(threads=torch.get_num_threads()), errors, progress=first)
    result = extract_ray(items, str(killed), cfg, RayConfig(threads=torch.get_num_threads()), errors)
    assert result.ok + result.failed + result.skipped == 7
    store = FeatureStore(str(full))
    clips = {store.entry(v)["path"]: store.entry(v)["num_clips"] for v in store.ids()}  # failed inputs: none
    # the three finished before the kill are not extracted again: this run embeds only the others' clips
    assert result.clips == sum(clips.values()) - sum(clips.get(p, 0) for p in first.paths)
    assert_same_store(str(full), str(killed))
