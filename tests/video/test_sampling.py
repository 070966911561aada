import tracemalloc

import numpy as np
import pytest

from videolm.video.sampling import VIDEOBERT, ClipSpec, cut_clips, make_windows


def test_videobert_preset_reads_20fps_from_30fps():
    (w,) = make_windows(45, 30.0, VIDEOBERT)  # exactly 1.5 s
    # sample j sits at (j + 0.5) / 20 s -> frame floor(that * 30), by hand:
    assert w.indices[:8] == (0, 2, 3, 5, 6, 8, 9, 11)
    assert w.indices[-1] == 44 and len(w.indices) == 30
    assert (w.start_s, w.end_s, w.padded) == (0.0, 1.5, False)


@pytest.mark.parametrize("seconds, expected", [
    (10.0, 7),   # 6 full windows (9.0 s) + a 1.0 s tail >= half a window
    (9.5, 6),    # tail of 0.5 s < 0.75 s: dropped
    (9.0, 6),    # exact fit, no tail
    (1.5, 1),
    (0.8, 1),    # shorter than a window: one padded clip
])
def test_number_of_windows(seconds, expected):
    windows = make_windows(int(seconds * 30), 30.0, VIDEOBERT)
    assert len(windows) == expected
    assert [w.start_s for w in windows] == pytest.approx([1.5 * k for k in range(expected)])


def test_short_video_is_padded_with_last_frame_or_dropped():
    (w,) = make_windows(24, 30.0, VIDEOBERT)  # 0.8 s
    assert w.padded and w.indices[-1] == 23 and w.indices.count(23) > 1
    assert make_windows(24, 30.0, ClipSpec(drop_short=True)) == []


def test_overlapping_windows():
    spec = ClipSpec(window_s=1.0, stride_s=0.5, frames=4)
    windows = make_windows(60, 30.0, spec)  # 2 s
    # [1.0, 2.0) already reaches the end: no half-padded [1.5, 2.5) after it
    assert [w.start_s for w in windows] == [0.0, 0.5, 1.0]
    assert windows[1].indices == (18, 26, 33, 41)  # floor((0.5 + (j + .5) / 4) * 30)
    assert not any(w.padded for w in windows)
    windows = make_windows(66, 30.0, spec)  # 2.2 s: [1.0, 2.0) leaves 0.2 s uncovered
    assert [w.start_s for w in windows] == [0.0, 0.5, 1.0, 1.5] and windows[-1].padded


@pytest.mark.parametrize("n, fps, spec, starts", [
    (90, 30.0, ClipSpec(window_s=1.5, stride_s=0.5, frames=30), [0.0, 0.5, 1.0, 1.5]),  # the 3.0 s case
    (99, 30.0, ClipSpec(window_s=1.5, stride_s=0.5, frames=30), [0.0, 0.5, 1.0, 1.5, 2.0]),  # 3.3 s: tail covers 1.3 s
    (90, 30.0, ClipSpec(window_s=1.0, frames=4), [0.0, 1.0, 2.0]),  # contiguous, exact fit
    (105, 30.0, ClipSpec(window_s=1.0, frames=4), [0.0, 1.0, 2.0, 3.0]),  # contiguous: 0.5 s tail kept
])
def test_tail_only_when_the_end_is_uncovered(n, fps, spec, starts):
    windows = make_windows(n, fps, spec)
    assert [w.start_s for w in windows] == starts  # by hand
    streamed = [w for w, _ in cut_clips(_frames(n), fps, spec)]
    assert streamed == windows


def test_variable_rate_positions_pick_the_frame_on_screen():
    # 20 frames at 10 fps, then 60 at 30 fps: 4 s, average 20 fps (80 frames);
    # positions are timestamp x 20
    times = [i * 0.1 for i in range(20)] + [2 + i / 30 for i in range(60)]
    positions = np.maximum.accumulate(np.array(times) * 20.0)
    spec = ClipSpec(window_s=1.0, frames=4)
    windows = make_windows(80, 20.0, spec, positions)
    assert [(w.start_s, w.end_s) for w in windows] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)]
    # samples at start + 0.125, 0.375, ...; by hand, the frame on screen:
    assert windows[0].indices == (1, 3, 6, 8)  # 10 fps part: floor(t * 10)
    assert windows[2].indices == (23, 31, 38, 46)  # 30 fps part: 20 + floor((t - 2) * 30)
    streamed = list(cut_clips(((i, float(positions[i]), g) for i, _, g in _frames(80)), 20.0, spec))
    assert [w for w, _ in streamed] == windows
    assert streamed[2][1][:, 0, 0, 0].tolist() == [23, 31, 38, 46]


def _frames(n, needed=None, calls=None):
    """A constant-rate stream: frame i at position i, pixels = i % 256."""
    for i in range(n):
        if needed is not None and i not in needed:
            continue

        def get(i=i):
            if calls is not None:
                calls.append(i)
            return np.full((2, 2, 3), i % 256, np.uint8) + np.zeros((2, 2, 3), np.uint8)
        yield i, float(i), get


@pytest.mark.parametrize("n, fps, spec", [
    (300, 30.0, VIDEOBERT), (301, 29.97, VIDEOBERT), (24, 30.0, VIDEOBERT), (132, 25.0, ClipSpec(1.6, None, 4)),
    (100, 30.0, ClipSpec(window_s=1.0, stride_s=0.4, frames=7, min_tail=0.0)), (1, 30.0, VIDEOBERT),
])
def test_streaming_and_indexed_cuts_agree_with_the_window_rule(n, fps, spec):
    windows = make_windows(n, fps, spec)
    needed = {i for w in windows for i in w.indices}
    calls = []
    streamed = list(cut_clips(_frames(n, calls=calls), fps, spec))  # PyAV style: count unknown
    indexed = list(cut_clips(_frames(n, needed), fps, spec, num_frames=n))  # decord style
    assert [w for w, _ in streamed] == windows == [w for w, _ in indexed]
    for (w, a), (_, b) in zip(streamed, indexed):
        assert np.array_equal(a, b)
        assert a[:, 0, 0, 0].tolist() == [i % 256 for i in w.indices]
    # frames no window uses are never converted, except those of a tail window
    # that turns out too short once the stream ends (at most one window's worth per overlap)
    overlap = int(np.ceil(spec.window_s / spec.stride))
    assert len(set(calls) - needed) <= spec.frames * overlap
    assert len(calls) == len(set(calls))  # and each at most once


def test_streaming_holds_a_bounded_buffer():
    """An hour-long stream (108,000 frames of 60 KB = 6.5 GB if kept) in a few MB."""
    spec = ClipSpec(window_s=1.5, frames=30)

    def frames():
        for i in range(108_000):
            yield i, float(i), (lambda: np.ones((100, 200, 3), np.uint8))

    tracemalloc.start()
    count = sum(1 for _ in cut_clips(frames(), 30.0, spec))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 2400
    assert peak < 20e6


def test_a_tail_clip_ends_where_the_video_does():
    """bikes.mp4's 250 frames at 25 fps (10.0 s) in 1.5 s windows: the tail
    window starts at 9.0 s and its clip ends at 10.0 s, not 10.5 s; both the
    indexed and the streaming cut say so."""
    windows = make_windows(250, 25.0, VIDEOBERT)
    assert (windows[-1].start_s, windows[-1].end_s, windows[-1].padded) == (9.0, 10.0, True)
    assert [w.end_s for w in windows[:-1]] == pytest.approx([1.5 * (k + 1) for k in range(6)])
    frames = ((i, float(i), (lambda: np.zeros((2, 2, 3), np.uint8))) for i in range(250))
    streamed = [w for w, _ in cut_clips(frames, 25.0, VIDEOBERT)]
    assert [(w.start_s, w.end_s) for w in streamed] == [(w.start_s, w.end_s) for w in windows]
    (short,) = make_windows(24, 30.0, VIDEOBERT)   # 0.8 s, one padded clip: [0, 0.8)
    assert (short.start_s, short.end_s) == (0.0, 0.8)
