"""Hierarchical k-means with faiss: clip features in, visual-word ids out.

The tree has branching ``k`` and ``depth`` levels. Level 0 splits all points
into ``k`` clusters; each of those is split into ``k`` again, and so on. A word
is a path of digits ``(c_0, ..., c_{depth-1})``, each in ``[0, k)``, and its
id is that path read as a base-``k`` number::

    word_id = c_0 * k**(depth-1) + c_1 * k**(depth-2) + ... + c_{depth-1}

so there are ``k**depth`` words (VideoBERT: 12**4 = 20,736) and the id of
the node a word passes through at level ``l`` is ``word_id // k**(depth-1-l)``.
Centroids are kept per level in "slot" order: level ``l`` holds
``k**(l+1)`` rows and the children of node ``p`` are rows ``p*k .. p*k+k-1``.

Small nodes: a node with fewer than ``k`` training points (possibly none) is
not split; it gets one child, digit 0, which repeats its centroid, down to the
last level. Its other child slots are never chosen by ``encode`` but still hold
the parent's centroid, so every id in ``[0, k**depth)`` has a centroid (useful
to initialise an embedding table) even if no point reached it.

Fitting is breadth first. At each level every node with at least ``k``
points trains on at most ``points_per_centroid * k`` of them: the best of a
few greedy k-means++ seedings (run in lockstep, so they share each step),
then Lloyd iterations. A large node does this on its features, the
iterations in faiss. Nodes training on at most ``table_points`` points (a
few hundred) go in batches: each gets its table of pairwise squared
distances from one BLAS call, then seeding and iterations run on all the
batch's tables at once, so the fixed cost of the dozen numpy calls per step
is paid once per batch, not once per node. Only then is every point assigned to the nearest
child of its node, for the whole level in one faiss call
(``knn_L2sqr_by_idx`` with each point's own candidate children), so there is
no per-node copy of the data and no Python loop over points. Node samples go
through one reused buffer: fresh large allocations cost page faults, which
dominate on small nodes. ``encode`` descends the same way, one call per level.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import faiss
import numpy as np
from threadpoolctl import ThreadpoolController

from videolm.progress import Progress  # noqa: F401  (one class for every job; vocab, gallery and the CLI import it from here)

log = logging.getLogger(__name__)

NO_WORD = -1  # id given to rows that have no word (NaN/Inf features)
ASSIGN_CHUNK = 65536  # rows per assignment call: bounds the (rows, k) candidate-id array
ENCODE_BATCH = 16384  # rows per tree-descent batch in encode()
# OpenBLAS multiplies matrices with M * N * K <= 100^3 in a kernel that skips copying ("packing") the
# operands first; seeding's thin products (N x D by D x 12) ran 1.8x faster cut into blocks of that size
SMALL_PRODUCT = 100**3


@dataclass
class KMeansConfig:
    """How to fit a visual vocabulary; ``depth=1`` is flat k-means."""

    k: int = 12  # branching factor: children per node
    depth: int = 4  # levels; the vocabulary has k ** depth words
    iterations: int = 20  # at most this many Lloyd iterations per node (they stop once nothing moves)
    points_per_centroid: int = 128  # a node trains on at most k * this many of its points
    init_points_per_centroid: int = 128  # k-means++ seeds from at most k * this many of those
    seedings: int = 3  # k-means++ runs per node (in lockstep); the lowest potential starts the iterations
    sample_size: int = 200_000  # clips drawn from a store to fit on (bounds memory)
    spherical: bool = False  # L2-normalise features and centroids (cosine k-means)
    seed: int = 0

    def __post_init__(self):
        for name in ("k", "depth", "iterations", "points_per_centroid", "init_points_per_centroid", "seedings",
                     "sample_size"):
            if getattr(self, name) < (2 if name == "k" else 1):
                raise ValueError(f"{name} must be >= {2 if name == 'k' else 1}, got {getattr(self, name)}")
        if self.k ** self.depth >= 2**31 - 16:
            raise ValueError(f"k={self.k}, depth={self.depth} gives {self.k ** self.depth} words; "
                             "ids are stored as int32, keep k ** depth below 2**31")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Encoding:
    """Word ids of a batch of features and how far each is from its word."""

    ids: np.ndarray  # (N,) int64 word ids; NO_WORD (-1) for rows with NaN/Inf
    distances: np.ndarray  # (N,) float32 squared L2 distance to the word's centroid; NaN for NO_WORD


# ------------------------------------------------------------------ id arithmetic


def word_id(path, k: int) -> int:
    """The word id of a path of digits (most significant first)."""
    word = 0
    for digit in path:
        if not 0 <= digit < k:
            raise ValueError(f"digit {digit} is not in [0, {k})")
        word = word * k + int(digit)
    return word


def word_path(word: int, k: int, depth: int) -> tuple[int, ...]:
    """The digits of a word id, most significant first."""
    if not 0 <= word < k**depth:
        raise ValueError(f"word {word} is not in [0, {k ** depth})")
    digits = []
    for _ in range(depth):
        word, digit = divmod(word, k)
        digits.append(digit)
    return tuple(reversed(digits))


# ------------------------------------------------------------------ building blocks


def as_float32_rows(x: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 (N, D) array; copies only when it must."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected an (N, D) array of features, got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def finite_rows(x: np.ndarray) -> np.ndarray:
    """(N,) True where a row has no NaN/Inf."""
    finite = np.empty(len(x), bool)
    for a in range(0, len(x), 4096):  # chunks keep the boolean temporary small
        np.isfinite(x[a : a + 4096]).all(axis=1, out=finite[a : a + 4096])
    return finite


def normalise_rows(x: np.ndarray, inplace: bool = False) -> np.ndarray:
    """L2-normalise rows (spherical k-means); zero rows stay zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # (N, 1)
    np.maximum(norms, 1e-12, out=norms)
    if inplace:
        x /= norms
        return x
    return (x / norms).astype(np.float32, copy=False)


def nearest_child(x: np.ndarray, centroids: np.ndarray, node: np.ndarray | None, children: np.ndarray,
                  k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the nearest child of its node and the squared L2
    distance to it, in one faiss call over all rows (no grouping by node).
    x: (N, D) contiguous float32; centroids: one level, (k * nodes, D);
    node: (N,) node of each row at the level above (None: the root);
    children: (nodes,) child count of each node. Returns child slots (N,)."""
    n, dim = x.shape
    for name, a in (("x", x), ("centroids", centroids)):
        if a.dtype != np.float32 or not a.flags.c_contiguous:  # faiss reads raw memory
            raise TypeError(f"{name} must be a C-contiguous float32 array")
    if node is None and children[0] > EXACT_ROOT:
        # a wide root (a flat vocabulary of many words): a matrix product (BLAS) is what makes it fast;
        # ||x||^2 + ||c||^2 - 2xc loses digits when features sit far from the origin, so both are taken
        # relative to the centroids' mean first (distances do not change; the rounding does)
        top = centroids[: children[0]]
        origin = top.mean(0, dtype=np.float64).astype(np.float32)
        dist, slot = faiss.knn(np.ascontiguousarray(x - origin), np.ascontiguousarray(top - origin), 1)
        return slot[:, 0], np.maximum(dist[:, 0], 0.0)  # can still dip below 0 by rounding
    if node is None:   # the root, every row against all its children: exact, whatever the batch (BLAS is not)
        node = np.zeros(n, np.int64)
    last = children[node] - 1  # (N,) missing children repeat child 0's slot
    subset = node[:, None] * k + np.minimum(np.arange(k)[None, :], last[:, None])  # (N, k) candidate slots
    dist = np.empty((n, 1), np.float32)
    slot = np.empty((n, 1), np.int64)
    faiss.knn_L2sqr_by_idx(faiss.swig_ptr(x), faiss.swig_ptr(centroids), faiss.swig_ptr(subset), dim, n,
                           len(centroids), k, 1, faiss.swig_ptr(dist), faiss.swig_ptr(slot), k)
    return slot[:, 0], dist[:, 0]


EXACT_ROOT = 256   # a root of at most this many children is searched exactly (knn_L2sqr_by_idx), not by BLAS


def assign(x: np.ndarray, centroids: np.ndarray, node: np.ndarray | None, children: np.ndarray,
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """One level of the descent, in chunks: child slot (N,) and distance (N,)."""
    slot = np.empty(len(x), np.int64)
    dist = np.empty(len(x), np.float32)
    for a in range(0, len(x), ASSIGN_CHUNK):
        b = min(a + ASSIGN_CHUNK, len(x))
        slot[a:b], dist[a:b] = nearest_child(x[a:b], centroids, None if node is None else node[a:b], children, k)
    return slot, dist


@dataclass
class Seeds:
    """Initial centres for one node's Lloyd iterations."""

    rows: np.ndarray  # (k,) int64: the rows of the data picked as centres
    centres: np.ndarray  # (k, D) float32, those rows
    potential: float  # sum of squared distances of the points to their nearest centre


def trials_per_centre(k: int) -> int:
    """Candidates tried for each new k-means++ centre (scikit-learn's choice)."""
    return 2 + int(np.log(k))


def table_points(config: KMeansConfig, dim: int) -> int:
    """The largest node sample that is clustered from its (N, N) table of
    squared distances rather than from its features (``train_from_tables``).

    The table is one symmetric product, N^2 D flops, no more than seeding's
    products, (k-1) runs trials 2 N D, up to this bound; it also spares
    Lloyd's passes over the features. For k=12 (bound 264) a whole node took
    the same time both ways at N ~ 330 (1024-d synthetic data) and ~ 420
    (1280-d MobileNetV2 features). N <= D keeps a Lloyd step on the table
    (N^2 k) no dearer than one on the features (N k D), and the table within
    D^2 floats."""
    k = config.k
    return min(2 * (k - 1) * config.seedings * trials_per_centre(k), dim, k * config.init_points_per_centroid)


def squared_distances(x: np.ndarray) -> np.ndarray:
    """(N, N) squared L2 distances between the rows of x (N, D) float32, from one BLAS call."""
    sq = np.einsum("ij,ij->i", x, x)  # (N,)
    table = x @ x.T  # (N, N): numpy computes this symmetric product once per pair
    table *= -2.0
    table += sq[:, None]
    table += sq[None, :]
    return np.maximum(table, 0.0, out=table)  # |a|^2 + |b|^2 - 2ab can dip below 0


def greedy_seeding(sqdist: Callable[[np.ndarray], np.ndarray], sizes: np.ndarray, first: np.ndarray,
                   uniforms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-means++ (as scikit-learn does it) for P nodes x R runs in
    lockstep, so that each step is the same dozen numpy calls whatever P and R:
    each new centre is the best of T candidates drawn in proportion to the
    squared distance to the nearest centre so far.

    sqdist(rows): rows (P, C) -> (P, C, N) squared distances from point
    rows[p, c] of node p to each point of node p, 0 past the node's size (then
    padding is never drawn and adds nothing to a potential).
    sizes: (P,) points per node; first: (P, R) first centres; uniforms:
    (P, k-1, R, T) in [0, 1), the draws for the other centres.
    Returns the chosen points (P, k, R) and each run's potential (P, R)."""
    P, R = first.shape
    k, T = uniforms.shape[1] + 1, uniforms.shape[3]
    node, run = np.arange(P)[:, None], np.arange(R)[None, :]  # (P, 1), (1, R): index a (P, R) grid
    chosen = np.empty((P, k, R), np.int64)
    chosen[:, 0] = first
    closest = sqdist(first)  # (P, R, N) each point to its run's nearest centre
    N = closest.shape[2]
    offset = N * np.arange(P * R).reshape(P, R, 1)  # where each run starts on the ladder below
    for c in range(1, k):
        # draw every run's candidates with one search: all runs' distances laid end to end and summed up, run
        # (p, r) owning the stretch edges[pR + r] .. edges[pR + r + 1]; side="right" skips points at distance 0
        ladder = np.cumsum(closest, dtype=np.float64)  # (P * R * N,)
        edges = np.concatenate(([0.0], ladder[N - 1 :: N]))  # (P * R + 1,)
        start, width = edges[:-1].reshape(P, R, 1), (edges[1:] - edges[:-1]).reshape(P, R, 1)
        candidates = np.searchsorted(ladder, start + uniforms[:, c - 1] * width, side="right") - offset  # (P, R, T)
        # past a node's end: rounding, or a run whose points all sit on centres already (any choice is as good)
        np.minimum(candidates, (sizes - 1)[:, None, None], out=candidates)
        d = sqdist(candidates.reshape(P, R * T)).reshape(P, R, T, N)
        np.minimum(d, closest[:, :, None, :], out=d)
        best = d.sum(axis=3, dtype=np.float64).argmin(axis=2)  # (P, R) the candidate leaving the lowest potential
        closest = d[node, run, best]
        chosen[:, c] = candidates[node, run, best]
    return chosen, closest.sum(axis=2, dtype=np.float64)


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator, runs: int = 1,
                     table: np.ndarray | None = None) -> Seeds:
    """Greedy k-means++ seeding of one node: the best of ``runs`` seedings
    (lowest potential), run in lockstep. Each step needs the distances from
    every point to ``runs * trials`` candidates: rows of ``table`` (N, N)
    (``squared_distances``) if given, else products with x in row blocks.
    x: (N, D) float32."""
    n, trials = len(x), trials_per_centre(k)
    first = rng.integers(n, size=(1, runs))
    uniforms = rng.random((1, k - 1, runs, trials))
    if table is not None:
        def sqdist(rows):  # rows (1, C) -> (1, C, N)
            return table[rows]
    else:
        sq = np.einsum("ij,ij->i", x, x)  # (N,)
        block = max(1, SMALL_PRODUCT // (runs * trials * x.shape[1]))  # rows of x per product

        def sqdist(rows):
            centres = x[rows[0]]  # (C, D)
            d = np.empty((len(centres), n), np.float32)
            for a in range(0, n, block):  # small products: see SMALL_PRODUCT
                np.matmul(centres, x[a : a + block].T, out=d[:, a : a + block])
            d *= -2.0
            d += sq[rows[0]][:, None]
            d += sq[None, :]
            return np.maximum(d, 0.0, out=d)[None]

    chosen, potential = greedy_seeding(sqdist, np.array([n]), first, uniforms)
    r = int(np.argmin(potential[0]))
    return Seeds(chosen[0, :, r], x[chosen[0, :, r]], float(potential[0, r]))


def lloyd_on_tables(tables: np.ndarray, sizes: np.ndarray, seeds: np.ndarray, iterations: int,
                    spherical: bool = False) -> np.ndarray:
    """Lloyd iterations for P nodes at once, without reading their
    features. A centroid is kept as the weights of the points it averages (a
    column of ``w``), and a point's squared distance to it follows from the
    table of squared distances:

        |x_i - sum_l w_l x_l|^2 = sum_l w_l |x_i - x_l|^2 - 1/2 sum_lm w_l w_m |x_l - x_m|^2

    (weights summing to 1). Stops when no point changes cluster; a cluster
    that empties keeps its centroid. Spherical: the points have unit norm and
    go to the centroid of highest cosine (the centroid is normalised later).
    tables: (P, N, N), zero past each node's size; sizes: (P,); seeds: (P, k)
    first centres (points). Returns the weights (P, N, k); centroids = w.T @ x."""
    P, N, _ = tables.shape
    k = seeds.shape[1]
    real = (np.arange(N) < sizes[:, None])[:, :, None]  # (P, N, 1) False for padding
    w = np.zeros((P, N, k), np.float32)
    w[np.arange(P)[:, None], seeds, np.arange(k)[None, :]] = 1.0
    labels = None
    for _ in range(iterations):
        to_members = tables @ w  # (P, N, k) weighted mean squared distance to each centroid's points
        spread = np.einsum("pik,pik->pk", w, to_members)[:, None, :] / 2  # (P, 1, k) the second term above
        if spherical:  # x_i . c = 1 - to_members / 2 and |c|^2 = 1 - spread for unit points
            score = (to_members / 2 - 1) / np.sqrt(np.maximum(1 - spread, 1e-12))  # -cosine
        else:
            score = to_members - spread
        new = score.argmin(axis=2)  # (P, N)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        members = (labels[:, :, None] == np.arange(k)) & real  # (P, N, k)
        counts = members.sum(axis=1, keepdims=True, dtype=np.float32)  # (P, 1, k)
        w = np.where(counts > 0, members / np.maximum(counts, 1), w)
    return w


def train_from_tables(samples: list[np.ndarray], k: int, config: KMeansConfig,
                      rngs: list[np.random.Generator]) -> list[np.ndarray]:
    """k-means on several nodes at once, each training on at most
    ``table_points`` points: one BLAS call per node for its table of squared
    distances, then seeding and Lloyd iterations for all the nodes together,
    as small numpy calls on the tables padded to one size. On a node of a
    few dozen points these calls, not the arithmetic, are the cost, and
    faiss's setup alone would cost more than the whole node does here.
    samples: P arrays (n_p, D) float32 with n_p >= k -> P arrays (k, D)."""
    sizes = np.array([len(s) for s in samples])
    P, N, trials = len(samples), int(sizes.max()), trials_per_centre(k)
    tables = np.zeros((P, N, N), np.float32)
    for p, s in enumerate(samples):
        tables[p, : len(s), : len(s)] = squared_distances(s)
    first = np.stack([rng.integers(n, size=config.seedings) for rng, n in zip(rngs, sizes)])  # (P, R)
    uniforms = np.stack([rng.random((k - 1, config.seedings, trials)) for rng in rngs])  # (P, k-1, R, T)
    node = np.arange(P)[:, None]
    chosen, potential = greedy_seeding(lambda rows: tables[node, rows], sizes, first, uniforms)
    seeds = chosen[np.arange(P), :, potential.argmin(axis=1)]  # (P, k) each node's best run
    w = lloyd_on_tables(tables, sizes, seeds, config.iterations, config.spherical)
    centroids = [w[p, : len(s)].T @ s for p, s in enumerate(samples)]  # (k, D) each
    return [normalise_rows(c, inplace=True) for c in centroids] if config.spherical else centroids


def train_node(sample: np.ndarray, k: int, config: KMeansConfig, rng: np.random.Generator) -> np.ndarray:
    """k-means on one node's sample, larger than ``table_points``: the best
    of ``config.seedings`` greedy k-means++ runs starts faiss Lloyd
    iterations. Several seedings are what keeps a node out of bad local
    optima (two centres in one cluster, none in another); they run in
    lockstep, so they cost little more than one. Seeding reads the points
    once per step, so it uses a random part of the sample; the iterations
    use all of it. sample: (n, D) contiguous float32 with n >= k -> (k, D)."""
    seed_from = sample
    if len(sample) > config.init_points_per_centroid * k:
        pick = np.sort(rng.choice(len(sample), config.init_points_per_centroid * k, replace=False))
        seed_from = sample[pick]
    seeds = kmeans_plus_plus(seed_from, k, rng, runs=config.seedings)
    km = faiss.Kmeans(sample.shape[1], k, niter=config.iterations, seed=int(rng.integers(2**31 - 1)),
                      spherical=config.spherical, verbose=False,
                      max_points_per_centroid=len(sample) // k + 1,  # we sampled already; faiss must not
                      min_points_per_centroid=1,  # and must not warn about small nodes
                      check_input_data_for_NaNs=False)  # fit() checked: all rows are finite
    km.train(sample, init_centroids=seeds.centres)
    return km.centroids


@functools.cache
def _blas_pools() -> ThreadpoolController:
    return ThreadpoolController()  # finds the loaded BLAS libraries once (numpy's, faiss's)


@contextlib.contextmanager
def single_threaded():
    """Run small problems (one node's seeding and iterations) on one thread.
    Threads cost more than they save on a few thousand points, and on a busy
    machine waiting BLAS/OpenMP threads spin: on 2 cores shared with another
    job, a depth-3 fit of 30,000 points took 39 s with the default threads
    and 0.7 s with these on one."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        with _blas_pools().limit(limits=1, user_api="blas"):
            yield
    finally:
        faiss.omp_set_num_threads(before)


# ------------------------------------------------------------------ the tree


class HierarchicalKMeans:
    """A fitted tree: per-level centroids plus how many children each node has."""

    def __init__(self, k: int, depth: int, centroids: list[np.ndarray], children: list[np.ndarray],
                 counts: list[np.ndarray] | None = None, inertia: list[float] | None = None,
                 spherical: bool = False):
        self.k, self.depth, self.spherical = k, depth, spherical
        self.centroids = centroids  # level l: (k**(l+1), D) float32, slot order
        self.children = children  # level l: (k**l,) int32 children of each node (k, 1, or 0 if unreachable)
        self.counts = counts if counts is not None else [np.zeros(k ** (l + 1), np.int64) for l in range(depth)]
        self.inertia = inertia if inertia is not None else [float("nan")] * depth  # per level, summed
        if len(centroids) != depth or len(children) != depth:
            raise ValueError(f"expected {depth} levels, got {len(centroids)} centroid and {len(children)} child arrays")
        for level in range(depth):
            if centroids[level].shape[0] != k ** (level + 1) or children[level].shape != (k**level,):
                raise ValueError(f"level {level}: centroids {centroids[level].shape} / children "
                                 f"{children[level].shape} do not match k={k}")
            if centroids[level].ndim != 2 or centroids[level].shape[1] != centroids[0].shape[1]:
                raise ValueError(f"level {level}: centroids of shape {centroids[level].shape}, where level 0's "
                                 f"dim is {centroids[0].shape[1]}")   # faiss would read past the arrays
            if not np.isin(children[level], (0, 1, k)).all():
                raise ValueError(f"level {level}: child counts must be 0, 1 or k={k}")

    @property
    def dim(self) -> int:
        return int(self.centroids[0].shape[1])

    @property
    def num_words(self) -> int:
        return self.k**self.depth

    def word_centroids(self) -> np.ndarray:
        """(num_words, D): the centroid of every word id, in id order."""
        return self.centroids[-1]

    # -- fitting

    @classmethod
    def fit(cls, x: np.ndarray, config: KMeansConfig, progress: Progress | None = None,
            copy_x: bool = True) -> "HierarchicalKMeans":
        """Fit on every row of ``x`` (N, D). Breadth first: each level trains
        the nodes of the level above, then assigns every point in one pass.
        ``copy_x=False`` lets spherical mode normalise ``x`` in place."""
        k, depth = config.k, config.depth
        progress = progress or Progress()
        x = as_float32_rows(x)
        n, dim = x.shape
        if not finite_rows(x).all():
            raise ValueError("features contain NaN or Inf; drop those rows before fitting")
        if n < k:
            raise ValueError(f"{n} points, need at least k={k} to fit")
        if config.spherical:
            x = normalise_rows(x, inplace=not copy_x and x.flags.writeable)
        sample_buf = np.empty((min(n, k * config.points_per_centroid), dim), np.float32)
        table_limit = table_points(config, dim)  # nodes training on at most this many points: train_from_tables
        node = np.zeros(n, np.int64)  # (N,) node of each point at the current level
        centroids, children, counts, inertia = [], [], [], []
        for level in range(depth):
            n_nodes = k**level
            if level == 0:
                reachable = np.ones(1, bool)
                level_centroids = np.empty((k, dim), np.float32)
            else:
                slot = np.arange(n_nodes)
                reachable = slot % k < children[-1][slot // k]
                # every slot starts as a copy of its parent; trained nodes overwrite theirs
                level_centroids = np.repeat(centroids[-1], k, axis=0)  # (k**(level+1), D)
            level_children = np.where(reachable, 1, 0).astype(np.int32)
            order = np.argsort(node, kind="stable")
            bounds = np.searchsorted(node[order], np.arange(n_nodes + 1))
            size = bounds[1:] - bounds[:-1]  # (n_nodes,) points per node
            split = np.flatnonzero(size >= k)  # nodes with enough points to split
            sample_size = np.minimum(size, len(sample_buf))  # (n_nodes,) points each trains on
            by_table = split[sample_size[split] <= table_limit]
            progress.start(f"level {level + 1}/{depth}", len(split))
            with single_threaded():
                for p in split[sample_size[split] > table_limit]:
                    rows = order[bounds[p] : bounds[p + 1]]  # (m,) increasing
                    rng = np.random.default_rng([config.seed, level, int(p)])
                    sample = _gather_sample(x, rows, sample_buf, rng, level == 0)
                    level_centroids[p * k : p * k + k] = train_node(sample, k, config, rng)
                    progress.advance()
                # the others in batches of similar sizes (less padding), their samples side by side in the buffer
                by_table = by_table[np.argsort(sample_size[by_table], kind="stable")]
                for batch in _batches(by_table, sample_size, len(sample_buf)):
                    rngs = [np.random.default_rng([config.seed, level, int(p)]) for p in batch]
                    samples, used = [], 0
                    for p, rng in zip(batch, rngs):
                        samples.append(_gather_sample(x, order[bounds[p] : bounds[p + 1]],
                                                      sample_buf[used : used + sample_size[p]], rng, level == 0))
                        used += sample_size[p]
                    for p, node_centroids in zip(batch, train_from_tables(samples, k, config, rngs)):
                        level_centroids[p * k : p * k + k] = node_centroids
                    progress.advance(len(batch))
            level_children[split] = k
            # every point of the level in one large call: here threads pay off
            new_node, dist = assign(x, level_centroids, node if level else None, level_children, k)
            node = new_node
            centroids.append(level_centroids)
            children.append(level_children)
            counts.append(np.bincount(node, minlength=n_nodes * k).astype(np.int64))
            inertia.append(float(dist.sum(dtype=np.float64)))
            log.debug("level %d: %d nodes split, inertia %.4g", level + 1, int((level_children == k).sum()),
                      inertia[-1])
        return cls(k, depth, centroids, children, counts, inertia, config.spherical)

    # -- encoding

    def encode(self, x: np.ndarray, batch_size: int = ENCODE_BATCH) -> Encoding:
        """Word id of each row by descending the tree, with the squared
        distance to that word's centroid. Rows with NaN/Inf get NO_WORD."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features of shape (N, {self.dim}), got {x.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        ids = np.full(len(x), NO_WORD, np.int64)
        distances = np.full(len(x), np.nan, np.float32)
        for start in range(0, len(x), batch_size):
            chunk = np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32)  # (B, D)
            finite = finite_rows(chunk)
            if not finite.all():
                chunk = chunk[finite]
            if self.spherical:
                chunk = normalise_rows(chunk, inplace=not np.shares_memory(chunk, x))
            node, d = self._descend(chunk)
            ids[start : start + len(finite)][finite] = node
            distances[start : start + len(finite)][finite] = d
        return Encoding(ids, distances)

    def _descend(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x: (B, D) contiguous float32, finite -> leaf slot (= word id) and distance."""
        node, dist = None, None
        for level in range(self.depth):
            node, dist = assign(x, self.centroids[level], node, self.children[level], self.k)
        return node, dist

    # -- arrays for saving

    def state_dict(self) -> dict[str, np.ndarray]:
        arrays = {}
        for level in range(self.depth):
            arrays[f"centroids.{level}"] = np.ascontiguousarray(self.centroids[level], dtype=np.float32)
            arrays[f"children.{level}"] = np.ascontiguousarray(self.children[level], dtype=np.int32)
            arrays[f"counts.{level}"] = np.ascontiguousarray(self.counts[level], dtype=np.int64)
        return arrays

    @classmethod
    def from_state_dict(cls, arrays: dict[str, np.ndarray], k: int, depth: int, spherical: bool,
                        inertia: list[float] | None = None) -> "HierarchicalKMeans":
        try:
            return cls(k, depth,
                       [np.ascontiguousarray(arrays[f"centroids.{l}"], dtype=np.float32) for l in range(depth)],
                       [np.asarray(arrays[f"children.{l}"], dtype=np.int32) for l in range(depth)],
                       [np.asarray(arrays[f"counts.{l}"], dtype=np.int64) for l in range(depth)],
                       inertia, spherical)
        except KeyError as err:
            raise ValueError(f"missing array {err.args[0]!r}") from None


def _batches(nodes: np.ndarray, sizes: np.ndarray, capacity: int):
    """Split ``nodes``, in increasing size, into runs whose padded size
    (count x largest) stays within ``capacity`` points."""
    batch = []
    for p in nodes:
        if batch and (len(batch) + 1) * sizes[p] > capacity:
            yield batch
            batch = []
        batch.append(p)
    if batch:
        yield batch


def _gather_sample(x: np.ndarray, rows: np.ndarray, buf: np.ndarray, rng: np.random.Generator,
                   all_rows: bool) -> np.ndarray:
    """The node's training points: all of them, or ``len(buf)`` drawn at
    random, copied into ``buf`` (reused, so no fresh pages per node)."""
    m = len(rows)
    if m <= len(buf):
        if all_rows:
            return x  # the root, small enough: train on x itself, no copy
        return np.take(x, rows, axis=0, out=buf[:m], mode="clip")
    pick = np.sort(rng.choice(m, size=len(buf), replace=False))
    return np.take(x, rows[pick], axis=0, out=buf, mode="clip")
