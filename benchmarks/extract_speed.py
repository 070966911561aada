"""Extraction speed, as ratios measured side by side in one run.

1. Decode + sampling + preprocessing (no backbone): videolm's streaming reader
   vs a naive reference written here -- for each clip, PyAV seek to the window
   start, decode its frames, convert full frames to RGB, PIL resize, crop.
   Reported as clips/s ratio (goal >= 4.0x on the 720p clip).
2. End to end with a backbone: videolm's extraction time vs the backbone's
   forward time alone on the same pre-decoded clips (the limit; goal <= 1.3x
   for S3D), and vs the naive reference + the same backbone.
3. Engines: ``videolm extract --engine ray`` (a local Ray started for the run,
   its workers and backbone actor included) vs ``--engine local``, as whole
   commands (each a fresh interpreter: imports, start and stop included) on
   the same end-to-end input and settings, run alternately. Reported as a
   time ratio (goal <= 1.15x on 2 cores). Alongside, Ray's own floor: a whole
   command that starts a local Ray as the engine does, runs a pipeline of
   the engine's shape (one decode-like task, one actor in a pool) on one
   row that does nothing, and stops; the time that any Ray Data run pays
   before and after its work, put against the local engine's run.

    python benchmarks/extract_speed.py [--seconds 60] [--backbones s3d x3d_xs] [--repeats 3] [--sections 1 2 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

import av
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _media import loop_video, sample_clip  # noqa: E402

from videolm.features.backbones import build_backbone  # noqa: E402
from videolm.features.extract import ExtractConfig, clip_spec_for, extract  # noqa: E402
from videolm.features.inputs import InputItem  # noqa: E402
from videolm.video.decode import center_crop, resized_size  # noqa: E402
from videolm.video.sampling import ClipSpec, make_windows, open_clips  # noqa: E402
from videolm.video.transforms import normalize_clips  # noqa: E402


def naive_clips(path: str, spec: ClipSpec):
    """The reference: one seek per clip, full-resolution RGB, PIL resize."""
    with av.open(path) as c:
        stream = c.streams.video[0]
        fps, tb = float(stream.average_rate), stream.time_base
        n = stream.frames
    windows = make_windows(n, fps, spec)
    with av.open(path) as c:
        stream = c.streams.video[0]
        for w in windows:
            wanted = dict.fromkeys(w.indices)  # frame index -> frame, once decoded
            c.seek(int(w.start_s / tb), stream=stream, backward=True)
            for frame in c.decode(stream):
                i = int(round(float(frame.pts * tb) * fps))
                if i in wanted and wanted[i] is None:
                    img = frame.to_image()  # full-size RGB
                    img = img.resize(resized_size(img.width, img.height, spec.short_side), Image.BILINEAR)
                    wanted[i] = center_crop(np.asarray(img), spec.crop)
                if i >= max(w.indices):
                    break
            last = next(v for v in reversed(list(wanted.values())) if v is not None)
            yield np.stack([wanted[i] if wanted[i] is not None else last for i in w.indices])


def videolm_clips(path: str, spec: ClipSpec):
    for _, clip in open_clips(path, spec).clips:
        yield clip


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def decode_only(path: str, spec: ClipSpec, repeats: int) -> None:
    def run(gen):
        def go():
            count = 0
            for clip in gen(path, spec):
                normalize_clips(torch.from_numpy(clip)[None], spec.mean, spec.std)
                count += 1
            return count
        return go

    n = sum(1 for _ in videolm_clips(path, spec))
    t_ours = timed(run(videolm_clips), repeats)
    t_ref = timed(run(naive_clips), repeats)
    print(f"  {os.path.basename(path):28s} {n:4d} clips  videolm {n / t_ours:7.1f} clips/s  "
          f"naive {n / t_ref:7.1f} clips/s  ratio {t_ref / t_ours:5.2f}x")


def end_to_end(path: str, backbone: str, batch: int, workers: int, nice: list[int], repeats: int) -> None:
    cfg = ExtractConfig(backbone=backbone, batch_size=batch, workers=workers, videos_per_shard=1,
                        check_output=False)  # random weights: speed only
    spec = clip_spec_for(cfg)
    net = build_backbone(backbone)
    clips = [torch.from_numpy(c) for c in videolm_clips(path, spec)]

    def forward(clip_iter):
        buf = []
        for clip in clip_iter:
            buf.append(clip)
            if len(buf) == batch:
                with torch.no_grad():
                    net(normalize_clips(torch.stack(buf), spec.mean, spec.std))
                buf = []
        if buf:
            with torch.no_grad():
                net(normalize_clips(torch.stack(buf), spec.mean, spec.std))

    def ours(worker_nice):
        def go():
            with tempfile.TemporaryDirectory() as out:
                extract([InputItem("v", path, path)], out, replace(cfg, worker_nice=worker_nice), backbone=net)
        return go

    print(f"  {backbone}: {len(clips)} clips of {spec.frames}x{spec.crop}px, batch {batch}, {workers} worker(s)")
    t_net = timed(lambda: forward(clips), repeats)
    for n in nice:
        t_ours = timed(ours(n), repeats)
        print(f"    --worker-nice {n:2d}: videolm / backbone alone = {t_ours / t_net:.2f}x  "
              f"({len(clips) / t_ours:.2f} vs {len(clips) / t_net:.2f} clips/s)")
    t_naive = timed(lambda: forward(torch.from_numpy(c) for c in naive_clips(path, spec)), repeats)
    print(f"    naive + backbone / videolm = {t_naive / t_ours:.2f}x")


def engines(path: str, backbone: str, batch: int, workers: int, repeats: int) -> None:
    """Whole ``videolm extract`` commands, each in a fresh interpreter, so both
    engines pay their own start: the local one its torch import and network
    build, the Ray one its Ray start and stop and its actor's cold start.
    (Timed in this process instead, the local engine would get the torch that
    this benchmark already imported for free.)"""
    from videolm.features.store import FeatureStore

    code = "import sys; from videolm.cli import main; sys.exit(main(sys.argv[1:]))"
    runs = {"local": [], "ray": [], "floor": []}
    clips = {}
    for _ in range(repeats):  # alternately, so that a change of machine load hits all three
        for engine in runs:
            if engine == "floor":
                t = time.perf_counter()
                r = subprocess.run([sys.executable, "-c", RAY_FLOOR], capture_output=True, text=True)
                runs[engine].append(time.perf_counter() - t)
                if r.returncode != 0 or r.stdout.strip() != "1":
                    sys.exit(f"the no-op Ray pipeline failed ({r.returncode}): {r.stderr.strip()[-500:]}")
                continue
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "store")
                cmd = [sys.executable, "-c", code, "extract", path, "-o", out, "--backbone", backbone,
                       "--batch-size", str(batch), "--workers", str(workers), "--videos-per-shard", "1",
                       "--no-output-check", "-q", "--engine", engine]
                t = time.perf_counter()
                r = subprocess.run(cmd, capture_output=True, text=True)
                runs[engine].append(time.perf_counter() - t)
                if r.returncode != 0:
                    sys.exit(f"videolm extract --engine {engine} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
                clips.setdefault(engine, FeatureStore(out).num_clips)
    if clips["local"] != clips["ray"]:
        sys.exit(f"the engines stored different clip counts: {clips}")
    t_local, t_ray = statistics.median(runs["local"]), statistics.median(runs["ray"])
    print(f"  {backbone}: {clips['local']} clips, batch {batch}, {workers} worker(s) / a local Ray of "
          f"{os.cpu_count()} CPUs; whole commands")
    print(f"    local {t_local:.1f} s, ray {t_ray:.1f} s (runs: local {', '.join(f'{t:.1f}' for t in runs['local'])}; "
          f"ray {', '.join(f'{t:.1f}' for t in runs['ray'])})")
    pairs = [r / t for r, t in zip(runs["ray"], runs["local"])]  # each Ray run against the local run just before it
    print(f"    --engine ray / --engine local = {t_ray / t_local:.2f}x (goal <= 1.15x); run by run "
          f"{', '.join(f'{p:.2f}' for p in pairs)}x, median {statistics.median(pairs):.2f}x")
    t_floor = statistics.median(runs["floor"])
    print(f"    Ray's floor (a no-op pipeline of the engine's shape, whole command): {t_floor:.1f} s "
          f"(runs {', '.join(f'{t:.1f}' for t in runs['floor'])}) = {t_floor / t_local:.2f} of the local run; "
          f"the Ray run's extra time: {t_ray - t_local:.1f} s = {(t_ray - t_local) / t_local:.2f} of it")


# A whole command that pays what every --engine ray run pays besides its work: Ray's start (as the engine
# starts it), Ray Data's planning and helper actors, a task and a pool actor that do nothing, Ray's stop.
RAY_FLOOR = """
import numpy as np
from videolm.features.ray_engine import RayConfig, _init, actor_options, import_ray
ray = import_ray()
_init(ray, RayConfig())
class Noop:
    def __call__(self, batch):
        return batch
ds = (ray.data.from_items([{"x": 0}]).flat_map(lambda row: [row], num_cpus=1)
      .map_batches(Noop, batch_size=4, batch_format="numpy", **actor_options(ray, False, RayConfig())))
print(sum(1 for _ in ds.iter_rows()))
ray.shutdown()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the looped 720p video")
    ap.add_argument("--e2e-seconds", type=float, default=60.0, help="length of the end-to-end video")
    ap.add_argument("--backbones", nargs="*", default=["s3d", "x3d_xs"])
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--nice", type=int, nargs="+", default=[0, 10], help="--worker-nice values to compare")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sections", type=int, nargs="+", default=[1, 2, 3], help="which of the parts above to run")
    ap.add_argument("--engine-backbone", default="s3d", help="backbone of part 3")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "videolm-bench"))
    args = ap.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    long = loop_video(sample_clip(), os.path.join(args.cache, f"bbb_{int(args.seconds)}s.mp4"), args.seconds)
    e2e = loop_video(sample_clip(), os.path.join(args.cache, f"bbb_{int(args.e2e_seconds)}s.mp4"), args.e2e_seconds)
    spec = clip_spec_for(ExtractConfig(backbone="s3d", preset="videobert"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    if 1 in args.sections:
        print(f"1. decode + sample + preprocess, VideoBERT clips ({spec.frames} frames / {spec.window_s} s, "
              f"{spec.crop} px), median of {args.repeats}:")
        for path in [long] + [sample_clip(n) for n in ("bikes", "carphone_pristine")]:
            decode_only(path, spec, args.repeats)
    if 2 in args.sections:
        print(f"2. end to end on a {args.e2e_seconds:.0f} s 720p video, median of {args.repeats}:")
        for backbone in args.backbones:
            end_to_end(e2e, backbone, args.batch_size, args.workers, args.nice, args.repeats)
    if 3 in args.sections:
        print(f"3. engines, end to end on the {args.e2e_seconds:.0f} s 720p video, start-up included, "
              f"median of {args.repeats}:")
        engines(e2e, args.engine_backbone, args.batch_size, args.workers, args.repeats)
    print(f"load average after: {os.getloadavg()[0]:.2f} (above ~{os.cpu_count()} means other work shared the CPUs)")


if __name__ == "__main__":
    main()
