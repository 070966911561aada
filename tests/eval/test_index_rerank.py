"""faiss indexes against numpy brute force; re-ranking against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest

from videolm.eval.index import IndexConfig, build_index, load_index
from videolm.eval.rerank import rerank


def normalised(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_top(q, g, k):
    s = q @ g.T
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, 1), ids


def test_flat_index_is_exact_and_reloads(tmp_path):
    rng = np.random.default_rng(0)
    g, q = normalised(rng, 500, 24), normalised(rng, 20, 24)
    index = build_index(g)
    scores, ids = index.search(q, 10)
    ref_scores, ref_ids = brute_top(q, g, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
    index.save(str(tmp_path))
    again = load_index(str(tmp_path))
    assert again.describe() == index.describe()
    np.testing.assert_array_equal(again.search(q, 10)[1], ids)
    assert load_index(str(tmp_path / "nothing")) is None


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_find_the_neighbours(tmp_path, kind):
    rng = np.random.default_rng(1)
    centres = normalised(rng, 40, 32)
    g = centres[rng.integers(0, 40, 4000)] + 0.3 * rng.normal(size=(4000, 32)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q = g[rng.integers(0, 4000, 50)] + 0.2 * rng.normal(size=(50, 32)).astype(np.float32)  # queries near the data
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    index = build_index(g, IndexConfig(kind=kind, ivf_nprobe=24))
    _, ids = index.search(q, 10)
    _, ref = brute_top(q, g, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, ref)])
    assert recall >= 0.9
    d = index.describe()
    assert d["kind"] == kind and ("efSearch" in d if kind == "hnsw" else d["nprobe"] == 24)
    index.save(str(tmp_path))
    np.testing.assert_array_equal(load_index(str(tmp_path)).search(q, 10)[1], ids)


def test_rerank_reorders_the_top_k_only():
    dual = np.array([[0.9, 0.8, 0.7, 0.6, 0.5],
                     [0.1, 0.2, 0.3, 0.4, 0.5]], dtype=np.float32)
    align = {(0, 0): -1.0, (0, 1): 2.0, (0, 2): 0.5, (1, 4): 0.0, (1, 3): 3.0, (1, 2): 1.0}
    seen = []

    def score(pairs):
        seen.append(pairs.copy())
        return np.array([align[(int(q), int(g))] for q, g in pairs])

    out = rerank(dual, 3, score, "align")
    assert sorted(map(tuple, seen[0].tolist())) == sorted(align)          # only the top 3 of each row
    order = np.argsort(-out, axis=1, kind="stable")
    assert order[0].tolist() == [1, 2, 0, 3, 4]     # by alignment, then the rest in dual order
    assert order[1].tolist() == [3, 2, 4, 1, 0]
    summed = rerank(dual, 3, score, "align+cosine")
    assert summed[0, 1] == pytest.approx(2.0 + 0.8) and summed[1, 4] == pytest.approx(0.0 + 0.5)
    assert np.argsort(-summed, axis=1, kind="stable")[0].tolist() == [1, 2, 0, 3, 4]
    scaled = rerank(dual, 3, score, "align+dual", dual_scale=10.0)        # the dual logit cos / tau
    assert scaled[0, 0] == pytest.approx(-1.0 + 9.0) and scaled[0, 1] == pytest.approx(2.0 + 8.0)
    assert np.argsort(-scaled, axis=1, kind="stable")[0].tolist() == [1, 0, 2, 3, 4]
    weighted = rerank(dual, 3, score, "align+dual", dual_scale=10.0, weight=0.25)  # 0.25 * logit + cos / tau
    assert weighted[0, 0] == pytest.approx(-0.25 + 9.0) and weighted[0, 1] == pytest.approx(0.5 + 8.0)
    assert np.argsort(-weighted, axis=1, kind="stable")[0].tolist() == [0, 1, 2, 3, 4]


def test_group_max_rerank_takes_the_top_k_groups():
    """Video -> caption sets (group-max): 3 videos x 4 captions; the caption
    sets' dual scores put the right video second, and its 4 captions fill the
    top 4 captions of the row. Re-ranking the top 2 *groups* re-scores the
    best caption of videos 1 and 0 (the top 2 caption sets), and the oracle
    alignment head lifts video 0 to first; the top 4 *captions* would all be
    video 1's."""
    from videolm.eval.metrics import group_argmax
    from videolm.eval.rerank import rerank_groups

    group_of = np.repeat(np.arange(3), 4)                           # caption j belongs to video j // 4
    dual = np.array([[0.5, 0.1, 0.2, 0.1,   0.9, 0.8, 0.7, 0.6,   0.3, 0.2, 0.1, 0.0]], np.float32)
    assert group_argmax(dual, group_of, 3).tolist() == [[0, 4, 8]]
    seen = []

    def oracle(pairs):   # [video, caption]: high where the caption is the query video's (video 0)
        seen.append(pairs.copy())
        return np.where(pairs[:, 1] // 4 == pairs[:, 0], 5.0, -5.0)

    out = rerank_groups(dual, group_of, 3, 2, oracle)
    assert sorted(map(tuple, seen[0].tolist())) == [(0, 0), (0, 4)]   # videos 1 and 0, through their best captions
    assert np.argsort(-out[0], kind="stable").tolist() == [0, 1, 2]
    # shuffled columns: the same groups, the same pairs
    perm = np.random.default_rng(0).permutation(12)
    seen.clear()
    out2 = rerank_groups(dual[:, perm], group_of[perm], 3, 2, lambda p: oracle(np.stack([p[:, 0], perm[p[:, 1]]], 1)))
    assert np.allclose(out2, out)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_a_one_item_gallery_is_a_flat_index_and_says_so(tmp_path, kind):
    index = build_index(normalised(np.random.default_rng(0), 1, 8), IndexConfig(kind=kind))
    assert index.describe() == {"kind": "flat", "size": 1, "dim": 8}
    index.save(str(tmp_path))
    assert load_index(str(tmp_path)).describe()["kind"] == "flat"
