"""Peak memory of `videolm extract` on a 1-minute and a 10-minute 720p video.

Streaming decode means memory must not grow with the video's length. Each
video is extracted by a fresh `videolm extract` process; its proportional set size
(PSS: shared pages split between the processes sharing them), summed over
the process and its DataLoader workers, is sampled from /proc every 20 ms. Printed: both peaks and their ratio (goal <= 1.2, under 1.5 GB).

    python benchmarks/extract_memory.py [--backbone x3d_xs] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _media import loop_video, sample_clip  # noqa: E402


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(k) for k in f.read().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in _children(k)]


def _memory_mb(pid: int) -> tuple[float, float]:
    """(PSS, RSS) of one process. PSS splits pages shared between the main
    process and its forked workers, so summing it does not count torch twice."""
    out = {"Pss:": 0.0, "Rss:": 0.0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key = line.split()[0]
                if key in out:
                    out[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out["Pss:"], out["Rss:"]


def peak_memory(cmd: list[str]) -> tuple[float, float, float]:
    """(peak PSS MB, peak RSS MB, summed over the process tree; seconds)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_pss = peak_rss = 0.0
    while proc.poll() is None:
        mem = [_memory_mb(p) for p in [proc.pid] + _children(proc.pid)]
        peak_pss = max(peak_pss, sum(m[0] for m in mem))
        peak_rss = max(peak_rss, sum(m[1] for m in mem))
        time.sleep(0.02)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()}")
    return peak_pss, peak_rss, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="x3d_xs")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--minutes", type=float, nargs=2, default=[1.0, 10.0])
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "videolm-bench"))
    args = ap.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    floor, _, _ = peak_memory([sys.executable, "-c", "import time, videolm.cli, videolm.features.extract; time.sleep(1)"])
    print(f"floor: python + torch + videolm imported, nothing done: {floor:.0f} MB")
    peaks = []
    for minutes in args.minutes:
        video = loop_video(sample_clip(), os.path.join(args.cache, f"bbb_{int(minutes * 60)}s.mp4"), minutes * 60)
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", "videolm.cli", "extract", video, "-o", out, "--backbone", args.backbone,
                   "--workers", str(args.workers), "--no-output-check", "-q"]  # random weights: speed only
            peak, rss, seconds = peak_memory(cmd)
        peaks.append(peak)
        print(f"{minutes:5.1f} min 720p ({os.path.getsize(video) / 1e6:.0f} MB file): peak PSS {peak:7.1f} MB "
              f"(RSS summed, double-counting shared pages: {rss:.0f} MB; {seconds:.0f} s, {args.backbone}, "
              f"{args.workers} worker(s))")
    print(f"ratio {args.minutes[1]:.0f} min / {args.minutes[0]:.0f} min: {peaks[1] / peaks[0]:.2f}x "
          f"(goal <= 1.2, and under 1500 MB: {'yes' if max(peaks) < 1500 else 'NO'})")


if __name__ == "__main__":
    main()
