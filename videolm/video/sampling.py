"""Clip specs and the rule that turns a video's timeline into clips.

A clip is a window ``[start_s, end_s)`` of a video's presentation timeline
(seconds from its first frame). Windows start at ``k * stride_s``; within a
window, ``frames`` samples are taken at the centres of ``frames`` equal
sub-intervals, and each sample reads the source frame shown at that time:
the last frame whose presentation timestamp is not after it. On a
constant-rate video frame ``i`` is shown during ``[i / fps, (i + 1) / fps)``;
on a variable-rate one the real timestamps decide (see decode.py), so a
window labelled ``[3.0, 4.0)`` holds what is on screen from 3.0 to 4.0 s.
The last frame is shown for ``1 / fps`` (the average rate). With the
VideoBERT/CBT preset (1.5 s, 30 frames) on a 30 fps source this reads frames
0, 2, 3, 5, 6, ... i.e. 20 fps.

Which windows a video has:
- every window that fits wholly inside the video;
- then one partial tail window, only when the windows so far leave the end
  of the video uncovered (with overlapping strides the last full window may
  already reach the end) and the tail covers at least ``min_tail`` of a
  window (its missing samples repeat the last frame; the clip's end time is
  the video's end, not the window's);
- a video shorter than one window gives one padded clip, ``[0, duration)``,
  unless ``drop_short`` is set.
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


def _sample_points(k: int, src_fps: float, spec: ClipSpec) -> list[float]:
    """Window ``k``'s sample times, as positions (seconds x ``src_fps``, plus a
    hair so a sample exactly on a frame boundary reads the later frame)."""
    start = k * spec.stride
    step = spec.window_s / spec.frames
    return [(start + (j + 0.5) * step) * src_fps + 1e-6 for j in range(spec.frames)]


def _bounds(k: int, spec: ClipSpec, duration: float = math.inf) -> tuple[float, float]:
    """Window ``k``'s [start, end) in seconds; a tail window ends where the
    video does (its samples past the end repeat the last frame, but the clip
    covers no time beyond it)."""
    start = k * spec.stride
    return round(start, 6), round(min(start + spec.window_s, duration), 6)


def _frame_at(p: float, positions: np.ndarray | None) -> int:
    """The frame shown at position ``p``: the last frame whose position is <= p
    (with constant rate, ``floor(p)``). Past the last frame's end it is
    ``len(positions)``, i.e. out of range, like ``floor(p)`` past the end."""
    if positions is None:
        return int(math.floor(p))
    if p >= positions[-1] + 1.0:
        return len(positions)
    return max(0, int(np.searchsorted(positions, p, side="right")) - 1)


def _end_position(num_frames: int, positions: np.ndarray | None) -> float:
    """Where the video ends, as a position: the last frame is shown for 1 / fps."""
    return num_frames if positions is None else float(positions[-1]) + 1.0


def _fits(k: int, end: float, src_fps: float, spec: ClipSpec) -> bool:
    """Window ``k`` lies wholly inside a video that ends at position ``end``."""
    return (k * spec.stride + spec.window_s) * src_fps <= end + 1e-6


def window_count(end: float, src_fps: float, spec: ClipSpec) -> int:
    """How many windows a video ending at position ``end`` has (module doc):
    the ones that fit; then a tail only if the last of them ends before the
    video does (with overlapping strides it may already reach the end) and
    the tail covers at least ``min_tail`` of a window."""
    k = 0
    while _fits(k, end, src_fps, spec):
        k += 1
    if k == 0:
        return 0 if spec.drop_short else 1
    duration = end / src_fps
    uncovered = ((k - 1) * spec.stride + spec.window_s) * src_fps < end - 1e-6
    tail = duration - k * spec.stride
    if uncovered and tail > 1e-9 and tail >= spec.min_tail * spec.window_s - 1e-9:
        k += 1
    return k


def make_windows(num_frames: int, src_fps: float, spec: ClipSpec,
                 positions: np.ndarray | None = None) -> list[Window]:
    """All windows of a video with ``num_frames`` frames at ``src_fps`` (see
    module doc). ``positions``: each frame's timestamp x fps for a
    variable-rate video (``VideoInfo.positions``); None for a constant rate."""
    if num_frames < 1 or src_fps <= 0:
        return []
    if positions is not None and len(positions) != num_frames:
        raise ValueError(f"{len(positions)} frame positions for {num_frames} frames")
    windows = []
    end = _end_position(num_frames, positions)
    for k in range(window_count(end, src_fps, spec)):
        idx = [_frame_at(p, positions) for p in _sample_points(k, src_fps, spec)]
        padded = max(idx) >= num_frames
        windows.append(Window(*_bounds(k, spec, end / src_fps), tuple(min(i, num_frames - 1) for i in idx), padded))
    return windows


def cut_clips(frames, src_fps: float, spec: ClipSpec, num_frames: int | None = None,
              positions: np.ndarray | None = None):
    """Cut windows from one pass over a frame stream, holding only the frames
    that windows still waiting need.

    ``frames`` yields ``(i, position, get)`` in increasing ``i``; ``get()``
    returns the (H, W, 3) uint8 frame, so a reader can skip converting frames
    no window uses. With ``num_frames`` (and ``positions``) known, the stream
    may skip unneeded indices (decord reads only those); without them, every
    frame must come, and count and positions are learnt on the way (PyAV).
    Yields ``(Window, clip)`` with clip (T, H, W, 3) uint8.
    """
    if num_frames is not None:
        yield from _cut_known(frames, src_fps, spec, num_frames, positions)
    else:
        yield from _cut_streaming(frames, src_fps, spec)


def _cut_known(frames, src_fps, spec, num_frames, positions):
    pending = deque(make_windows(num_frames, src_fps, spec, positions))
    buffer: dict[int, np.ndarray] = {}
    for i, _, get in frames:
        if not pending:
            break
        if any(i in w.indices for w in pending):
            buffer[i] = get()
        while pending and max(pending[0].indices) <= i:
            w = pending.popleft()
            yield w, np.stack([buffer[j] for j in w.indices])
            low = min(pending[0].indices) if pending else num_frames
            for j in [j for j in buffer if j < low]:
                del buffer[j]
    if pending:
        raise EOFError(f"stream ended before frame {max(pending[0].indices)} of {num_frames}")


class _Open:
    """A window being filled while the stream goes by: each sample gets the
    frame shown at its time once the next frame's position says where that
    frame ends."""

    def __init__(self, k: int, src_fps: float, spec: ClipSpec):
        self.k = k
        self.points = _sample_points(k, src_fps, spec)
        self.indices: list[int] = []
        self.frames: list[np.ndarray] = []

    def fill(self, before: float, i: int, frame) -> None:
        """Give frame ``i`` to the next samples that come before position ``before``."""
        while len(self.indices) < len(self.points) and self.points[len(self.indices)] < before:
            self.indices.append(i)
            self.frames.append(frame())

    @property
    def full(self) -> bool:
        return len(self.indices) == len(self.points)


def _cut_streaming(frames, src_fps, spec):
    """Time-driven: frame ``i`` (at position ``u``) is shown until the next
    frame's position, so the samples before that position get frame ``i``.
    Gives exactly ``make_windows(n, fps, spec, positions)`` once the stream has
    ended, but emits each window as soon as it is final."""
    open_: deque[_Open] = deque()  # created, not yet emitted, in window order
    next_k = emitted = n = 0
    prev = None  # (i, position, cached get) of the frame before the current one

    def cached(get):
        box = []
        return lambda: box[0] if box else (box.append(get()) or box[0])

    def advance(upto: float):
        nonlocal next_k
        i, _, frame = prev
        while _sample_points(next_k, src_fps, spec)[0] < upto:  # windows that begin before `upto`
            open_.append(_Open(next_k, src_fps, spec))
            next_k += 1
        for w in open_:
            w.fill(upto, i, frame)

    for i, u, get in frames:
        if prev is not None:
            advance(u)  # the previous frame is shown until u
        prev, n = (i, u, cached(get)), i + 1
        end_so_far = u + 1.0
        while open_ and open_[0].full and _fits(open_[0].k, end_so_far, src_fps, spec):  # wholly inside: final
            w = open_.popleft()
            emitted += 1
            yield Window(*_bounds(w.k, spec), tuple(w.indices)), np.stack(w.frames)
    if n == 0:
        return
    end = prev[1] + 1.0  # the last frame is shown for one frame at the average rate
    count = window_count(end, src_fps, spec)
    while next_k < count:
        open_.append(_Open(next_k, src_fps, spec))
        next_k += 1
    i, u, frame = prev
    for w in list(open_)[: count - emitted]:  # the tail, or a short video's one clip
        beyond = any(p >= end for p in w.points[len(w.indices):])
        w.fill(float("inf"), i, frame)
        yield Window(*_bounds(w.k, spec, end / src_fps), tuple(w.indices), beyond), np.stack(w.frames)


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
    windows = make_windows(info.num_frames, info.fps, spec, info.positions)
    needed = sorted({i for w in windows for i in w.indices})
    try:
        yield from cut_clips(video.frames(needed), info.fps, spec, info.num_frames, info.positions)
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
        info = video.info  # the caller holds this one: PyAV fills in the count and positions as it decodes
        info.reader, info.fps, info.num_frames, info.positions = "pyav", fallback.info.fps, None, None
        fallback.info = info
        yield from _cut(fallback, spec)
