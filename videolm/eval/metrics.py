"""Retrieval metrics from a score matrix: R@K, median rank, mean rank.

Everything here is a pure function of numpy arrays. A *query* has a set of
correct gallery items (``gt``, CSR: ``indptr`` and ``indices``); its rank is
the 1-based position of its **best-ranked correct item** in the gallery
sorted by descending score. Other correct items never count against it.

**Ties.** Let ``s*`` be the query's best correct score, ``g`` the number of
wrong items scoring above it, ``t`` the wrong items scoring exactly ``s*`` and
``c`` the correct items scoring exactly ``s*``.

- ``pessimistic`` (default): rank = 1 + g + t. A correct item tied with wrong
  ones ranks after all of them, so a constant scorer gets rank N (R@K = 0, at
  or below chance) and can never look good.
- ``optimistic``: rank = 1 + g. A constant scorer gets R@1 = 100 %: shown only
  to make the point; CLIP4Clip's ``np.where(sx - d == 0)`` formula is close to
  this and also counts a tied query several times.
- ``mean``: the expectation under a uniformly random order of the tied block:
  rank = 1 + g + t / (c + 1), and R@K is the exact probability that the first
  correct item lands within the top K (hypergeometric), not ``rank <= K``. A
  constant scorer gets chance exactly.

R@K is in percent; MdR and MnR are 1-based (MdR is numpy's median, the mean of
the two middle ranks for an even count).

**NaN** scores (a model whose weights overflowed) rank below every number,
ties among themselves: a model that scores everything NaN gets a constant
scorer's figures (pessimistic R@1 = 0), never a perfect one (every
comparison with NaN is false, which would rank each query first).

**Chance** is computed, not sampled: for a query with ``c`` correct items in a
gallery of ``n``, a random order puts the first correct item within the top K
with probability ``1 - C(n-c, K) / C(n, K)`` (``K / n`` when c = 1); its
expected rank is ``(n + 1) / (c + 1)``; its median is where the rank's
distribution function reaches 1/2 (``(n + 1) / 2`` when c = 1). Chance R@K
and MnR average over queries; chance MdR is the median of the pooled
distribution (the queries' distribution functions averaged), which a random
scorer's MdR over many queries approaches, also when queries have different
numbers of correct items (v2t with ragged caption counts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# scipy (gammaln, binom) is imported where it is used: `videolm --help` imports TIES from here, and
# scipy.stats alone took 2 s of every command's start on 2 cores

TIES = ("pessimistic", "optimistic", "mean")
DEFAULT_KS = (1, 5, 10)
BLOCK = 1024  # queries scored at a time (bounds the memory of the comparisons)


@dataclass
class GroundTruth:
    """Correct gallery items per query, CSR: query q's are ``indices[indptr[q]:indptr[q+1]]``."""

    indptr: np.ndarray   # (Q + 1,) int64
    indices: np.ndarray  # (nnz,) int64

    @classmethod
    def from_lists(cls, lists) -> "GroundTruth":
        lists = [np.unique(np.asarray(x, dtype=np.int64).ravel()) for x in lists]   # an item listed twice counts once
        if any(len(x) == 0 for x in lists):
            raise ValueError("every query needs at least one correct gallery item")
        indptr = np.zeros(len(lists) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(x) for x in lists])
        return cls(indptr, np.concatenate(lists) if lists else np.zeros(0, np.int64))

    @classmethod
    def single(cls, targets) -> "GroundTruth":
        """One correct item per query: ``targets[q]``."""
        targets = np.asarray(targets, dtype=np.int64)
        return cls(np.arange(len(targets) + 1, dtype=np.int64), targets.copy())

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)

    def rows(self, start: int, stop: int) -> "GroundTruth":
        lo, hi = self.indptr[start], self.indptr[stop]
        return GroundTruth(self.indptr[start:stop + 1] - lo, self.indices[lo:hi])

    def transpose(self, num_gallery: int) -> "GroundTruth":
        """Gallery item -> the queries it is correct for (every item must have one)."""
        query_of = np.repeat(np.arange(len(self)), self.counts())
        order = np.argsort(self.indices, kind="stable")
        counts = np.bincount(self.indices, minlength=num_gallery)
        indptr = np.zeros(num_gallery + 1, dtype=np.int64)
        indptr[1:] = np.cumsum(counts)
        if (counts == 0).any():
            raise ValueError(f"gallery item {int(np.flatnonzero(counts == 0)[0])} is correct for no query")
        return GroundTruth(indptr, query_of[order])


@dataclass
class RankStats:
    """Per query: wrong items above the best correct score, wrong and correct items tied with it."""

    greater: np.ndarray  # (Q,) int64
    tied: np.ndarray     # (Q,) int64 wrong items with exactly the best correct score
    tied_correct: np.ndarray  # (Q,) int64 correct items with that score (>= 1)
    gallery: int


def rank_stats(scores: np.ndarray, gt: GroundTruth) -> RankStats:
    """Counts that every tie rule needs, from a (Q, N) score matrix."""
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] != len(gt):
        raise ValueError(f"scores {scores.shape} do not match {len(gt)} queries")
    Q, N = scores.shape
    if len(gt.indices) and (gt.indices.min() < 0 or gt.indices.max() >= N):
        raise ValueError(f"a correct item's index is outside the gallery of {N} (0..{N - 1})")
    greater = np.zeros(Q, np.int64)
    tied = np.zeros(Q, np.int64)
    tied_correct = np.zeros(Q, np.int64)
    for start in range(0, Q, BLOCK):
        stop = min(Q, start + BLOCK)
        block, sub = scores[start:stop], gt.rows(start, stop)
        if block.dtype.kind == "f" and np.isnan(block).any():   # NaN: below every number (module doc)
            block = np.where(np.isnan(block), -np.inf, block)
        row_of = np.repeat(np.arange(stop - start), sub.counts())      # (nnz,)
        correct = block[row_of, sub.indices]                            # (nnz,) scores of the correct items
        best = np.full(stop - start, -np.inf, dtype=np.float64)
        np.maximum.at(best, row_of, correct)
        best_b = best.astype(block.dtype)[:, None]
        above = (block > best_b).sum(1)                                 # correct items are never above best
        equal = (block == best_b).sum(1)
        c = np.bincount(row_of, weights=(correct == best_b[row_of, 0]), minlength=stop - start).astype(np.int64)
        greater[start:stop], tied_correct[start:stop], tied[start:stop] = above, c, equal - c
    return RankStats(greater, tied, tied_correct, N)


def ranks(stats: RankStats, ties: str = "pessimistic") -> np.ndarray:
    """(Q,) 1-based rank of each query's best correct item under a tie rule (float for ``mean``)."""
    if ties == "pessimistic":
        return 1 + stats.greater + stats.tied
    if ties == "optimistic":
        return 1 + stats.greater
    if ties == "mean":
        return 1 + stats.greater + stats.tied / (stats.tied_correct + 1)
    raise ValueError(f"ties must be one of {', '.join(TIES)}, not {ties!r}")


def _log_choose(n, k):
    from scipy.special import gammaln

    return gammaln(np.asarray(n, float) + 1) - gammaln(np.asarray(k, float) + 1) - gammaln(np.asarray(n - k, float) + 1)


def _first_hit_within(m: np.ndarray, wrong: np.ndarray, right: np.ndarray) -> np.ndarray:
    """P(the first of ``right`` correct items is within the first ``m`` of a random
    order of ``wrong + right`` items) = 1 - C(wrong, m) / C(wrong + right, m)."""
    m = np.asarray(m, dtype=np.int64)
    out = np.zeros(m.shape, dtype=np.float64)
    out[m > wrong] = 1.0
    mid = (m > 0) & (m <= wrong)
    if mid.any():
        w, r, mm = wrong[mid], right[mid], m[mid]
        out[mid] = 1.0 - np.exp(_log_choose(w, mm) - _log_choose(w + r, mm))
    return out


def recall_at(stats: RankStats, k: int, ties: str = "pessimistic") -> float:
    """R@k in percent."""
    if ties == "mean":
        hit = _first_hit_within(k - stats.greater, stats.tied, stats.tied_correct)
    else:
        hit = ranks(stats, ties) <= k
    return float(100.0 * np.mean(hit)) if len(stats.greater) else float("nan")


@dataclass
class Metrics:
    """One direction's figures: R@K in percent, MdR / MnR 1-based."""

    recall: dict[int, float]
    median_rank: float
    mean_rank: float
    queries: int
    gallery: int
    ranks: np.ndarray | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        out = {f"R@{k}": round(v, 4) for k, v in self.recall.items()}
        out.update(MdR=round(float(self.median_rank), 4), MnR=round(float(self.mean_rank), 4),
                   queries=self.queries, gallery=self.gallery)
        return out


def retrieval_metrics(scores: np.ndarray, gt: GroundTruth, ks=DEFAULT_KS, ties: str = "pessimistic") -> Metrics:
    """R@K, MdR and MnR of a (Q, N) score matrix (higher = more similar)."""
    stats = rank_stats(scores, gt)
    r = ranks(stats, ties)
    return Metrics({int(k): recall_at(stats, int(k), ties) for k in ks}, float(np.median(r)), float(np.mean(r)),
                   len(gt), stats.gallery, r)


@dataclass
class PairedChange:
    """Two rankings of the same queries at R@K, query by query."""

    k: int
    gained: int   # queries within the top K after, not before
    lost: int     # within the top K before, not after
    queries: int
    p: float      # exact two-sided McNemar p-value

    def as_dict(self) -> dict:
        return {"gained": self.gained, "lost": self.lost, "queries": self.queries, "p": round(self.p, 4)}


def paired_recall_change(before: np.ndarray, after: np.ndarray, k: int) -> PairedChange:
    """R@K of two rankings of the same queries (e.g. the dual encoder and its
    re-ranking), from their (Q,) integer ranks: the queries one gets within
    the top K and the other does not, and the exact two-sided McNemar test on
    them, a binomial test of the discordant queries at 1/2: the probability of
    a split at least this uneven if neither ranking were better. With
    ``mean`` ties R@K is a probability per query, not a hit, and this does not
    apply."""
    from scipy.stats import binom

    before, after = np.asarray(before), np.asarray(after)
    if before.shape != after.shape:
        raise ValueError(f"rank arrays of {before.shape} and {after.shape} queries")
    hit_before, hit_after = before <= k, after <= k
    gained, lost = int((hit_after & ~hit_before).sum()), int((hit_before & ~hit_after).sum())
    n = gained + lost
    p = 1.0 if n == 0 else min(1.0, 2.0 * float(binom.cdf(min(gained, lost), n, 0.5)))
    return PairedChange(int(k), gained, lost, len(before), p)


def chance_metrics(gt: GroundTruth, num_gallery: int, ks=DEFAULT_KS) -> Metrics:
    """What a random scorer gets in expectation (see the module doc)."""
    c = gt.counts()
    n = num_gallery
    recall = {int(k): float(100.0 * np.mean(_first_hit_within(np.full(len(c), k), n - c, c))) for k in ks}
    expected = (n + 1) / (c + 1)
    r = np.arange(1, n - int(c.min()) + 2) if len(c) else np.arange(1, 2)   # possible ranks of the first hit
    cdf = np.zeros(len(r), dtype=np.float64)                              # pooled over the queries
    values, share = np.unique(c, return_counts=True)
    for value, count in zip(values, share):
        cdf += count / len(c) * _first_hit_within(r, np.full(len(r), n - value), np.full(len(r), value))
    first = min(int(np.searchsorted(cdf, 0.5 - 1e-12)), len(r) - 1)      # first rank with cdf >= 1/2
    median = r[first] + (0.5 if abs(cdf[first] - 0.5) < 1e-9 else 0.0)
    return Metrics(recall, float(median) if len(c) else float("nan"), float(np.mean(expected)), len(c), n)


def group_max(scores: np.ndarray, group_of: np.ndarray, num_groups: int) -> np.ndarray:
    """(Q, G) from (Q, M) by taking, per query, the max over each group's
    columns (CLIP4Clip's multi-caption video->text: a video's caption set
    scores as its best caption). Ragged groups are fine."""
    group_of = np.asarray(group_of, dtype=np.int64)
    order = np.argsort(group_of, kind="stable")
    counts = np.bincount(group_of, minlength=num_groups)
    if (counts == 0).any():
        raise ValueError(f"group {int(np.flatnonzero(counts == 0)[0])} has no column")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.maximum.reduceat(np.asarray(scores)[:, order], starts, axis=1)


def group_argmax(scores: np.ndarray, group_of: np.ndarray, num_groups: int) -> np.ndarray:
    """(Q, G) column of ``scores`` that gives each query its ``group_max`` of
    each group (the first such column on ties)."""
    scores = np.asarray(scores)
    group_of = np.asarray(group_of, dtype=np.int64)
    order = np.argsort(group_of, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(group_of, minlength=num_groups))[:-1]])
    best = group_max(scores, group_of, num_groups)                       # (Q, G)
    hit = scores[:, order] == np.repeat(best, np.diff(np.append(starts, len(order))), axis=1)
    position = np.arange(len(order))
    first = np.where(hit, position, len(order))                          # the first hit of each group
    return order[np.minimum.reduceat(first, starts, axis=1)]


def dual_softmax(scores: np.ndarray, temperature: float = 100.0) -> np.ndarray:
    """DSL (CAMoE): re-weight each query's scores by a softmax over *all
    queries* for each gallery item. It uses the whole test query set at
    inference, so videolm reports it only on request, as its own row."""
    s = np.asarray(scores, dtype=np.float64) * temperature
    s = s - s.max(0, keepdims=True)
    prior = np.exp(s)
    prior /= prior.sum(0, keepdims=True)
    return (np.asarray(scores, dtype=np.float64) * prior).astype(np.float32)
