"""Open videos and stills and stream their frames, resized while decoding.

decord is tried first: it resizes inside the decoder (``width``/``height``) and
reads frames in batches, which is what makes extraction fast. Files decord
rejects (e.g. MPEG-1 streams with broken duration metadata) are read with
PyAV, which resizes in swscale before the RGB conversion. At native resolution
both give identical RGB frames (both use FFmpeg's YUV->RGB conversion); after
resizing their scalers differ by a few grey levels.

A video whose stream carries a display rotation (a phone's portrait video,
stored landscape with a 90 degree display matrix) is read upright: PyAV's
frames are turned by the matrix and resized by the upright size; decord
turns them itself at native size, but its resize squashes a turned picture,
so a rotated video that is to be resized is read with PyAV. A packet the decoder cannot
decode (a damaged stretch of the file) is skipped and counted
(``VideoInfo.skipped_packets``) instead of failing the whole video.

Frames are addressed by decode index ``i`` (presentation order). Each frame
also has a *position*: its presentation timestamp, relative to the first
frame, in units of ``1 / fps`` (the stream's average rate). On a
constant-rate stream frame ``i`` sits at position ``i``; a timestamp within
a tenth of a frame of ``i / fps`` is snapped to it, so container rounding
(e.g. millisecond timestamps) changes nothing. A variable-rate stream keeps
its real positions, and clips are cut by them (see sampling.py).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".flv", ".wmv", ".ts", ".3gp")
DECORD_BATCH = 32  # frames per decord get_batch call: bounds memory, amortises call overhead
SNAP = 0.1  # a timestamp within this many frames of i / fps is taken to be exactly frame i's grid time

Frame = np.ndarray  # (H, W, 3) uint8
FrameStream = Iterator[tuple[int, float, Callable[[], Frame]]]  # (index, position, get)


class DecodeError(Exception):
    """A file that cannot be read; ``str()`` is a one-line reason."""


@dataclass
class VideoInfo:
    path: str
    width: int  # source size, before any resize
    height: int
    fps: float
    num_frames: int | None  # None when the container does not say (PyAV counts while decoding)
    reader: str  # "decord" | "pyav" | "image"
    # (num_frames,) position of each frame (timestamp x fps, see the module doc);
    # None for a constant-rate stream (frame i at position i) or while unknown.
    positions: np.ndarray | None = None
    rotation: int = 0           # display rotation applied (degrees counter-clockwise: 0, 90, 180, 270)
    skipped_packets: int = 0    # undecodable packets skipped (PyAV)

    @property
    def variable_rate(self) -> bool:
        return self.positions is not None

    @property
    def duration(self) -> float | None:
        """Seconds from the first frame to the end of the last (which is shown for 1 / fps)."""
        if self.num_frames is None:
            return None
        if self.fps <= 0:
            return 0.0
        end = self.num_frames if self.positions is None else float(self.positions[-1]) + 1.0
        return end / self.fps


def is_image(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def resized_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) after scaling the short side to ``short_side``, aspect
    kept, the long side truncated as torchvision's ``resize`` and
    pytorchvideo's ``ShortSideScale`` compute it (``int(short_side * long /
    short)``), so the centre crop that follows cuts where theirs does."""
    if short_side is None:
        return width, height
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def center_crop(frame: Frame, crop: int | None) -> Frame:
    """The central ``crop`` x ``crop`` square, offsets rounded as torchvision's
    ``center_crop`` rounds them (``int(round((h - crop) / 2.0))``, Python's
    half-to-even), so a frame is cut where the official eval transforms cut it."""
    if crop is None:
        return frame
    h, w = frame.shape[:2]
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    return frame[top : top + crop, left : left + crop]


def grid_positions(seconds: np.ndarray, fps: float) -> np.ndarray | None:
    """Positions (see the module doc) of frames whose presentation times are
    ``seconds`` (any origin, presentation order); None when every frame sits
    within ``SNAP`` of its grid time, i.e. the stream has a constant rate."""
    seconds = np.asarray(seconds, np.float64)
    if seconds.size == 0:
        return None
    grid = np.arange(seconds.size, dtype=np.float64)
    pos = (seconds - seconds[0]) * fps
    on_grid = np.abs(pos - grid) <= SNAP
    if on_grid.all():
        return None
    pos[on_grid] = grid[on_grid]
    return np.maximum.accumulate(pos)  # never backwards, whatever the container says


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise DecodeError("file not found")
    if os.path.isdir(path):
        raise DecodeError("is a directory")
    if os.path.getsize(path) == 0:
        raise DecodeError("empty file (0 bytes)")


def _one_line(err: BaseException) -> str:
    """decord's messages carry a C++ source location and the path; keep the reason."""
    lines = str(err).strip().splitlines()
    line = lines[-1] if lines else type(err).__name__
    line = re.sub(r"^\[[0-9:]+\]\s*", "", line)  # "[04:55:31] "
    line = re.sub(r"^\S+\.(cc|cpp|h):\d+:\s*", "", line)  # "src/video/video_reader.cc:270: "
    line = re.sub(r"^\[[^\]]*\]\s*", "", line)  # "[path] "
    line = re.sub(r"^\[Errno -?\d+\]\s*", "", line)
    line = re.sub(r":\s*'[^']*'$", "", line)  # PyAV appends ": '<path>'"
    return line.strip()[:300] or type(err).__name__


def _rotation_of(container, stream) -> int:
    """The stream's display rotation in degrees counter-clockwise (0, 90, 180,
    270), from its first frame's display matrix (PyAV's ``frame.rotation``);
    0 when there is none or the frame does not decode (decoding reports that)."""
    import av

    try:
        for frame in container.decode(stream):
            return int(round(float(getattr(frame, "rotation", 0) or 0) / 90.0)) * 90 % 360
    except (av.FFmpegError, ValueError, TypeError):
        pass
    return 0


def probe(path: str) -> tuple[int, int, float, int | None, int]:
    """(width, height, fps, frame count or None, rotation) from the container
    header and the first frame's display matrix; width and height are the
    upright picture's (swapped for a 90 or 270 degree rotation)."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise DecodeError("no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            width, height = stream.codec_context.width, stream.codec_context.height
            frames = stream.frames or None
            rotation = _rotation_of(container, stream)
    except av.FFmpegError as err:
        raise DecodeError(f"cannot decode ({_one_line(err)})") from None
    if not rate or not width or not height:
        raise DecodeError("no frame rate or frame size in the video stream")
    if rotation in (90, 270):
        width, height = height, width
    return width, height, float(rate), frames, rotation


class DecordVideo:
    """Frames via decord, resized in the decoder, read in batches of increasing index."""

    def __init__(self, path: str, short_side: int | None = None, crop: int | None = None, threads: int = 1):
        import decord

        _check_file(path)
        width, height, _, _, rotation = probe(path)   # the upright size: decord turns the frames itself
        if rotation and short_side is not None:
            # decord's resize scales the turned picture into the stored shape (squashed), or fails on a
            # size check: measured with decord 0.6 on 90/180/270 degree clips; PyAV reads these
            raise DecodeError(f"a video displayed rotated by {rotation} degrees: decord cannot resize it "
                              f"upright (read with PyAV: --reader pyav or auto)")
        rw, rh = resized_size(width, height, short_side)
        kwargs = {} if short_side is None else {"width": rw, "height": rh}
        try:
            self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads, **kwargs)
            fps = float(self._vr.get_avg_fps())
            n = len(self._vr)
        except decord.DECORDError as err:
            raise DecodeError(f"decord cannot open ({_one_line(err)})") from None
        if n < 1 or fps <= 0:
            raise DecodeError("decord found no frames")
        try:
            starts = self._vr.get_frame_timestamp(list(range(n)))[:, 0]  # (n,) seconds, from the index
        except decord.DECORDError as err:
            raise DecodeError(f"decord cannot read the frame timestamps ({_one_line(err)})") from None
        self.crop = crop
        self.info = VideoInfo(path, width, height, fps, n, "decord", grid_positions(starts, fps), rotation)

    def frames(self, indices: list[int]) -> FrameStream:
        """Yield ``(i, position, get)`` for the given increasing indices; one decode pass."""
        import decord

        pos = self.info.positions
        for lo in range(0, len(indices), DECORD_BATCH):
            chunk = indices[lo : lo + DECORD_BATCH]
            try:
                batch = self._vr.get_batch(chunk).asnumpy()  # (n, H, W, 3)
            except decord.DECORDError as err:
                raise DecodeError(f"decode failed near frame {chunk[0]} ({_one_line(err)})") from None
            for i, frame in zip(chunk, batch):
                yield i, (float(i) if pos is None else float(pos[i])), (lambda f=frame: center_crop(f, self.crop))


class PyAVVideo:
    """Frames via PyAV, decoded sequentially; converts only the frames asked for."""

    def __init__(self, path: str, short_side: int | None = None, crop: int | None = None, threads: int = 1):
        _check_file(path)
        width, height, fps, frames, rotation = probe(path)
        self.size = resized_size(width, height, short_side) if short_side is not None else None
        self.crop = crop
        self.threads = threads
        self.info = VideoInfo(path, width, height, fps, None, "pyav", None, rotation)

    def _convert(self, frame) -> Frame:
        turns = self.info.rotation // 90   # np.rot90 turns counter-clockwise, as the display matrix says
        if self.size is None:
            out = frame.to_ndarray(format="rgb24")
        else:
            w, h = self.size if turns % 2 == 0 else self.size[::-1]   # the stored (unrotated) frame's size
            out = frame.reformat(width=w, height=h, format="rgb24", interpolation="BILINEAR").to_ndarray()
        if turns:
            out = np.ascontiguousarray(np.rot90(out, turns))
        return center_crop(out, self.crop)

    def _decoded(self, container, stream):
        """Every frame, packet by packet: a packet that does not decode is
        skipped and counted, so one damaged stretch costs its frames, not the video."""
        import av

        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError as err:
                self.info.skipped_packets += 1
                log.debug("%s: skipped an undecodable packet (%s)", self.info.path, _one_line(err))
                continue
            yield from frames

    def frames(self, indices: list[int] | None = None) -> FrameStream:
        """Yield ``(i, position, get)`` for every decoded frame; ``get``
        converts lazily. The count and positions are in ``info`` at the end."""
        import av

        fps = self.info.fps
        try:
            with av.open(self.info.path) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                stream.codec_context.thread_count = self.threads
                count, first, last = 0, None, 0.0
                seconds = []
                for i, frame in enumerate(self._decoded(container, stream)):
                    count = i + 1
                    t = frame.time
                    if t is None:  # no timestamp: the grid time
                        t = (first or 0.0) + i / fps
                    first = t if first is None else first
                    seconds.append(t)
                    pos = (t - first) * fps
                    pos = float(i) if abs(pos - i) <= SNAP else pos  # as grid_positions snaps
                    last = max(pos, last)
                    yield i, last, (lambda f=frame: self._convert(f))
                self.info.num_frames = count
                self.info.positions = grid_positions(np.array(seconds), fps)
                if count == 0:
                    raise DecodeError("no decodable frame")
        except av.FFmpegError as err:
            raise DecodeError(f"cannot decode ({_one_line(err)})") from None


def open_video(path: str, short_side: int | None = None, crop: int | None = None,
               reader: str = "auto", threads: int = 1) -> DecordVideo | PyAVVideo:
    """Open with decord, or PyAV when decord cannot (logged), or as asked."""
    if reader == "pyav":
        return PyAVVideo(path, short_side, crop, threads)
    if reader == "decord":
        return DecordVideo(path, short_side, crop, threads)
    if reader != "auto":
        raise ValueError(f"unknown reader {reader!r} (auto, decord, pyav)")
    try:
        return DecordVideo(path, short_side, crop, threads)
    except DecodeError as err:
        _check_file(path)
        video = PyAVVideo(path, short_side, crop, threads)  # raises its own reason if PyAV fails too
        log.info("%s: %s; reading with PyAV instead", path, err)
        return video


def _to_8bit(grey: np.ndarray, sixteen: bool) -> np.ndarray:
    """A 16-bit grey image's values (0-65535) scaled to 0-255, as a 16-bit
    PNG means them; a 32-bit ``I`` image is taken as 16-bit unless all its
    values fit in 8 bits."""
    grey = grey.astype(np.int64)
    if sixteen or (grey.size and grey.max() > 255):
        grey = np.clip(grey, 0, 65535) * 255 // 65535
    return np.clip(grey, 0, 255).astype(np.uint8)


def load_image(path: str, short_side: int | None = None, crop: int | None = None) -> tuple[Frame, tuple[int, int]]:
    """A still as one RGB frame, resized and cropped like video frames, and its
    source (width, height)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    _check_file(path)
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)  # a phone's portrait photo is stored landscape + an EXIF tag
            if img.mode.startswith("I"):   # 16-bit (or 32-bit integer) grey: Pillow's convert would clip, not scale
                img = Image.fromarray(_to_8bit(np.asarray(img), sixteen=img.mode.startswith("I;16")), "L")
            img = img.convert("RGB")
            source_size = img.size
            if short_side is not None:
                img = img.resize(resized_size(img.width, img.height, short_side), Image.BILINEAR)
            frame = np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DecodeError(f"cannot decode image ({_one_line(err)})") from None
    return center_crop(frame, crop), source_size
