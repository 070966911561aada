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
    shards/00000.npy       (rows,) int32 word id of each row of the store's shards/00000.npy, same order
    shards/00000.dist.npy  (rows,) float32 squared L2 distance to that word's centroid
    index_shards.npy       (shards,) |S token file names, e.g. b"shards/00000.npy"
    index.npy              (videos,) records, in the store's order (memory-mapped by TokenStore):
                             video_id  |S<longest>  UTF-8
                             shard     int32  which name of index_shards.npy holds its clips (-1: no clips)
                             offset    int64  first row of that shard, num_clips int64
                             by_id     int64  the rows in sorted video_id order (lookup by bisection)

Format 1 had ``index.jsonl`` (one JSON row per video) instead of ``index.npy``;
``TokenStore`` reads both, and ``encode_store`` run again on such a
directory rewrites it as format 2 (the token files are the same).

A clip whose features hold NaN/Inf has token -1 and distance NaN. Each file
is written to a temporary name and renamed, ids after distances, so a killed
run leaves only finished shards and a rerun skips them; ``index.npy`` is
written last.

Fitting and encoding read the store shard by shard (``store_shards``):
memory is the sample (fit) or one shard's ids (encode), not the store.
"""

from __future__ import annotations

import bisect
import glob
import hashlib
import json
import logging
import mmap
import os
import re
import time
from dataclasses import dataclass, field, fields
from typing import Sequence

import numpy as np

from videolm import __version__
from videolm.features.store import (MAX_OPEN_SHARDS, FeatureStore, MappedFiles, StoreError, shard_name,
                                   shard_number)
from videolm.fileio import (atomic_directory, atomic_save_npy, atomic_write_bytes, atomic_write_json, read_json_file,
                            read_jsonl)
from videolm.tokenize.kmeans import (ENCODE_BATCH, NO_WORD, Encoding, HierarchicalKMeans, KMeansConfig, Progress,
                                     finite_rows, word_path)

log = logging.getLogger(__name__)

VOCAB_FORMAT = "videolm-vocab"
TOKENS_FORMAT = "videolm-tokens"
FORMAT_VERSION = 1
TOKENS_FORMAT_VERSION = 2  # 1: index.jsonl; 2: index.npy (TokenStore reads both)
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
        try:   # the config's values are meta.json's, and so is a mistake in them
            config = KMeansConfig(**meta["config"])
        except KeyError as err:
            raise TokenizeError(f"{meta_path}: missing key {err.args[0]!r}") from None
        except (ValueError, TypeError) as err:
            raise TokenizeError(f"{meta_path}: config: {err}") from None
        try:
            arrays = load_file(arrays_path)
            tree = HierarchicalKMeans.from_state_dict(arrays, int(meta["k"]), int(meta["depth"]),
                                                      bool(meta["spherical"]), meta.get("inertia"))
        except KeyError as err:
            raise TokenizeError(f"{meta_path}: missing key {err.args[0]!r}") from None
        except (SafetensorError, OSError) as err:
            raise TokenizeError(f"{arrays_path}: cannot read ({err})") from None
        except (ValueError, TypeError) as err:
            raise TokenizeError(f"{arrays_path}: {err}") from None
        if "dim" in meta and meta["dim"] != tree.dim:
            raise TokenizeError(f"{arrays_path}: centroids of dim {tree.dim}, where {meta_path} says {meta['dim']}")
        return cls(tree, config, meta.get("source", {}), meta.get("sample", {}),
                   tuple(meta.get("special_tokens", SPECIAL_TOKENS)), os.path.normpath(directory))


# ------------------------------------------------------------------ reading a store shard by shard


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
class Shard:
    """One shard of a store and which of its rows hold the store's clips."""

    name: str  # as the store's index names it, e.g. "shards/00000.npy"
    spans: np.ndarray  # (m, 2) int64 [start, stop) row ranges, increasing; usually one, the whole shard

    @property
    def clips(self) -> int:
        return int((self.spans[:, 1] - self.spans[:, 0]).sum())

    def rows(self, clips: np.ndarray) -> np.ndarray:
        """The shard rows of clips numbered 0 .. self.clips-1 within the shard."""
        lengths = self.spans[:, 1] - self.spans[:, 0]  # (m,)
        ends = np.cumsum(lengths)
        span = np.searchsorted(ends, clips, side="right")  # the span each clip falls in
        return self.spans[span, 0] + clips - (ends[span] - lengths[span])


SHARD_FILE = re.compile(r"\d{5,}\.npy")  # a shard's file name in STORE/shards/


def store_shards(store: FeatureStore, ids: Sequence[str] | None = None) -> list[Shard]:
    """The store's shards in name order, each with the rows that hold its clips.

    Normally every row of every shard file is a clip of the index, and the
    files' headers show it without reading the index (O(shards), whatever
    the number of videos): their rows add up to ``store.num_clips``, and
    the index's clips are disjoint rows of those files. When they do not
    add up (a shard file a killed writer left behind, say), the rows come
    from the index's columns (``store.index``). ``ids``: only those inputs'
    clips (a fit on the training split), from the index's columns."""
    if ids is None:
        folder = os.path.join(store.root, "shards")
        files = os.listdir(folder) if os.path.isdir(folder) else []
        names = sorted(f"shards/{f}" for f in files if SHARD_FILE.fullmatch(f))  # not temp files, not others
        whole = [Shard(name, np.array([[0, len(store.shard(name))]], np.int64)) for name in names]
        if sum(s.clips for s in whole) == store.num_clips:
            return whole
    shard, offset, num_clips = _columns(store)
    keep = np.flatnonzero(num_clips > 0)
    if ids is not None:
        rows = store.locate(list(ids))
        if (rows < 0).any():
            missing = [i for i, r in zip(ids, rows) if r < 0]
            raise TokenizeError(f"{store.root}: {len(missing)} of the {len(rows)} ids to fit on are not in the store "
                                f"(e.g. {missing[0]!r})")
        keep = np.intersect1d(keep, rows)
    keep = keep[np.lexsort((offset[keep], shard[keep]))]  # by shard, then row
    spans = np.stack([offset[keep], offset[keep] + num_clips[keep]], axis=1)  # (videos, 2)
    numbers, first = np.unique(shard[keep], return_index=True)
    parts = np.split(spans, first[1:])
    return sorted((Shard(shard_name(int(n)), part) for n, part in zip(numbers, parts)), key=lambda s: s.name)


def _columns(store: FeatureStore) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shard number, first row and clip count of every video, (videos,) each, from the memory-mapped index."""
    ix = store.index
    return np.asarray(ix.shard), np.asarray(ix.offset), np.asarray(ix.num_clips)


def release_pages(array: np.ndarray) -> None:
    """Drop a memory-mapped array's pages from this process's resident set
    (they stay in the page cache; touching them again maps them back).
    The store keeps up to 64 shards mapped, and every page read from them
    would otherwise count as this process's memory until the shard is
    closed: reading 2 % of the clips of 64 shards of 64-byte rows touches
    most of their pages. A no-op for an array not backed by ``mmap``."""
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    if base is not None and hasattr(mmap, "MADV_DONTNEED"):
        base.madvise(mmap.MADV_DONTNEED)


def videos_at(store: FeatureStore, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The videos holding some shard rows (shard name -> rows): video id ->
    its clip numbers among them, in the store's order. For the rare rows
    that need a name (NaN/Inf features)."""
    shard, offset, num_clips = _columns(store)
    found = {}
    for name, hit in rows.items():
        for video in np.flatnonzero(shard == shard_number(name)):
            start, n = int(offset[video]), int(num_clips[video])
            clips = hit[(hit >= start) & (hit < start + n)] - start
            if len(clips):
                found[int(video)] = clips
    return {store.index.id_at(video): found[video] for video in sorted(found)}


# ------------------------------------------------------------------ fitting from a store


MAX_STORE_CLIPS = 10**9  # numpy's hypergeometric draw takes populations below 10^9


@dataclass
class StoreSample:
    """Clip features drawn from a store to fit on."""

    features: np.ndarray  # (n, dim) float32
    rows: np.ndarray  # (n,) int64 clip number of each, counting the clips of store_shards() in order
    num_clips: int  # clips in the store
    skipped: dict[str, int]  # video id -> sampled clips dropped for NaN/Inf features


def shard_share(rng: np.random.Generator, clips: int, left: int, need: int) -> int:
    """How many of a shard's ``clips`` a uniform sample without replacement
    takes, when ``need`` clips are still to be drawn from the ``left`` clips
    of this shard and the ones after it: hypergeometric, so drawing shard by
    shard in order gives exactly the law of drawing all at once."""
    if need == 0:
        return 0
    if clips == left or need == left:
        return min(need, clips)
    return int(rng.hypergeometric(clips, left - clips, need))


def sample_store(store: FeatureStore, size: int, seed: int = 0, strict: bool = False,
                 progress: Progress | None = None, ids: Sequence[str] | None = None) -> StoreSample:
    """A uniform sample of ``size`` clips (all of them if fewer), without
    replacement, read shard by shard in order from the memory-mapped shards.
    Each shard's share is drawn when it is reached (``shard_share``), then
    which of its clips, so memory is the sample plus one shard's draw,
    whatever the size of the store (a permutation of 10^7 clip numbers
    alone would be 80 MB). Only sampled clips are checked for NaN/Inf;
    ``encode_store`` checks all."""
    progress = progress or Progress()
    shards = store_shards(store, ids)
    total = sum(s.clips for s in shards)
    if total == 0:
        raise TokenizeError(f"{store.root}: the store has no clips" + (" among the ids to fit on" if ids is not None
                                                                      else "; extract features into it first"))
    if total >= MAX_STORE_CLIPS:
        raise TokenizeError(f"{store.root}: {total} clips; sampling supports stores of fewer than "
                            f"{MAX_STORE_CLIPS} (fit on a part store)")
    take = min(size, total)
    rng = np.random.default_rng(seed)
    out = np.empty((take, store.dim), np.float32)  # (take, dim), filled shard by shard
    rows = np.empty(take, np.int64)
    filled, need, left, first = 0, take, total, 0
    bad: dict[str, np.ndarray] = {}  # shard name -> its sampled rows with NaN/Inf
    progress.start("sample", len(shards))
    for shard in shards:
        m = shard_share(rng, shard.clips, left, need)
        clips = np.sort(rng.choice(shard.clips, size=m, replace=False))  # (m,) within the shard
        need, left = need - m, left - shard.clips
        if m:
            data = store.shard(shard.name)  # (rows, dim) memmap
            at = shard.rows(clips)
            block = out[filled : filled + m]
            block[:] = data[at]  # reads only the pages of the sampled rows; float16 -> float32
            release_pages(data)
            ok = finite_rows(block)
            if not ok.all():
                bad[shard.name] = at[~ok]
                if strict:
                    video_id, where = next(iter(videos_at(store, {shard.name: at[~ok]}).items()))
                    raise TokenizeError(f"{store.root}: video {video_id!r} has NaN/Inf features in clip "
                                        f"{int(where[0])} (and {len(where) - 1} more sampled); "
                                        "refused (--strict)")
                clips, block = clips[ok], block[ok]
                out[filled : filled + len(block)] = block
            rows[filled : filled + len(clips)] = first + clips
            filled += len(clips)
        first += shard.clips
        progress.advance()
    skipped = {video_id: len(clips) for video_id, clips in videos_at(store, bad).items()} if bad else {}
    for video_id, n in skipped.items():
        log.warning("%s: video %r: skipped %d clip(s) with NaN/Inf features", store.root, video_id, n)
    return StoreSample(out[:filled], rows[:filled], total, skipped)


def fit_vocabulary(store: FeatureStore | str, config: KMeansConfig, strict: bool = False,
                   progress: Progress | None = None, ids: Sequence[str] | None = None) -> Vocabulary:
    """Fit a vocabulary on a sample of a store's clips; ``ids``: of those
    inputs only (the training split: held-out clips never shape the words)."""
    store = open_store(store)
    sample = sample_store(store, config.sample_size, config.seed, strict, progress, ids)
    n = len(sample.features)
    if n < config.k:
        raise TokenizeError(f"{store.root}: {n} usable clip(s), need at least k={config.k} to fit; "
                            "lower --k or extract more videos")
    tree = HierarchicalKMeans.fit(sample.features, config, progress, copy_x=False)
    source = {"store": os.path.abspath(store.root), "backbone": store.meta.get("backbone"),
              "weights": store.meta.get("weights"), "dim": store.dim, "dtype": store.dtype,
              "clip_spec": store.meta.get("clip_spec"), "videos": len(store), "clips": store.num_clips,
              **({"fit_on_ids": len(set(ids)), "fit_on_clips": sample.num_clips} if ids is not None else {})}
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
    """Token ids for every clip of a store, one int32 file per store shard,
    streamed: one shard's ids and distances are in memory at a time, and its
    features are read ``batch_size`` rows at a time."""
    started = time.perf_counter()
    progress = progress or Progress()
    if batch_size < 1:   # a negative one wrote uninitialised memory as tokens
        raise TokenizeError(f"--batch-size must be >= 1, not {batch_size}")
    store, vocab = open_for_encoding(store, vocab)
    if out is None:
        if vocab.path is None:
            raise TokenizeError("the vocabulary has no directory; save it first or pass out=")
        out = default_tokens_dir(store.root, vocab.path)
    meta, encoded_from = _prepare_tokens_dir(out, vocab, store)

    shards = store_shards(store)
    progress.start("encode", store.num_clips)
    encoded = skipped_shards = clips = 0
    nonfinite: dict[str, int] = {}
    for shard in shards:
        data = store.shard(shard.name)  # (rows, dim) memmap
        ids_path = os.path.join(out, shard.name)
        dist_path = ids_path[: -len(".npy")] + ".dist.npy"
        os.makedirs(os.path.dirname(ids_path), exist_ok=True)
        source = _source_of(store, shard.name)
        done = _finished(ids_path, dist_path, len(data)) and _same_source(ids_path, source, encoded_from)
        if done:
            ids = np.load(ids_path, mmap_mode="r")
            skipped_shards += 1
            progress.advance(shard.clips)
        else:
            ids = np.empty(len(data), np.int32)
            dist = np.empty(len(data), np.float32)
            for a in range(0, len(data), batch_size):
                enc = vocab.encode(data[a : a + batch_size], batch_size)
                ids[a : a + len(enc.ids)] = enc.ids
                dist[a : a + len(enc.ids)] = enc.distances
                progress.advance(len(enc.ids))
            release_pages(data)
        nonfinite.update(_check_nonfinite(store, shard, ids, strict))  # raises before anything is written
        if not done:
            atomic_save_npy(dist_path, dist)
            atomic_write_json(ids_path[: -len(".npy")] + ".source.json", source)
            atomic_save_npy(ids_path, ids)  # last: its presence marks the shard finished
            encoded += 1
            clips += len(data)
    _write_index(out, store, [s.name for s in shards])
    atomic_write_json(os.path.join(out, "meta.json"), meta)  # a directory of format 1 is now one of format 2
    if os.path.isfile(os.path.join(out, "index.jsonl")):
        os.remove(os.path.join(out, "index.jsonl"))
    return EncodeResult(out, encoded, skipped_shards, clips, nonfinite, time.perf_counter() - started)


def _prepare_tokens_dir(out: str, vocab: Vocabulary, store: FeatureStore) -> tuple[dict, str | None]:
    """Claim ``out`` for this vocabulary's tokens (refusing another's); returns
    the meta to write at the end, and the store its existing meta names (the
    source of shards written before each recorded its own)."""
    meta = {"format": TOKENS_FORMAT, "format_version": TOKENS_FORMAT_VERSION, "videolm_version": __version__,
            "vocab": os.path.abspath(vocab.path) if vocab.path else None, "vocab_fingerprint": vocab.fingerprint(),
            "k": vocab.k, "depth": vocab.depth, "num_words": vocab.num_words, "vocab_size": vocab.vocab_size,
            "special_ids": vocab.special_ids, "no_word": NO_WORD,
            "store": {"path": os.path.abspath(store.root), "backbone": store.meta.get("backbone"),
                      "weights": store.meta.get("weights"), "dim": store.dim}}
    meta_path = os.path.join(out, "meta.json")
    old = None
    if os.path.isfile(meta_path):
        old = read_json_file(meta_path, TokenizeError, "tokens meta")
        if not isinstance(old, dict) or old.get("format") != TOKENS_FORMAT:
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
    return meta, ((old or meta).get("store") or {}).get("path")


def _source_of(store: FeatureStore, shard_name: str) -> dict:
    """Which feature shard a tokens shard was encoded from: the store and the
    shard file's size and modification time (a rebuilt store, or another
    store encoded into the same output, is another source)."""
    st = os.stat(os.path.join(store.root, shard_name))
    return {"store": os.path.abspath(store.root), "shard": shard_name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _same_source(ids_path: str, source: dict, encoded_from: str | None) -> bool:
    """A finished tokens shard was encoded from this feature shard. Shards
    written before the record existed count when the directory's meta names
    this store (``encoded_from``)."""
    path = ids_path[: -len(".npy")] + ".source.json"
    if not os.path.isfile(path):
        return encoded_from == source["store"]
    try:
        with open(path) as f:
            return json.load(f) == source
    except (OSError, ValueError):
        return False


def _finished(ids_path: str, dist_path: str, rows: int) -> bool:
    if not (os.path.isfile(ids_path) and os.path.isfile(dist_path)):
        return False
    try:
        return np.load(ids_path, mmap_mode="r").shape == (rows,) and np.load(dist_path, mmap_mode="r").shape == (rows,)
    except ValueError:  # a truncated file from outside: encode again
        return False


def _check_nonfinite(store: FeatureStore, shard: Shard, ids: np.ndarray, strict: bool) -> dict[str, int]:
    """Videos of one shard with token -1 clips: refused under ``strict``, else warned about and counted."""
    bad = np.flatnonzero(np.asarray(ids) == NO_WORD)
    if len(bad) == 0:
        return {}
    found = {}
    for video_id, clips in videos_at(store, {shard.name: bad}).items():
        n = store.entry(video_id)["num_clips"]
        if strict:
            raise TokenizeError(f"{store.root}: video {video_id!r} has NaN/Inf features in clip {int(clips[0])} "
                                f"({len(clips)} of {n} clips); refused (--strict)")
        log.warning("%s: video %r: %d of %d clip(s) have NaN/Inf features; their token is -1", store.root,
                    video_id, len(clips), n)
        found[video_id] = len(clips)
    return found


def index_dtype(id_bytes: int) -> np.dtype:
    """One row of ``index.npy``, for ids of at most ``id_bytes`` UTF-8 bytes."""
    return np.dtype([("video_id", f"S{max(id_bytes, 1)}"), ("shard", "<i4"), ("offset", "<i8"),
                     ("num_clips", "<i8"), ("by_id", "<i8")])


def index_array(video_id: np.ndarray, shard, offset, num_clips) -> np.ndarray:
    """The rows of ``index.npy``: one per video (``video_id`` (videos,) |S
    UTF-8), in the store's order, plus ``by_id``, the rows in sorted id
    order (for lookup by bisection)."""
    video_id = np.asarray(video_id, dtype=np.bytes_)
    index = np.empty(len(video_id), index_dtype(video_id.dtype.itemsize))
    index["video_id"], index["shard"], index["offset"], index["num_clips"] = video_id, shard, offset, num_clips
    index["by_id"] = np.argsort(video_id, kind="stable")
    return index


def _write_index(out: str, store: FeatureStore, shard_names: list[str]) -> None:
    """``index_shards.npy``, then ``index.npy`` (see the module doc), from
    the store's index columns: no per-video Python work."""
    shard, offset, num_clips = _columns(store)
    position = np.full(max([shard_number(n) for n in shard_names] + [int(shard.max(initial=0))]) + 1, -1, np.int32)
    for i, name in enumerate(shard_names):
        position[shard_number(name)] = i  # store shard number -> position in index_shards.npy
    atomic_save_npy(os.path.join(out, "index_shards.npy"),
                    np.array([n.encode("utf-8") for n in shard_names], dtype=np.bytes_))
    atomic_save_npy(os.path.join(out, "index.npy"),
                    index_array(store.index.video_id, np.where(num_clips > 0, position[shard], -1), offset, num_clips))


class TokenStore:
    """Read what ``encode_store`` wrote: ``tokens(video_id)`` is an
    (n_clips,) int32 view of a memory-mapped file, in the store's clip order.

    The index is memory-mapped too (``index.npy``), so opening costs
    nothing per video and a lookup is a binary search over the ids in
    sorted order (``by_id``). A directory of format 1 (``index.jsonl``) is
    read into the same arrays. At most ``max_open_files`` token files stay
    mapped (least recently used closed first), as in ``FeatureStore``."""

    def __init__(self, root: str, max_open_files: int = MAX_OPEN_SHARDS):
        meta_path = os.path.join(root, "meta.json")
        index_path = os.path.join(root, "index.npy")
        old_index = os.path.join(root, "index.jsonl")
        if not os.path.isfile(meta_path) or not (os.path.isfile(index_path) or os.path.isfile(old_index)):
            raise TokenizeError(f"{root}: not a finished tokens directory (run `videolm tokenize encode`)")
        with open(meta_path) as f:
            self.meta = json.load(f)
        self.root = root
        if os.path.isfile(index_path):
            self._index = np.load(index_path, mmap_mode="r")  # (videos,) records, see index_dtype
            self._shard_names = [n.decode("utf-8") for n in np.load(os.path.join(root, "index_shards.npy"))]
        else:  # format 1
            rows = read_jsonl(old_index)
            self._shard_names = sorted({r["shard"] for r in rows})
            number = {name: i for i, name in enumerate(self._shard_names)}
            self._index = index_array([r["video_id"].encode("utf-8") for r in rows], [number[r["shard"]] for r in rows],
                                      [r["offset"] for r in rows], [r["num_clips"] for r in rows])
        self._video_id, self._by_id = self._index["video_id"], self._index["by_id"]  # (videos,) views
        self._file = MappedFiles(root, max_open_files)

    def ids(self) -> list[str]:
        """Every video id, in the store's order."""
        return [v.decode("utf-8") for v in self._video_id]

    def __len__(self) -> int:
        return len(self._video_id)

    def _row(self, video_id: str) -> int | None:
        key = video_id.encode("utf-8")
        i = bisect.bisect_left(self._by_id, key, key=lambda row: self._video_id[row])
        if i < len(self._by_id) and self._video_id[self._by_id[i]] == key:
            return int(self._by_id[i])
        return None

    def __contains__(self, video_id: str) -> bool:
        return self._row(video_id) is not None

    def entry(self, video_id: str) -> dict:
        """video_id, shard (the tokens file), offset and num_clips of one video."""
        row = self._row(video_id)
        if row is None:
            raise KeyError(f"{self.root}: no video {video_id!r}")
        rec = self._index[row]
        n = int(rec["num_clips"])
        return {"video_id": video_id, "shard": self._shard_names[rec["shard"]] if n else None,
                "offset": int(rec["offset"]), "num_clips": n}

    @property
    def rows(self) -> list[dict]:
        """Every video's ``entry``, in the store's order: builds them all, so
        O(videos) memory; look one up with ``entry`` instead."""
        return [self.entry(video_id) for video_id in self.ids()]

    def _view(self, video_id: str, suffix: str) -> np.ndarray:
        e = self.entry(video_id)
        if e["num_clips"] == 0:
            return np.zeros(0, np.int32 if suffix == ".npy" else np.float32)
        return self._file(e["shard"][: -len(".npy")] + suffix)[e["offset"] : e["offset"] + e["num_clips"]]

    def tokens(self, video_id: str) -> np.ndarray:
        """(n_clips,) int32 word ids; -1 where the features held NaN/Inf."""
        return self._view(video_id, ".npy")

    def distances(self, video_id: str) -> np.ndarray:
        """(n_clips,) float32 squared distance of each clip to its word's centroid."""
        return self._view(video_id, ".dist.npy")
