"""Which clips go with which text: pure functions of clip times and spans.

The rules (also in docs/formats.md, "Corpus manifests"):

**Overlap.** A text span ``[s, e)`` (seconds) is paired with clip ``i``,
whose window is ``[a_i, b_i)``, when their overlap
``min(e, b_i) - max(s, a_i)`` is positive and at least ``min_overlap``
(default 0.5) times the shorter of the two, ``min(e - s, b_i - a_i)``. So a
span inside one clip gets that clip, a long span gets every clip it half
covers, and a clip that only touches the span (overlap 0) or grazes it is
left out.

**Fallback.** When no clip qualifies -- a zero-length span, a span in a gap
between windows, before the first or past the last clip -- the span gets the
one clip nearest its midpoint: the first window containing the midpoint,
otherwise the window with the nearest edge (the earlier one on a tie).

**Cap.** More than ``max_len`` aligned clips are cut down, in order, by one
of two seeded rules: ``spread`` splits them into ``max_len`` equal runs
(integer edges ``i * n // max_len``) and takes one random clip from each, so
the whole span stays covered; ``window`` takes a random run of ``max_len``
consecutive clips.

**Subsample (VideoBERT).** With ``clip_subsample = k > 1`` each example
first keeps every ``s``-th of its aligned clips, from a random offset in
``[0, s)``, with the stride ``s`` drawn uniformly from ``1 .. k`` (VideoBERT
subsamples its visual tokens by a random factor of 1 to 5, for robustness to
the speed of what is shown). It runs before the cap, and leaves one clip
(an image) as it is.

**ASR windows (VideoBERT).** An example starts at a given segment and adds
the following ones while the total token count stays within a budget; the
first segment is always taken, even when it alone exceeds the budget.
"""

from __future__ import annotations

import numpy as np


def align_span(times: np.ndarray, start: float, end: float, min_overlap: float = 0.5) -> np.ndarray:
    """Indices of the clips paired with the span [start, end); never empty.
    times: (n, 2) clip start/end seconds, n >= 1."""
    a, b = times[:, 0], times[:, 1]                                   # (n,), (n,)
    overlap = np.minimum(end, b) - np.maximum(start, a)               # (n,)
    need = min_overlap * np.minimum(end - start, b - a)               # (n,)
    hit = np.flatnonzero((overlap > 0) & (overlap >= need))
    if len(hit):
        return hit
    return np.array([nearest_clip(times, (start + end) / 2)])


def nearest_clip(times: np.ndarray, t: float) -> int:
    """The first window containing t, else the one whose nearer edge is closest."""
    a, b = times[:, 0], times[:, 1]
    inside = np.flatnonzero((a <= t) & (t < b))
    if len(inside):
        return int(inside[0])
    gap = np.maximum(a - t, t - b)  # distance to the window, > 0 outside it
    return int(np.argmin(gap))


def cap_clips(indices: np.ndarray, max_len: int, rng: np.random.Generator, how: str = "spread") -> np.ndarray:
    """At most max_len of the given clip indices, in order (see the module doc)."""
    n = len(indices)
    if n <= max_len:
        return indices
    if how == "window":
        first = int(rng.integers(0, n - max_len + 1))
        return indices[first : first + max_len]
    lo = np.arange(max_len) * n // max_len                            # (max_len,) run starts
    hi = (np.arange(max_len) + 1) * n // max_len                      # run ends, hi - lo >= 1 since n > max_len
    return indices[lo + rng.integers(0, hi - lo)]


def subsample_clips(indices: np.ndarray, max_stride: int, rng: np.random.Generator) -> np.ndarray:
    """Every s-th of the clip indices from a random offset, s uniform in
    1 .. max_stride (see the module doc); no draw at all when max_stride is 1."""
    if max_stride <= 1 or len(indices) <= 1:
        return indices
    stride = int(rng.integers(1, max_stride + 1))
    offset = int(rng.integers(0, stride))
    kept = indices[offset::stride]
    return kept if len(kept) else indices[:1]


def asr_window(token_counts, first: int, budget: int) -> int:
    """End (exclusive) of the run of segments that starts at ``first`` and
    stays within ``budget`` tokens; always at least ``first + 1``."""
    total, end = token_counts[first], first + 1
    while end < len(token_counts) and total + token_counts[end] <= budget:
        total += token_counts[end]
        end += 1
    return end
