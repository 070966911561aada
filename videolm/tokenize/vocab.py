"""A visual vocabulary on disk, fitting it from a feature store, and turning
a whole store into tokens.

Vocabulary directory (loads without the store and without unpickling)::

    meta.json              k, depth, dim, special tokens, fit settings, the store it was fit on
    centroids.safetensors  per level l = 0 .. depth-1:
                             centroids.l  (k**(l+1), dim) float32, slot order (see kmeans.py)
                             children.l   (k**l,) int32   children of each node (k, 1 or 0)
                             counts.l     (k**(l+1),) int64 training points that reached each node

Token ids: ``0 .. k**depth - 1`` are words (the tree path read as a base-k
number); the special tokens come after them, ``[PAD] = k**depth`` and
``[MASK] = k**depth + 1``, so a word id never collides with a special one.

Tokens of a store (``encode_store``), by default in ``STORE/tokens/VOCAB_NAME/``::

    meta.json              the vocabulary (path, fingerprint, k, depth, special ids) and the store
    index.jsonl            one row per video, in the store's order: video_id, shard, offset, num_clips
    shards/00000.npy       (rows,) int32 word id of each row of the store's shards/00000.npy, same order
    shards/00000.dist.npy  (rows,) float32 squared L2 distance to that word's centroid

A clip whose features hold NaN/Inf has token -1 and distance NaN. Each file
is written to a temporary name and renamed, ids after distances, so a killed
run leaves only finished shards and a rerun skips them.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field, fields

import numpy as np

from videolm import __version__
from videolm.features.store import MAX_OPEN_SHARDS, FeatureStore, MappedFiles, StoreError
from videolm.fileio import (atomic_directory, atomic_save_npy, atomic_write_bytes, atomic_write_json,
                            atomic_write_jsonl, read_jsonl)
from videolm.tokenize.kmeans import (ENCODE_BATCH, NO_WORD, Encoding, HierarchicalKMeans, KMeansConfig, Progress,
                                     finite_rows, word_path)

log = logging.getLogger(__name__)

VOCAB_FORMAT = "videolm-vocab"
TOKENS_FORMAT = "videolm-tokens"
FORMAT_VERSION = 1
SPECIAL_TOKENS = ("[PAD]", "[MASK]")
ARRAYS_FILE = "centroids.safetensors"


class TokenizeError(Exception):
    """A user mistake or an unusable input; one-line message naming the file."""


# ------------------------------------------------------------------ the vocabulary


@dataclass
class Vocabulary:
    """A fitted tree plus what the model and the files need around it."""

    tree: HierarchicalKMeans
    config: KMeansConfig
    source: dict = field(default_factory=dict)  # the store it was fit on: path, backbone, weights, dim, ...
    sample: dict = field(default_factory=dict)  # points fit on, clips skipped for NaN/Inf
    special_tokens: tuple[str, ...] = SPECIAL_TOKENS
    path: str | None = None  # directory it was loaded from or saved to

    @property
    def k(self) -> int:
        return self.tree.k

    @property
    def depth(self) -> int:
        return self.tree.depth

    @property
    def dim(self) -> int:
        return self.tree.dim

    @property
    def num_words(self) -> int:
        return self.tree.num_words

    @property
    def vocab_size(self) -> int:
        """Rows an embedding table needs: every word, then the special tokens."""
        return self.num_words + len(self.special_tokens)

    @property
    def special_ids(self) -> dict[str, int]:
        return {tok: self.num_words + i for i, tok in enumerate(self.special_tokens)}

    @property
    def pad_id(self) -> int:
        return self.special_ids["[PAD]"]

    @property
    def mask_id(self) -> int:
        return self.special_ids["[MASK]"]

    def is_word(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        return (ids >= 0) & (ids < self.num_words)

    def path_of(self, word: int) -> tuple[int, ...]:
        """The digits of a word (its tree path)."""
        return word_path(int(word), self.k, self.depth)

    def word_centroids(self) -> np.ndarray:
        """(num_words, dim) float32: row i is word i's centroid (to initialise
        a visual-word embedding table). Words under a node that was not split
        hold that node's centroid."""
        return self.tree.word_centroids()

    def encode(self, features: np.ndarray, batch_size: int = ENCODE_BATCH) -> Encoding:
        """Word ids (and distances) of an (N, dim) array; NaN/Inf rows get -1."""
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise TokenizeError(f"features of shape {features.shape}, vocabulary {self.path or ''} "
                                f"expects (N, {self.dim})")
        return self.tree.encode(features, batch_size)

    def fingerprint(self) -> str:
        """Hash of the arrays: tells two vocabularies apart, equal after save/load."""
        h = hashlib.sha256(f"{self.k}/{self.depth}/{self.tree.spherical}".encode())
        for name, array in sorted(self.tree.state_dict().items()):
            h.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
            h.update(array.tobytes())
        return h.hexdigest()[:16]

    def check_store(self, store: FeatureStore) -> None:
        """Refuse a store whose features this vocabulary was not fit on."""
        where = self.path or "the vocabulary"
        fit_backbone = self.source.get("backbone")
        backbone = store.meta.get("backbone")
        if store.dim != self.dim:
            raise TokenizeError(f"{store.root}: features are {store.dim}-dim ({backbone}) but {where} was fit on "
                                f"{self.dim}-dim features ({fit_backbone}); fit a vocabulary on this store")
        if fit_backbone and backbone != fit_backbone:
            raise TokenizeError(f"{store.root}: features come from backbone {backbone!r} but {where} was fit on "
                                f"{fit_backbone!r} features; fit a vocabulary on this store")
        if self.source.get("weights") not in (None, store.meta.get("weights")):
            log.warning("%s: weights %r differ from the %r the vocabulary was fit on", store.root,
                        store.meta.get("weights"), self.source.get("weights"))

    # -- files

    def meta(self) -> dict:
        return {"format": VOCAB_FORMAT, "format_version": FORMAT_VERSION, "videolm_version": __version__,
                "k": self.k, "depth": self.depth, "dim": self.dim, "num_words": self.num_words,
                "spherical": self.tree.spherical, "special_tokens": list(self.special_tokens),
                "vocab_size": self.vocab_size, "config": self.config.to_dict(), "source": self.source,
                "sample": self.sample, "inertia": self.tree.inertia, "fingerprint": self.fingerprint()}

    def save_pretrained(self, directory: str, overwrite: bool = False) -> None:
        """Write meta.json + centroids.safetensors into a new directory (built
        under a temporary name, then renamed into place)."""
        from safetensors.numpy import save

        directory = os.path.normpath(directory)
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise TokenizeError(f"{directory}: exists and is not a directory")
        if os.path.exists(directory) and not overwrite and (not os.path.isdir(directory) or os.listdir(directory)):
            raise TokenizeError(f"{directory}: already exists; choose another directory")
        with atomic_directory(directory) as tmp:
            arrays = save(self.tree.state_dict(), metadata={"format": VOCAB_FORMAT})  # bytes
            atomic_write_bytes(os.path.join(tmp, ARRAYS_FILE), arrays)
            atomic_write_json(os.path.join(tmp, "meta.json"), self.meta())
        self.path = directory

    @classmethod
    def from_pretrained(cls, directory: str) -> "Vocabulary":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        meta_path = os.path.join(directory, "meta.json")
        arrays_path = os.path.join(directory, ARRAYS_FILE)
        if not os.path.isdir(directory):
            raise TokenizeError(f"{directory}: no such vocabulary directory")
        if not os.path.isfile(meta_path):
            raise TokenizeError(f"{directory}: not a visual vocabulary (no meta.json)")
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except json.JSONDecodeError as err:
            raise TokenizeError(f"{meta_path}: not valid JSON ({err})") from None
        if not isinstance(meta, dict) or meta.get("format") != VOCAB_FORMAT:
            raise TokenizeError(f"{meta_path}: not a videolm visual vocabulary")
        if not os.path.isfile(arrays_path):
            raise TokenizeError(f"{arrays_path}: missing; the vocabulary is incomplete")
        known = {f.name for f in fields(KMeansConfig)}
        unknown = sorted(set(meta.get("config", {})) - known)
        if unknown:
            raise TokenizeError(f"{meta_path}: unknown config key {unknown[0]!r}")
        try:
            config = KMeansConfig(**meta["config"])
            arrays = load_file(arrays_path)
            tree = HierarchicalKMeans.from_state_dict(arrays, int(meta["k"]), int(meta["depth"]),
                                                      bool(meta["spherical"]), meta.get("inertia"))
        except KeyError as err:
            raise TokenizeError(f"{meta_path}: missing key {err.args[0]!r}") from None
        except (SafetensorError, OSError) as err:
            raise TokenizeError(f"{arrays_path}: cannot read ({err})") from None
        except (ValueError, TypeError) as err:
            raise TokenizeError(f"{arrays_path}: {err}") from None
        return cls(tree, config, meta.get("source", {}), meta.get("sample", {}),
                   tuple(meta.get("special_tokens", SPECIAL_TOKENS)), os.path.normpath(directory))


# ------------------------------------------------------------------ fitting from a store


def open_store(store: FeatureStore | str) -> FeatureStore:
    if isinstance(store, FeatureStore):
        return store
    if not os.path.isdir(store):
        raise TokenizeError(f"{store}: no such feature store")
    try:
        return FeatureStore(store)
    except StoreError as err:
        raise TokenizeError(str(err)) from None


@dataclass
class StoreSample:
    """Clip features drawn from a store to fit on."""

    features: np.ndarray  # (n, dim) float32
    num_clips: int  # clips in the store
    skipped: dict[str, int]  # video id -> sampled clips dropped for NaN/Inf features


def sample_store(store: FeatureStore, size: int, seed: int = 0, strict: bool = False,
                 progress: Progress | None = None) -> StoreSample:
    """A uniform sample of ``size`` clips (all of them if fewer), read video by
    video from the memory-mapped shards: memory is the sample plus one video.
    Only sampled clips are checked for NaN/Inf; ``encode_store`` checks all."""
    progress = progress or Progress()
    total = store.num_clips
    if total == 0:
        raise TokenizeError(f"{store.root}: the store has no clips; extract features into it first")
    take = min(size, total)
    rng = np.random.default_rng(seed)
    positions = np.sort(rng.choice(total, size=take, replace=False)) if take < total else None
    out = np.empty((take, store.dim), np.float32)
    filled, start, skipped = 0, 0, {}
    progress.start("sample", len(store))
    for row in store.rows:
        video_id, n = row["video_id"], row["num_clips"]
        feats = store.features(video_id)  # (n, dim) memmap view
        if positions is None:
            local = np.arange(n)
        else:
            lo, hi = np.searchsorted(positions, [start, start + n])
            local = positions[lo:hi] - start
        start += n
        progress.advance()
        if len(local) == 0:
            continue
        block = np.asarray(feats[local], dtype=np.float32)  # (m, dim)
        ok = finite_rows(block)
        if not ok.all():
            bad = np.flatnonzero(~ok)
            if strict:
                raise TokenizeError(f"{store.root}: video {video_id!r} has NaN/Inf features in clip "
                                    f"{int(local[bad[0]])} (and {len(bad) - 1} more sampled); refused (--strict)")
            log.warning("%s: video %r: skipped %d clip(s) with NaN/Inf features", store.root, video_id, len(bad))
            skipped[video_id] = len(bad)
            block = block[ok]
        out[filled : filled + len(block)] = block
        filled += len(block)
    return StoreSample(out[:filled], total, skipped)


def fit_vocabulary(store: FeatureStore | str, config: KMeansConfig, strict: bool = False,
                   progress: Progress | None = None) -> Vocabulary:
    """Fit a vocabulary on a sample of a store's clips."""
    store = open_store(store)
    sample = sample_store(store, config.sample_size, config.seed, strict, progress)
    n = len(sample.features)
    if n < config.k:
        raise TokenizeError(f"{store.root}: {n} usable clip(s), need at least k={config.k} to fit; "
                            "lower --k or extract more videos")
    tree = HierarchicalKMeans.fit(sample.features, config, progress, copy_x=False)
    source = {"store": os.path.abspath(store.root), "backbone": store.meta.get("backbone"),
              "weights": store.meta.get("weights"), "dim": store.dim, "dtype": store.dtype,
              "clip_spec": store.meta.get("clip_spec"), "videos": len(store), "clips": store.num_clips}
    stats = {"points": n, "skipped_nonfinite": sum(sample.skipped.values()),
             "videos_with_nonfinite": len(sample.skipped)}
    return Vocabulary(tree, config, source, stats)


# ------------------------------------------------------------------ encoding a store


@dataclass
class EncodeResult:
    out: str  # the tokens directory
    shards_encoded: int  # in this run
    shards_skipped: int  # finished by an earlier run
    clips: int  # encoded in this run
    nonfinite: dict[str, int]  # video id -> clips with NaN/Inf features (token -1)
    seconds: float


def open_for_encoding(store: FeatureStore | str, vocab: Vocabulary | str) -> tuple[FeatureStore, Vocabulary]:
    """Open both; refuse an empty store or one whose features the vocabulary was not fit on."""
    store = open_store(store)
    if isinstance(vocab, str):
        vocab = Vocabulary.from_pretrained(vocab)
    if store.num_clips == 0:
        raise TokenizeError(f"{store.root}: the store has no clips; extract features into it first")
    vocab.check_store(store)
    return store, vocab


def default_tokens_dir(store_root: str, vocab_path: str) -> str:
    return os.path.join(store_root, "tokens", os.path.basename(os.path.normpath(vocab_path)))


def encode_store(store: FeatureStore | str, vocab: Vocabulary | str, out: str | None = None, strict: bool = False,
                 batch_size: int = ENCODE_BATCH, progress: Progress | None = None) -> EncodeResult:
    """Token ids for every clip of a store, one int32 file per store shard."""
    started = time.perf_counter()
    progress = progress or Progress()
    store, vocab = open_for_encoding(store, vocab)
    if out is None:
        if vocab.path is None:
            raise TokenizeError("the vocabulary has no directory; save it first or pass out=")
        out = default_tokens_dir(store.root, vocab.path)
    _prepare_tokens_dir(out, vocab, store)

    by_shard: dict[str, list[dict]] = {}
    for row in store.rows:
        by_shard.setdefault(row["shard"], []).append(row)
    progress.start("encode", store.num_clips)
    encoded = skipped_shards = clips = 0
    nonfinite: dict[str, int] = {}
    for name, rows in by_shard.items():
        data = store.shard(name)  # (rows, dim) memmap
        ids_path = os.path.join(out, name)
        dist_path = ids_path[: -len(".npy")] + ".dist.npy"
        os.makedirs(os.path.dirname(ids_path), exist_ok=True)
        done = _finished(ids_path, dist_path, len(data))
        if done:
            ids = np.load(ids_path, mmap_mode="r")
            skipped_shards += 1
            progress.advance(sum(r["num_clips"] for r in rows))
        else:
            ids = np.empty(len(data), np.int32)
            dist = np.empty(len(data), np.float32)
            for a in range(0, len(data), batch_size):
                enc = vocab.encode(data[a : a + batch_size], batch_size)
                ids[a : a + len(enc.ids)] = enc.ids
                dist[a : a + len(enc.ids)] = enc.distances
                progress.advance(len(enc.ids))
        nonfinite.update(_check_nonfinite(store, rows, ids, strict))  # raises before anything is written
        if not done:
            atomic_save_npy(dist_path, dist)
            atomic_save_npy(ids_path, ids)  # last: its presence marks the shard finished
            encoded += 1
            clips += len(data)
    index = [{"video_id": r["video_id"], "shard": r["shard"], "offset": r["offset"], "num_clips": r["num_clips"]}
             for r in store.rows]
    atomic_write_jsonl(os.path.join(out, "index.jsonl"), index)
    return EncodeResult(out, encoded, skipped_shards, clips, nonfinite, time.perf_counter() - started)


def _prepare_tokens_dir(out: str, vocab: Vocabulary, store: FeatureStore) -> None:
    meta = {"format": TOKENS_FORMAT, "format_version": FORMAT_VERSION, "videolm_version": __version__,
            "vocab": os.path.abspath(vocab.path) if vocab.path else None, "vocab_fingerprint": vocab.fingerprint(),
            "k": vocab.k, "depth": vocab.depth, "num_words": vocab.num_words, "vocab_size": vocab.vocab_size,
            "special_ids": vocab.special_ids, "no_word": NO_WORD,
            "store": {"path": os.path.abspath(store.root), "backbone": store.meta.get("backbone"),
                      "weights": store.meta.get("weights"), "dim": store.dim}}
    meta_path = os.path.join(out, "meta.json")
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            old = json.load(f)
        if old.get("format") != TOKENS_FORMAT:
            raise TokenizeError(f"{out}: exists and is not a tokens directory; choose another output")
        if old.get("vocab_fingerprint") != meta["vocab_fingerprint"]:
            raise TokenizeError(f"{out}: holds tokens of another vocabulary ({old.get('vocab')}); "
                                "remove it or choose another output")
    elif os.path.isdir(out) and os.listdir(out):
        raise TokenizeError(f"{out}: exists, is not empty and is not a tokens directory; choose another output")
    os.makedirs(os.path.join(out, "shards"), exist_ok=True)
    for path in glob.glob(os.path.join(out, "**", "*.tmp-*"), recursive=True):  # left by a killed run
        os.remove(path)
    if not os.path.isfile(meta_path):
        atomic_write_json(meta_path, meta)


def _finished(ids_path: str, dist_path: str, rows: int) -> bool:
    if not (os.path.isfile(ids_path) and os.path.isfile(dist_path)):
        return False
    try:
        return np.load(ids_path, mmap_mode="r").shape == (rows,) and np.load(dist_path, mmap_mode="r").shape == (rows,)
    except ValueError:  # a truncated file from outside: encode again
        return False


def _check_nonfinite(store: FeatureStore, rows: list[dict], ids: np.ndarray, strict: bool) -> dict[str, int]:
    """Videos of one shard with token -1 clips: refused under ``strict``, else warned about and counted."""
    found = {}
    for row in rows:
        bad = np.flatnonzero(ids[row["offset"] : row["offset"] + row["num_clips"]] == NO_WORD)
        if len(bad) == 0:
            continue
        if strict:
            raise TokenizeError(f"{store.root}: video {row['video_id']!r} has NaN/Inf features in clip {int(bad[0])} "
                                f"({len(bad)} of {row['num_clips']} clips); refused (--strict)")
        log.warning("%s: video %r: %d of %d clip(s) have NaN/Inf features; their token is -1", store.root,
                    row["video_id"], len(bad), row["num_clips"])
        found[row["video_id"]] = len(bad)
    return found


class TokenStore:
    """Read what ``encode_store`` wrote: ``tokens(video_id)`` is an
    (n_clips,) int32 view of a memory-mapped file, in the store's clip order.
    At most ``max_open_files`` files stay mapped (least recently used closed
    first), as in ``FeatureStore``."""

    def __init__(self, root: str, max_open_files: int = MAX_OPEN_SHARDS):
        meta_path = os.path.join(root, "meta.json")
        index_path = os.path.join(root, "index.jsonl")
        if not os.path.isfile(meta_path) or not os.path.isfile(index_path):
            raise TokenizeError(f"{root}: not a finished tokens directory (run `videolm tokenize encode`)")
        with open(meta_path) as f:
            self.meta = json.load(f)
        self.root = root
        self.rows = read_jsonl(index_path)
        self._by_id = {row["video_id"]: row for row in self.rows}
        self._file = MappedFiles(root, max_open_files)

    def ids(self) -> list[str]:
        return [row["video_id"] for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def _view(self, video_id: str, suffix: str) -> np.ndarray:
        row = self._by_id.get(video_id)
        if row is None:
            raise KeyError(f"{self.root}: no video {video_id!r}")
        return self._file(row["shard"][: -len(".npy")] + suffix)[row["offset"] : row["offset"] + row["num_clips"]]

    def tokens(self, video_id: str) -> np.ndarray:
        """(n_clips,) int32 word ids; -1 where the features held NaN/Inf."""
        return self._view(video_id, ".npy")

    def distances(self, video_id: str) -> np.ndarray:
        """(n_clips,) float32 squared distance of each clip to its word's centroid."""
        return self._view(video_id, ".dist.npy")
