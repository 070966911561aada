import numpy as np
import pytest
from sklearn.cluster import KMeans

import videolm.tokenize.kmeans as kmeans_module
from videolm.tokenize.kmeans import (NO_WORD, HierarchicalKMeans, KMeansConfig, kmeans_plus_plus, lloyd_on_tables,
                                     squared_distances, train_from_tables, word_id, word_path)


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


def _sq_dist64(a, b):
    """(len(a), len(b)) squared distances in float64, where the expansion loses nothing that matters."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T


def _plain_lloyd(x, seeds, iterations, spherical=False):
    """Textbook Lloyd on the features in float64 from the given seed points;
    an empty cluster keeps its centroid. Returns the centroids."""
    x = x.astype(np.float64)
    c = x[seeds].copy()
    labels = None
    for _ in range(iterations):
        if spherical:
            new = (x @ (c / np.linalg.norm(c, axis=1, keepdims=True)).T).argmax(1)
        else:
            new = _sq_dist64(x, c).argmin(1)
        if labels is not None and (new == labels).all():
            break
        labels = new
        for j in range(len(c)):
            if (labels == j).any():
                c[j] = x[labels == j].mean(0)
    return c / np.linalg.norm(c, axis=1, keepdims=True) if spherical else c


def test_squared_distances_and_seeding_from_the_table_match_the_features():
    rng = np.random.default_rng(3)
    # 2048-d: without the table, seeding's products come in several row blocks (see SMALL_PRODUCT)
    x = (rng.standard_normal((90, 2048)) + rng.integers(0, 6, size=(90, 1)) * 0.5).astype(np.float32)
    table = squared_distances(x)
    np.testing.assert_allclose(table, _sq_dist64(x, x), rtol=1e-4, atol=0.1)  # float32 |a|^2 + |b|^2 - 2ab
    for seed in range(5):
        a = kmeans_plus_plus(x, 7, np.random.default_rng(seed), runs=3)
        b = kmeans_plus_plus(x, 7, np.random.default_rng(seed), runs=3, table=table)
        assert np.array_equal(a.rows, b.rows) and a.potential == pytest.approx(b.potential, rel=1e-5)
        assert len(set(a.rows.tolist())) == 7  # distinct points
        assert np.array_equal(a.centres, x[a.rows])
        assert a.potential == pytest.approx(_sq_dist64(x, x[a.rows]).min(1).sum(), rel=1e-4)
        again = kmeans_plus_plus(x, 7, np.random.default_rng(seed), runs=3)
        assert np.array_equal(again.rows, a.rows)  # same seed, same centres


@pytest.mark.parametrize("with_table", [False, True])
def test_seeding_never_repeats_a_point_while_others_are_left(with_table):
    rng = np.random.default_rng(0)
    for trial in range(20):  # points on a few spots, plus distinct ones: zero-distance points must not be drawn
        spots = rng.standard_normal((3, 8)).astype(np.float32)
        x = np.concatenate([spots[rng.integers(3, size=20)], rng.standard_normal((6, 8)).astype(np.float32)])
        table = squared_distances(x) if with_table else None
        seeds = kmeans_plus_plus(x, 9, np.random.default_rng(trial), runs=2, table=table)
        assert len(np.unique(x[seeds.rows], axis=0)) == 9


@pytest.mark.parametrize("spherical", [False, True])
def test_lloyd_on_tables_matches_plain_lloyd_for_each_padded_node(spherical):
    rng = np.random.default_rng(1)
    nodes, seeds = [], []
    for n in (23, 60, 41):  # different sizes: the batch is padded to 60
        x = (rng.standard_normal((n, 32)) + rng.integers(0, 5, size=(n, 1)) * 2.5).astype(np.float32)
        if spherical:
            x /= np.linalg.norm(x, axis=1, keepdims=True)
        nodes.append(x)
        seeds.append(rng.choice(n, 4, replace=False))
    tables = np.zeros((3, 60, 60), np.float32)
    for p, x in enumerate(nodes):
        tables[p, : len(x), : len(x)] = squared_distances(x)
    w = lloyd_on_tables(tables, np.array([23, 60, 41]), np.stack(seeds), 50, spherical)
    for p, x in enumerate(nodes):
        ref = _plain_lloyd(x, seeds[p], 50, spherical)
        assert (w[p, len(x) :] == 0).all()  # padding takes no part
        centroids = w[p, : len(x)].T @ x
        if spherical:
            centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        np.testing.assert_allclose(centroids, ref, atol=1e-4)


def test_nodes_from_tables_in_one_batch_or_alone_give_the_same_centroids():
    rng = np.random.default_rng(2)
    samples = [(rng.standard_normal((n, 48)) + rng.integers(0, 4, size=(n, 1)) * 3).astype(np.float32)
               for n in (15, 37, 52)]
    cfg = KMeansConfig(k=5, depth=1)
    together = train_from_tables(samples, 5, cfg, [np.random.default_rng(s) for s in range(3)])
    for s, sample in enumerate(samples):
        alone = train_from_tables([sample], 5, cfg, [np.random.default_rng(s)])[0]
        np.testing.assert_allclose(together[s], alone, rtol=1e-5, atol=1e-5)
        seeds = kmeans_plus_plus(sample, 5, np.random.default_rng(s), runs=cfg.seedings)  # the same seeding
        np.testing.assert_allclose(alone, _plain_lloyd(sample, seeds.rows, cfg.iterations), atol=1e-4)


def test_table_batches_fit_their_padded_size_in_the_buffer():
    sizes = np.array([0, 30, 12, 90, 45, 12, 60, 200])
    nodes = np.array([2, 5, 1, 4, 6, 3, 7])  # in increasing size, as fit passes them
    batches = list(kmeans_module._batches(nodes, sizes, capacity=200))
    assert [p for b in batches for p in b] == nodes.tolist()
    assert all(len(b) * max(sizes[b]) <= 200 for b in batches)
    assert [len(b) for b in batches] == [4, 2, 1]  # 12, 12, 30, 45 (5 x 60 > 200); 60, 90 (3 x 200 > 200); 200


@pytest.mark.parametrize("spherical", [False, True])
def test_table_and_faiss_paths_find_the_same_blobs(monkeypatch, spherical):
    x, blob = _blobs(groups=4, per_group=4, points=12, dim=128)  # level-1 nodes of 48 points: the table path
    cfg = KMeansConfig(k=4, depth=2, seed=0, spherical=spherical)
    assert kmeans_module.table_points(cfg, 128) >= 48
    tables = HierarchicalKMeans.fit(x, cfg)
    monkeypatch.setattr(kmeans_module, "table_points", lambda config, dim: 0)  # every node through faiss
    features = HierarchicalKMeans.fit(x, cfg)
    for tree in (tables, features):
        ids = tree.encode(x).ids
        assert np.array_equal(ids[:, None] == ids[None, :], blob[:, None] == blob[None, :])
    np.testing.assert_allclose(tables.inertia, features.inertia, rtol=1e-4)
    monkeypatch.undo()
    again = HierarchicalKMeans.fit(x.copy(), cfg)  # same seed, same tree
    assert all(np.array_equal(a, b) for a, b in zip(again.centroids, tables.centroids))


def test_config_is_checked():
    with pytest.raises(ValueError, match="k must be >= 2"):
        KMeansConfig(k=1)
    with pytest.raises(ValueError, match="int32"):
        KMeansConfig(k=1000, depth=4)


def test_word_ids_do_not_depend_on_the_batch_far_from_the_origin():
    """Features with a large common offset: faiss.knn's BLAS path (used above
    a batch-size threshold) rounds ||x||^2 + ||c||^2 - 2xc and picked other
    words than one-row-at-a-time encoding; the root is searched exactly."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2400, 256)) + 100).astype(np.float32)
    tree = HierarchicalKMeans.fit(x, KMeansConfig(k=8, depth=2, seed=0))
    one_by_one = np.concatenate([tree.encode(x[i : i + 1]).ids for i in range(0, 600)])
    assert np.array_equal(tree.encode(x[:600], batch_size=600).ids, one_by_one)
    exact = ((x[:600, None, :].astype(np.float64) - tree.centroids[0][None].astype(np.float64)) ** 2).sum(-1)
    assert np.array_equal(tree.encode(x[:600], batch_size=600).ids // 8, exact.argmin(1))   # the root's choice
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        tree.encode(x, batch_size=0)


def test_a_tree_whose_levels_disagree_on_dim_is_refused():
    rng = np.random.default_rng(0)
    tree = HierarchicalKMeans.fit(rng.standard_normal((200, 8)).astype(np.float32), KMeansConfig(k=2, depth=2))
    cut = [tree.centroids[0], np.ascontiguousarray(tree.centroids[1][:, :2])]
    with pytest.raises(ValueError, match="level 1: centroids of shape"):
        HierarchicalKMeans(2, 2, cut, tree.children)
    with pytest.raises(ValueError, match="child counts must be 0, 1 or k=2"):
        HierarchicalKMeans(2, 2, tree.centroids, [tree.children[0], np.array([5, 2], np.int32)])
