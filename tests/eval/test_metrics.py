"""Every metric against an independent brute force written here: explicit
orderings of the gallery, explicit tie handling, the full score matrix."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from videolm.eval.metrics import (GroundTruth, chance_metrics, dual_softmax, group_max, recall_at, rank_stats, ranks,
                                  retrieval_metrics)


def orderings(row: np.ndarray):
    """Every order of the gallery consistent with descending scores (ties in any order)."""
    for perm in itertools.permutations(range(len(row))):
        if all(row[perm[i]] >= row[perm[i + 1]] for i in range(len(perm) - 1)):
            yield perm


def brute(scores, correct_sets, ks, rule):
    """(R@K dict, MdR, MnR) by sorting explicitly."""
    ranks, hits = [], {k: [] for k in ks}
    for row, correct in zip(scores, correct_sets):
        if rule == "mean":  # average over every consistent order
            firsts = [next(i + 1 for i, g in enumerate(p) if g in correct) for p in orderings(row)]
            ranks.append(np.mean(firsts))
            for k in ks:
                hits[k].append(np.mean([f <= k for f in firsts]))
            continue
        wrong_first = rule == "pessimistic"
        order = sorted(range(len(row)), key=lambda g: (-row[g], (g in correct) == wrong_first))
        first = next(i + 1 for i, g in enumerate(order) if g in correct)
        ranks.append(first)
        for k in ks:
            hits[k].append(first <= k)
    return {k: 100 * np.mean(v) for k, v in hits.items()}, float(np.median(ranks)), float(np.mean(ranks))


def check(scores, correct_sets, rule, ks=(1, 2, 3, 5)):
    gt = GroundTruth.from_lists([sorted(c) for c in correct_sets])
    m = retrieval_metrics(scores, gt, ks, rule)
    recall, mdr, mnr = brute(scores, correct_sets, ks, rule)
    for k in ks:
        assert m.recall[k] == pytest.approx(recall[k], abs=1e-9), (rule, k)
    assert m.median_rank == pytest.approx(mdr) and m.mean_rank == pytest.approx(mnr)


@pytest.mark.parametrize("rule", ["pessimistic", "optimistic", "mean"])
def test_random_scores_single_caption(rule):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(7, 6)).astype(np.float32)
    check(scores, [{i % 6} for i in range(7)], rule)


@pytest.mark.parametrize("rule", ["pessimistic", "optimistic", "mean"])
def test_tied_and_multi_correct(rule):
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 3, size=(9, 6)).astype(np.float32)  # many ties
    sets = [set(rng.choice(6, size=rng.integers(1, 4), replace=False).tolist()) for _ in range(9)]
    check(scores, sets, rule)


def test_hand_made_ranks():
    scores = np.array([[0.9, 0.5, 0.1],    # correct 0 -> rank 1
                       [0.9, 0.5, 0.1],    # correct 2 -> rank 3
                       [0.5, 0.5, 0.1]])   # correct 1, tied with 0 -> pessimistic 2, optimistic 1, mean 1.5
    gt = GroundTruth.single([0, 2, 1])
    assert retrieval_metrics(scores, gt, ties="pessimistic").ranks.tolist() == [1, 3, 2]
    assert retrieval_metrics(scores, gt, ties="optimistic").ranks.tolist() == [1, 3, 1]
    assert retrieval_metrics(scores, gt, ties="mean").ranks.tolist() == [1, 3, 1.5]
    m = retrieval_metrics(scores, gt, ks=(1,), ties="mean")
    assert m.recall[1] == pytest.approx(100 * (1 + 0 + 0.5) / 3)


def test_constant_scorer():
    n = 10
    scores = np.zeros((n, n), np.float32)
    gt = GroundTruth.single(np.arange(n))
    assert retrieval_metrics(scores, gt, ties="pessimistic").recall[1] == 0.0
    assert retrieval_metrics(scores, gt, ties="optimistic").recall[1] == 100.0
    mean = retrieval_metrics(scores, gt, ks=(1, 5), ties="mean")
    chance = chance_metrics(gt, n, ks=(1, 5))
    assert mean.recall[1] == pytest.approx(chance.recall[1]) == pytest.approx(10.0)
    assert mean.recall[5] == pytest.approx(50.0)
    assert mean.mean_rank == pytest.approx((n + 1) / 2)


def clip4clip_compute_metrics(x):
    """CLIP4Clip's metrics.compute_metrics, as published (rows: queries, diagonal: correct)."""
    sx = np.sort(-x, axis=1)
    d = np.diag(-x)[:, np.newaxis]
    ind = np.where(sx - d == 0)[1]
    return {"R1": float(np.sum(ind == 0)) * 100 / len(ind), "MR": np.median(ind) + 1}


def test_clip4clip_overcounts_ties():
    # rows are queries, the diagonal is correct
    x = np.array([[1.0, 1.0, 0.0, 0.0],   # query 0: its video ties with one other at the top
                  [0.1, 0.9, 0.8, 0.7],   # query 1: clear rank 1
                  [0.9, 0.8, 0.1, 0.7],   # query 2: rank 4
                  [0.9, 0.1, 0.8, 0.7]],  # query 3: rank 3
                 dtype=np.float32)
    gt = GroundTruth.single(np.arange(4))
    theirs = clip4clip_compute_metrics(x)
    # query 0 adds two entries (ranks 0 and 1): R1 = 2 hits among 5 entries for 4 queries
    assert theirs["R1"] == pytest.approx(40.0)
    ours = {rule: retrieval_metrics(x, gt, ks=(1,), ties=rule).recall[1]
            for rule in ("pessimistic", "mean", "optimistic")}
    # by hand: query 1 is a clear top-1; query 0 is top-1 with probability 1/2; queries 2, 3 miss
    assert ours["pessimistic"] == pytest.approx(25.0)
    assert ours["mean"] == pytest.approx(100 * (1 + 1 / 2) / 4)      # 37.5, the expectation
    assert ours["optimistic"] == pytest.approx(50.0)
    assert theirs["R1"] > ours["mean"]                                # the tied query weighs double


def test_chance_single_and_multi():
    gt = GroundTruth.single(np.zeros(4, np.int64))
    m = chance_metrics(gt, 1000, ks=(1, 5, 10))
    assert m.recall == pytest.approx({1: 0.1, 5: 0.5, 10: 1.0})
    assert m.median_rank == pytest.approx(500.5) and m.mean_rank == pytest.approx(500.5)
    assert chance_metrics(GroundTruth.single([0]), 7).median_rank == 4
    # 2 correct out of 5: enumerate every order by brute force
    gt2 = GroundTruth.from_lists([[0, 1]])
    firsts = [next(i + 1 for i, g in enumerate(p) if g < 2) for p in itertools.permutations(range(5))]
    m2 = chance_metrics(gt2, 5, ks=(1, 2))
    assert m2.mean_rank == pytest.approx(np.mean(firsts))
    assert m2.recall[1] == pytest.approx(100 * np.mean([f <= 1 for f in firsts]))
    assert m2.recall[2] == pytest.approx(100 * np.mean([f <= 2 for f in firsts]))
    assert m2.median_rank == pytest.approx(np.median(firsts))


def test_video_to_text_rules_differ_on_multi_caption():
    rng = np.random.default_rng(3)
    groups = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])       # ragged: 3, 2, 4, 1 captions
    s = rng.normal(size=(4, len(groups))).astype(np.float32)  # videos x captions
    # best caption among all captions (LAVIS / ALBEF)
    best = retrieval_metrics(s, GroundTruth.from_lists([np.flatnonzero(groups == v) for v in range(4)]), ks=(1, 2))
    # group max (CLIP4Clip): brute force
    grouped = np.array([[s[v, groups == g].max() for g in range(4)] for v in range(4)])
    np.testing.assert_array_equal(group_max(s, groups, 4), grouped)
    by_group = retrieval_metrics(grouped, GroundTruth.single(np.arange(4)), ks=(1, 2))
    brute_best = brute(s, [set(np.flatnonzero(groups == v)) for v in range(4)], (1, 2), "pessimistic")
    assert best.recall[1] == pytest.approx(brute_best[0][1])
    assert by_group.recall[1] >= best.recall[1]   # ranking 4 groups is never harder than ranking 10 captions


def test_ground_truth_transpose():
    gt = GroundTruth.from_lists([[0], [0], [1], [2], [2]])     # captions -> video
    back = gt.transpose(3)
    assert [back.indices[back.indptr[v]:back.indptr[v + 1]].tolist() for v in range(3)] == [[0, 1], [2], [3, 4]]


def test_dual_softmax_matches_camoe_formula():
    rng = np.random.default_rng(4)
    s = rng.normal(size=(5, 4)).astype(np.float32)
    t = 30.0
    e = np.exp(s * t)
    expected = s * (e / e.sum(0, keepdims=True))   # softmax over the queries of each gallery item
    np.testing.assert_allclose(dual_softmax(s, t), expected, rtol=1e-5, atol=1e-6)


def test_blocks_agree_with_one_block(monkeypatch):
    from videolm.eval import metrics

    rng = np.random.default_rng(5)
    s = rng.integers(0, 4, size=(50, 8)).astype(np.float32)
    gt = GroundTruth.single(rng.integers(0, 8, 50))
    whole = rank_stats(s, gt)
    monkeypatch.setattr(metrics, "BLOCK", 7)
    parts = rank_stats(s, gt)
    for name in ("greater", "tied", "tied_correct"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(parts, name))
    assert recall_at(whole, 1, "mean") == pytest.approx(recall_at(parts, 1, "mean"))


def test_paired_recall_change_by_hand_and_against_scipy():
    import math

    from scipy.stats import binomtest

    from videolm.eval.metrics import paired_recall_change

    before = np.array([1, 1, 2, 5, 1, 3, 1])
    after = np.array([1, 2, 1, 1, 4, 1, 1])
    c = paired_recall_change(before, after, 1)
    # hits before {0, 1, 4, 6}, after {0, 2, 3, 5, 6}: gained 2, 3, 5; lost 1, 4
    assert (c.gained, c.lost, c.queries) == (3, 2, 7)
    assert c.p == pytest.approx(1.0)  # 2 * (C(5,0) + C(5,1) + C(5,2)) / 2^5 = 1
    c5 = paired_recall_change(before, after, 5)
    assert (c5.gained, c5.lost) == (0, 0) and c5.p == 1.0
    # 9 gained, 18 lost of 40: p = 2 * sum_{i<=9} C(27, i) / 2^27
    before = np.array([1] * 18 + [2] * 9 + [1] * 5 + [3] * 8)
    after = np.array([2] * 18 + [1] * 9 + [1] * 5 + [3] * 8)
    c = paired_recall_change(before, after, 1)
    by_hand = 2 * sum(math.comb(27, i) for i in range(10)) / 2 ** 27
    assert (c.gained, c.lost, c.queries) == (9, 18, 40)
    assert c.p == pytest.approx(by_hand, rel=1e-9) and c.p == pytest.approx(binomtest(9, 27).pvalue, rel=1e-9)
    with pytest.raises(ValueError, match="rank arrays"):
        paired_recall_change(before, after[:3], 1)


def test_chance_median_rank_pools_queries_with_different_numbers_of_correct_items():
    """1000 queries with 1 correct item and 1000 with 100, gallery 1000: random
    scorers' MdR (measured, 10 draws) against the computed chance MdR; the
    median of the two groups' own medians (500.5 and about 7) would be 254."""
    n = 1000
    gt = GroundTruth.from_lists([[0]] * 1000 + [list(range(100))] * 1000)
    rng = np.random.default_rng(0)
    measured = [retrieval_metrics(rng.random((2000, n)).astype(np.float32), gt).median_rank for _ in range(10)]
    assert chance_metrics(gt, n).median_rank == pytest.approx(np.mean(measured), abs=3.0)


def test_nan_scores_rank_below_every_number():
    """A model whose weights overflowed scores NaN: every comparison with NaN is
    false, which without care ranks each query first (R@1 = 100)."""
    gt = GroundTruth.single(np.arange(5))
    nan = retrieval_metrics(np.full((5, 5), np.nan, np.float32), gt)
    assert nan.recall[1] == 0.0 and nan.median_rank == 5.0                    # a constant scorer's figures
    s = np.eye(5, dtype=np.float32)
    s[2, 2] = np.nan                                                          # one correct score lost
    one = retrieval_metrics(s, gt)
    assert one.recall[1] == 80.0 and one.ranks.tolist() == [1, 1, 5, 1, 1]


def test_ground_truth_lists_count_an_item_once_and_stay_in_the_gallery():
    s = np.array([[0.1, 0.5, 0.9], [0.2, 0.8, 0.3]], np.float32)   # a wrong item above item 1 in query 0
    stats = rank_stats(s, GroundTruth.from_lists([[1, 1], [1]]))
    assert stats.tied.tolist() == [0, 0] and ranks(stats).tolist() == [2, 1]
    with pytest.raises(ValueError, match="outside the gallery of 3"):
        rank_stats(s, GroundTruth.from_lists([[-1], [1]]))
