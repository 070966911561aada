"""Clip specs and the rule that turns a video's timeline into clips.

A clip is a window ``[start_s, end_s)`` of a video. Windows start at
``k * stride_s``; within a window, ``frames`` samples are taken at the centres
of ``frames`` equal sub-intervals, and each sample reads the source frame whose
display interval contains it (frame ``i`` covers ``[i / fps, (i + 1) / fps)``).
With the VideoBERT/CBT preset (1.5 s, 30 frames) on a 30 fps source this reads
frames 0, 2, 3, 5, 6, ... i.e. 20 fps.

Which windows a video has:
- every window that fits wholly inside the video;
- the last, partial window when it covers at least ``min_tail`` of a window
  (its missing samples repeat the last frame);
- a video shorter than one window gives one padded clip, unless
  ``drop_short`` is set.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass

import logging
from typing import Iterator

import numpy as np

from videolm.video.decode import DecodeError, PyAVVideo, VideoInfo, is_image, load_image, open_video

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut and preprocessed. ``fps`` is the target sampling
    rate: ``frames / fps`` is the span the samples cover, normally the window."""

    window_s: float = 1.5
    stride_s: float | None = None  # None: contiguous windows (stride = window)
    frames: int = 30
    short_side: int = 224  # resize the short side to this ...
    crop: int = 224  # ... then centre-crop a square of this size
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD
    min_tail: float = 0.5  # keep a partial last window covering at least this fraction
    drop_short: bool = False  # drop videos shorter than one window instead of padding

    def __post_init__(self):
        if self.window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {self.window_s}")
        if self.stride_s is not None and self.stride_s <= 0:
            raise ValueError(f"stride_s must be > 0, got {self.stride_s}")
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if self.crop < 1 or self.short_side < self.crop:
            raise ValueError(f"need short_side >= crop >= 1, got {self.short_side}, {self.crop}")
        if not 0.0 <= self.min_tail <= 1.0:
            raise ValueError(f"min_tail must be in [0, 1], got {self.min_tail}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def stride(self) -> float:
        return self.window_s if self.stride_s is None else self.stride_s

    @property
    def fps(self) -> float:
        return self.frames / self.window_s

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ClipSpec":
        d = dict(d)
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


# The VideoBERT / CBT clip: 1.5 s windows, 30 frames at 20 fps (S3D input).
VIDEOBERT = ClipSpec(window_s=1.5, frames=30, short_side=224, crop=224)
PRESETS = {"videobert": VIDEOBERT, "cbt": VIDEOBERT}


@dataclass(frozen=True)
class Window:
    start_s: float
    end_s: float
    indices: tuple[int, ...]  # source frame index of each sample, len == spec.frames
    padded: bool = False  # some samples repeat the last frame


def _unclamped(k: int, src_fps: float, spec: ClipSpec) -> Window:
    start = k * spec.stride
    step = spec.window_s / spec.frames
    idx = tuple(int(math.floor((start + (j + 0.5) * step) * src_fps + 1e-6)) for j in range(spec.frames))
    return Window(round(start, 6), round(start + spec.window_s, 6), idx)


def _fits(k: int, num_frames: int, src_fps: float, spec: ClipSpec) -> bool:
    """Window ``k`` lies wholly inside a video of ``num_frames`` frames."""
    return (k * spec.stride + spec.window_s) * src_fps <= num_frames + 1e-6


def make_windows(num_frames: int, src_fps: float, spec: ClipSpec) -> list[Window]:
    """All windows of a video with ``num_frames`` frames at ``src_fps`` (see module doc)."""
    if num_frames < 1 or src_fps <= 0:
        return []
    k = 0
    while _fits(k, num_frames, src_fps, spec):
        k += 1
    count = k
    duration = num_frames / src_fps
    if count == 0:
        count = 0 if spec.drop_short else 1
    elif k * spec.stride < duration - 1e-9 and (duration - k * spec.stride) >= spec.min_tail * spec.window_s - 1e-9:
        count += 1
    windows = []
    for k in range(count):
        w = _unclamped(k, src_fps, spec)
        if max(w.indices) >= num_frames:
            w = Window(w.start_s, w.end_s, tuple(min(i, num_frames - 1) for i in w.indices), True)
        windows.append(w)
    return windows


def cut_clips(frames, src_fps: float, spec: ClipSpec, num_frames: int | None = None):
    """Cut windows from one pass over a frame stream, holding only the frames
    that windows still waiting need.

    ``frames`` yields ``(i, get)`` in increasing ``i``; ``get()`` returns the
    (H, W, 3) uint8 frame, so a reader can skip converting frames no window uses.
    With ``num_frames`` known, the stream may skip unneeded indices (decord reads
    only those); without it, every frame must come, and the count is learnt at
    the end (PyAV). Yields ``(Window, clip)`` with clip (T, H, W, 3) uint8.
    """
    if num_frames is not None:
        yield from _cut_known(frames, src_fps, spec, num_frames)
    else:
        yield from _cut_streaming(frames, src_fps, spec)


def _stack(window: Window, buffer: dict, last) -> np.ndarray:
    return np.stack([buffer[i] if i in buffer else last() for i in window.indices])


def _cut_known(frames, src_fps, spec, num_frames):
    pending = deque(make_windows(num_frames, src_fps, spec))
    buffer: dict[int, np.ndarray] = {}
    for i, get in frames:
        if not pending:
            break
        if any(i in w.indices for w in pending):
            buffer[i] = get()
        while pending and max(pending[0].indices) <= i:
            w = pending.popleft()
            yield w, _stack(w, buffer, None)
            low = min(pending[0].indices) if pending else num_frames
            for j in [j for j in buffer if j < low]:
                del buffer[j]
    if pending:
        raise EOFError(f"stream ended before frame {max(pending[0].indices)} of {num_frames}")


def _cut_streaming(frames, src_fps, spec):
    pending: deque[Window] = deque()  # created (first sample reached), not yet emitted
    buffer: dict[int, np.ndarray] = {}
    next_k, emitted, n = 0, 0, 0
    last_get = None
    for i, get in frames:
        n, last_get = i + 1, get
        while True:  # create every window whose first sample is frame i or earlier
            w = _unclamped(next_k, src_fps, spec)
            if w.indices[0] > i:
                break
            pending.append(w)
            next_k += 1
        if any(i in w.indices for w in pending):
            buffer[i] = get()
        while pending and _fits(emitted, n, src_fps, spec):  # wholly inside: final
            w = pending.popleft()
            emitted += 1
            yield w, _stack(w, buffer, None)
            low = min(pending[0].indices) if pending else i + 1
            for j in [j for j in buffer if j < low]:
                del buffer[j]
    if n == 0:
        return
    last_frame = None

    def last():
        nonlocal last_frame
        if last_frame is None:
            last_frame = buffer[n - 1] if n - 1 in buffer else last_get()
        return last_frame

    for w in make_windows(n, src_fps, spec)[emitted:]:  # the tail, or a short video's one clip
        yield w, _stack(w, buffer, last)


@dataclass
class Clips:
    """An opened input and the clips it yields, in order (consumed once)."""

    info: "VideoInfo"
    clips: Iterator[tuple[Window, np.ndarray]]


def open_clips(path: str, spec: ClipSpec, reader: str = "auto", threads: int = 1) -> Clips:
    """Open a video or a still and cut its clips. A still is one clip: the frame
    repeated ``spec.frames`` times. If decord fails before the first clip, the
    video is re-read with PyAV; a failure after that is the video's error.
    Raises ``DecodeError`` with a one-line reason."""
    if is_image(path):
        frame, (width, height) = load_image(path, spec.short_side, spec.crop)
        info = VideoInfo(path, width, height, 0.0, 1, "image")
        clip = np.repeat(frame[None], spec.frames, axis=0)  # (T, H, W, 3)
        return Clips(info, iter([(Window(0.0, 0.0, (0,) * spec.frames), clip)]))
    video = open_video(path, spec.short_side, spec.crop, reader, threads)
    return Clips(video.info, _clips_with_fallback(video, spec, reader, threads))


def _cut(video, spec):
    info = video.info
    if info.num_frames is None:
        yield from cut_clips(video.frames(), info.fps, spec)
        return
    windows = make_windows(info.num_frames, info.fps, spec)
    needed = sorted({i for w in windows for i in w.indices})
    try:
        yield from cut_clips(video.frames(needed), info.fps, spec, info.num_frames)
    except EOFError as err:
        raise DecodeError(str(err)) from None


def _clips_with_fallback(video, spec, reader, threads):
    produced = 0
    try:
        for item in _cut(video, spec):
            produced += 1
            yield item
    except DecodeError as err:
        if produced or reader != "auto" or video.info.reader != "decord":
            raise
        log.info("%s: %s; reading with PyAV instead", video.info.path, err)
        fallback = PyAVVideo(video.info.path, spec.short_side, spec.crop, threads)
        video.info.reader, video.info.num_frames = "pyav", None
        yield from _cut(fallback, spec)
