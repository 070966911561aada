"""Peak memory of `videolm extract` on a 1-minute and a 10-minute 720p video.

Streaming decode means memory must not grow with the video's length. Each
video is extracted by a fresh `videolm extract` process; its resident memory,
summed over the process and its DataLoader workers, is sampled from /proc
every 20 ms. Printed: both peaks and their ratio (goal <= 1.2, under 1.5 GB).

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


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss(cmd: list[str]) -> tuple[float, float]:
    """(peak MB of the process tree, seconds)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, sum(_rss_mb(p) for p in [proc.pid] + _children(proc.pid)))
        time.sleep(0.02)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()}")
    return peak, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="x3d_xs")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--minutes", type=float, nargs=2, default=[1.0, 10.0])
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "videolm-bench"))
    args = ap.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    peaks = []
    for minutes in args.minutes:
        video = loop_video(sample_clip(), os.path.join(args.cache, f"bbb_{int(minutes * 60)}s.mp4"), minutes * 60)
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", "videolm.cli", "extract", video, "-o", out, "--backbone", args.backbone,
                   "--workers", str(args.workers), "-q"]
            peak, seconds = peak_rss(cmd)
        peaks.append(peak)
        print(f"{minutes:5.1f} min 720p ({os.path.getsize(video) / 1e6:.0f} MB file): peak RSS {peak:7.1f} MB "
              f"({seconds:.0f} s, {args.backbone}, {args.workers} worker(s))")
    print(f"ratio {args.minutes[1]:.0f} min / {args.minutes[0]:.0f} min: {peaks[1] / peaks[0]:.2f}x "
          f"(goal <= 1.2, and under 1500 MB: {'yes' if max(peaks) < 1500 else 'NO'})")


if __name__ == "__main__":
    main()
