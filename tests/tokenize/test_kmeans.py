import numpy as np
import pytest
from sklearn.cluster import KMeans

from videolm.tokenize.kmeans import NO_WORD, HierarchicalKMeans, KMeansConfig, kmeans_plus_plus, word_id, word_path


def _blobs(groups: int, per_group: int, points: int, dim: int = 16, seed: int = 0):
    """Blobs in groups: group centres 100 apart, blobs 10 apart inside a
    group, points 0.3 around their blob. Returns (x, blob label)."""
    rng = np.random.default_rng(seed)
    group_centres = rng.standard_normal((groups, dim)) * 100
    blob_centres = (group_centres[:, None, :] + rng.standard_normal((groups, per_group, dim)) * 10).reshape(-1, dim)
    label = np.repeat(np.arange(len(blob_centres)), points)
    x = blob_centres[label] + rng.standard_normal((len(label), dim)) * 0.3
    order = rng.permutation(len(x))
    return x[order].astype(np.float32), label[order]


# ------------------------------------------------------------------ id arithmetic


def test_word_id_is_the_path_read_in_base_k():
    assert word_id((3, 0, 11, 2), 12) == 3 * 12**3 + 0 * 12**2 + 11 * 12 + 2 == 5318
    assert word_path(5318, 12, 4) == (3, 0, 11, 2)
    assert word_id((11, 11, 11, 11), 12) == 20735 and word_path(0, 12, 4) == (0, 0, 0, 0)
    for k, depth in ((2, 5), (3, 3), (12, 2)):  # every id, against numpy's mixed-radix conversion
        for w in range(k**depth):
            digits = tuple(int(d) for d in np.unravel_index(w, (k,) * depth))
            assert word_path(w, k, depth) == digits and word_id(digits, k) == w
    with pytest.raises(ValueError):
        word_path(12**4, 12, 4)
    with pytest.raises(ValueError):
        word_id((1, 12), 12)


def test_node_of_a_word_at_each_level_is_its_id_prefix():
    x, _ = _blobs(3, 3, 30)
    tree = HierarchicalKMeans.fit(x, KMeansConfig(k=3, depth=3, seed=1))
    ids = tree.encode(x).ids
    for level in range(3):
        # the level-l node is the path prefix; its centroid is the nearest of that node's siblings
        node = ids // 3 ** (2 - level)
        parent = node // 3
        cands = tree.centroids[level].reshape(-1, 3, x.shape[1])[parent]  # (N, 3, D)
        d = ((cands - x[:, None, :].astype(np.float64)) ** 2).sum(-1)
        ok = np.arange(3)[None, :] < tree.children[level][parent][:, None]
        d[~ok] = np.inf
        assert np.array_equal(node % 3, d.argmin(1))


# ------------------------------------------------------------------ fitting and encoding


def test_encode_matches_an_independent_descent(descend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 24)).astype(np.float32)
    tree = HierarchicalKMeans.fit(x, KMeansConfig(k=4, depth=3, seed=0))
    enc = tree.encode(x, batch_size=97)  # batches that cut across nodes
    ref_ids, ref_dist = descend(x, tree.centroids, tree.children, 4)
    assert np.array_equal(enc.ids, ref_ids)
    np.testing.assert_allclose(enc.distances, ref_dist, rtol=1e-4, atol=1e-4)
    # fit's own assignment (counts per leaf, total leaf inertia) agrees with the descent
    assert np.array_equal(tree.counts[-1], np.bincount(ref_ids, minlength=64))
    assert tree.inertia[-1] == pytest.approx(ref_dist.sum(), rel=1e-4)
    # a float16 memmap-like input is read the same way
    assert np.array_equal(tree.encode(x.astype(np.float16)).ids, descend(x.astype(np.float16), tree.centroids,
                                                                        tree.children, 4)[0])


def test_well_separated_blobs_share_a_word_iff_same_blob():
    x, blob = _blobs(groups=4, per_group=4, points=25)  # 16 blobs: k=4, depth=2 -> 16 words
    tree = HierarchicalKMeans.fit(x, KMeansConfig(k=4, depth=2, seed=0))
    ids = tree.encode(x).ids
    same_word = ids[:, None] == ids[None, :]
    same_blob = blob[:, None] == blob[None, :]
    assert np.array_equal(same_word, same_blob)
    assert len(np.unique(ids)) == 16 and (tree.counts[-1] == 25).all()

    flat, blob = _blobs(groups=5, per_group=1, points=40, seed=3)
    ids = HierarchicalKMeans.fit(flat, KMeansConfig(k=5, depth=1)).encode(flat).ids
    assert np.array_equal(ids[:, None] == ids[None, :], blob[:, None] == blob[None, :])


def test_same_seed_same_tree_other_seed_other_sample():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    cfg = KMeansConfig(k=5, depth=2, seed=7, points_per_centroid=64)  # nodes train on samples
    a, b = HierarchicalKMeans.fit(x, cfg), HierarchicalKMeans.fit(x.copy(), cfg)
    for level in range(2):
        assert np.array_equal(a.centroids[level], b.centroids[level])
    assert np.array_equal(a.encode(x).ids, b.encode(x).ids)
    c = HierarchicalKMeans.fit(x, KMeansConfig(k=5, depth=2, seed=8, points_per_centroid=64))
    assert not np.array_equal(a.centroids[0], c.centroids[0])


def test_flat_quality_close_to_sklearn():
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((12, 32)) * 4
    x = (centres[rng.integers(12, size=3000)] + rng.standard_normal((3000, 32))).astype(np.float32)
    ours = HierarchicalKMeans.fit(x, KMeansConfig(k=10, depth=1, seed=0)).inertia[0]
    ref = [KMeans(10, init="k-means++", n_init=1, random_state=s).fit(x).inertia_ for s in range(3)]
    assert ours <= 1.02 * np.median(ref)


def test_small_nodes_stop_and_unreached_words_keep_their_parent_centroid(descend):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal((40, 8)) + 50, rng.standard_normal((40, 8)) - 50,
                        rng.standard_normal((2, 8)) * 0.1]).astype(np.float32)  # a cluster of 2 < k points
    tree = HierarchicalKMeans.fit(x, KMeansConfig(k=3, depth=3, seed=0))
    small = int(tree.encode(x[-2:]).ids[0] // 9)  # its level-1 node
    assert tree.children[1][small] == 1 and tree.counts[0][small] == 2
    assert list(tree.encode(x[-2:]).ids) == [small * 9, small * 9]  # digit 0 all the way down
    words = tree.word_centroids()
    assert words.shape == (27, 8) and np.isfinite(words).all()
    for w in range(small * 9, small * 9 + 9):  # every word under it is defined: the node's centroid
        np.testing.assert_array_equal(words[w], tree.centroids[0][small])
    assert (tree.counts[-1][small * 9 + 1 : small * 9 + 9] == 0).all()
    assert np.array_equal(tree.encode(x).ids, descend(x, tree.centroids, tree.children, 3)[0])


def test_degenerate_inputs_do_not_crash():
    same = np.ones((30, 4), np.float32)
    tree = HierarchicalKMeans.fit(same, KMeansConfig(k=3, depth=2))
    assert len(np.unique(tree.encode(same).ids)) == 1
    four = np.eye(4, dtype=np.float32)
    ids = HierarchicalKMeans.fit(four, KMeansConfig(k=4, depth=3)).encode(four).ids
    assert sorted(ids % 16) == [0, 0, 0, 0] and len(set(ids)) == 4  # n == k: one point per branch


def test_nan_rows_get_no_word_and_fit_refuses_them():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 8)).astype(np.float32)
    tree = HierarchicalKMeans.fit(x, KMeansConfig(k=3, depth=2))
    bad = x.copy()
    bad[5, 1], bad[9, 0] = np.nan, np.inf
    enc = tree.encode(bad)
    assert enc.ids[5] == enc.ids[9] == NO_WORD and np.isnan(enc.distances[[5, 9]]).all()
    keep = np.setdiff1d(np.arange(100), [5, 9])
    assert np.array_equal(enc.ids[keep], tree.encode(x).ids[keep])
    with pytest.raises(ValueError, match="NaN or Inf"):
        HierarchicalKMeans.fit(bad, KMeansConfig(k=3, depth=2))
    with pytest.raises(ValueError, match="need at least k=12"):
        HierarchicalKMeans.fit(x[:5], KMeansConfig(k=12, depth=1))
    with pytest.raises(ValueError, match=r"shape \(N, 8\)"):
        tree.encode(x[:, :4])


def test_spherical_ignores_the_norm_of_a_feature():
    x, blob = _blobs(3, 2, 20)
    tree = HierarchicalKMeans.fit(x, KMeansConfig(k=3, depth=2, spherical=True))
    scaled = x * np.random.default_rng(0).uniform(0.5, 4, size=(len(x), 1)).astype(np.float32)
    enc = tree.encode(scaled)
    assert np.array_equal(enc.ids, tree.encode(x).ids)
    np.testing.assert_allclose(np.linalg.norm(tree.word_centroids()[enc.ids], axis=1), 1, atol=1e-5)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(enc.distances, ((unit - tree.word_centroids()[enc.ids]) ** 2).sum(1), atol=1e-5)
    assert not np.shares_memory(scaled, enc.ids) and np.isfinite(scaled).all()


def test_kmeans_plus_plus_picks_k_distinct_data_points():
    x, blob = _blobs(4, 1, 50)
    seeds = kmeans_plus_plus(x, 4, np.random.default_rng(0), runs=3)
    centres = seeds.centres
    assert centres.shape == (4, 16)
    d = ((x[:, None, :].astype(np.float64) - centres[None].astype(np.float64)) ** 2).sum(-1)  # (N, 4)
    assert seeds.potential == pytest.approx(d.min(1).sum(), rel=1e-2)  # float32 |x|^2 - 2xc + |c|^2
    rows = [int(np.flatnonzero((x == c).all(1))[0]) for c in centres]  # each centre is a data point
    assert sorted(blob[rows]) == [0, 1, 2, 3]  # D^2 seeding puts one in each far-apart blob


def test_config_is_checked():
    with pytest.raises(ValueError, match="k must be >= 2"):
        KMeansConfig(k=1)
    with pytest.raises(ValueError, match="int32"):
        KMeansConfig(k=1000, depth=4)
