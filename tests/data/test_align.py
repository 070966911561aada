"""Alignment rules on hand-built clip times (values worked out by hand)."""

import numpy as np
import pytest

from videolm.data.align import align_span, asr_window, cap_clips, nearest_clip, subsample_clips

TILES = np.array([[0.0, 1.5], [1.5, 3.0], [3.0, 4.5], [4.5, 6.0]])


def aligned(times, start, end, min_overlap=0.5):
    return align_span(np.asarray(times, float), start, end, min_overlap).tolist()


@pytest.mark.parametrize("start,end,expected", [
    (0.0, 6.0, [0, 1, 2, 3]),      # the whole video
    (1.5, 3.0, [1]),               # exactly one window: its neighbours only touch it
    (0.0, 1.5, [0]),               # touching at 1.5 is no overlap
    (0.3, 0.9, [0]),               # inside one clip (0.6 s overlap >= 0.5 x 0.6)
    (1.0, 2.0, [0, 1]),            # 0.5 s in each, half the 1.0 s span each
    (1.4, 3.0, [1]),               # grazes clip 0 by 0.1 s < 0.5 x 1.5
    (0.75, 3.75, [0, 1, 2]),       # 0.75 s of clips 0 and 2 = half of each
    (0.8, 3.7, [1]),               # 0.7 s of clips 0 and 2: less than half of either
])
def test_overlap_rule(start, end, expected):
    assert aligned(TILES, start, end) == expected


@pytest.mark.parametrize("start,end,expected", [
    (7.0, 9.0, [3]),     # past the end: the last clip
    (-2.0, -1.0, [0]),   # before the start: the first
    (2.0, 2.0, [1]),     # zero length inside clip 1
    (3.0, 3.0, [2]),     # zero length on a boundary: windows are [start, end), so clip 2
    (6.0, 6.0, [3]),     # zero length at the very end
])
def test_fallback_is_the_nearest_clip(start, end, expected):
    assert aligned(TILES, start, end) == expected


def test_gaps_and_overlapping_windows():
    gappy = [[0.0, 1.0], [2.0, 3.0], [5.0, 6.0]]
    assert aligned(gappy, 1.1, 1.3) == [0]         # midpoint 1.2: 0.2 from clip 0, 0.8 from clip 1
    assert aligned(gappy, 1.4, 1.8) == [1]         # midpoint 1.6: 0.4 from clip 1
    assert aligned(gappy, 1.25, 1.75) == [0]       # midpoint 1.5: equidistant, the earlier clip
    assert aligned(gappy, 0.5, 5.5) == [0, 1, 2]
    overlapping = [[0.0, 1.5], [0.75, 2.25], [1.5, 3.0]]  # stride 0.75
    assert aligned(overlapping, 0.3, 0.9) == [0]   # 0.6 in clip 0, 0.15 in clip 1 (< 0.3)
    assert aligned(overlapping, 1.0, 2.0) == [0, 1, 2]
    assert nearest_clip(np.asarray(overlapping), 1.0) == 0  # first window containing t


def test_min_overlap_is_a_knob():
    # 0.5 s in each of clips 0 and 1 is < 0.6 x 1.0: none qualifies, the midpoint 1.5 lies in clip 1
    assert aligned(TILES, 1.0, 2.0, min_overlap=0.6) == [1]
    assert aligned(TILES, 1.4, 3.0, min_overlap=0.05) == [0, 1]


def test_cap_spread_takes_one_clip_per_equal_run():
    idx = np.arange(100, 110)  # n = 10, max 4: runs [0,2) [2,5) [5,7) [7,10)
    runs = [(0, 2), (2, 5), (5, 7), (7, 10)]
    seen = [set() for _ in runs]
    for seed in range(200):
        got = cap_clips(idx, 4, np.random.default_rng(seed), "spread")
        assert len(got) == 4 and np.all(np.diff(got) > 0)
        for (lo, hi), pick, s in zip(runs, got - 100, seen):
            assert lo <= pick < hi
            s.add(int(pick))
    assert seen == [set(range(lo, hi)) for lo, hi in runs]  # every clip of a run gets picked


def test_cap_window_is_contiguous_and_short_inputs_pass_through():
    idx = np.arange(10)
    firsts = set()
    for seed in range(100):
        got = cap_clips(idx, 4, np.random.default_rng(seed), "window")
        assert np.array_equal(got, np.arange(got[0], got[0] + 4))
        firsts.add(int(got[0]))
    assert firsts == set(range(7))
    assert cap_clips(idx[:3], 4, np.random.default_rng(0)).tolist() == [0, 1, 2]
    assert cap_clips(idx[:4], 4, np.random.default_rng(0)).tolist() == [0, 1, 2, 3]
    a = cap_clips(idx, 3, np.random.default_rng(7))
    assert np.array_equal(a, cap_clips(idx, 3, np.random.default_rng(7)))  # seeded


def test_asr_window():
    counts = [3, 4, 5, 2]
    assert asr_window(counts, 0, 7) == 2    # 3 + 4 = 7 fits, + 5 does not
    assert asr_window(counts, 0, 6) == 1    # 3 + 4 > 6
    assert asr_window(counts, 1, 11) == 4   # 4 + 5 + 2 = 11, to the end
    assert asr_window(counts, 2, 3) == 3    # the first segment alone exceeds: still taken
    assert asr_window(counts, 3, 100) == 4


def test_subsample_keeps_every_sth_clip_with_a_random_stride_and_offset():
    clips = np.arange(10, 30)
    seen = set()
    for seed in range(200):
        kept = subsample_clips(clips, 5, np.random.default_rng(seed))
        steps = set(np.diff(kept).tolist())
        assert len(steps) == 1, kept  # one stride per example
        stride = steps.pop()
        assert 1 <= stride <= 5 and 0 <= kept[0] - 10 < stride  # offset in [0, stride)
        assert len(kept) == len(range(kept[0] - 10, 20, stride))  # to the end
        seen.add(stride)
    assert seen == {1, 2, 3, 4, 5}
    # off (1), a single clip, and a stride past the end keep something
    rng = np.random.default_rng(0)
    assert subsample_clips(clips, 1, rng) is clips and subsample_clips(clips[:1], 5, rng).tolist() == [10]
    assert len(subsample_clips(clips[:2], 5, np.random.default_rng(3))) >= 1

