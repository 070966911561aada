"""The feature store: one vector per clip, sharded, memory-mapped, resumable.

Layout of a store directory (readable with plain numpy + json, see docs/formats.md)::

    meta.json            backbone, weights, clip spec, dim, dtype, videolm version
    index.jsonl          one row per stored input, in shard order
    errors.jsonl         one row per failed input (level "error") or warning
    shards/00000.npy     (clips, dim) float16/float32, opens with mmap_mode="r"
    shards/00000.jsonl   the rows of that shard (ok and failed): the source of truth
    .partial/            finished inputs whose shard is not yet complete
    .lock                held (flock) by the one process writing the store; holds its pid

How a run stays resumable and deterministic: the inputs still to do are cut,
in input order, into groups of ``videos_per_shard``; each group becomes one
shard. A finished input is written at once to ``.partial/`` (so a kill loses
at most the inputs in flight), and a group is committed as a shard -- npy,
then its jsonl, each written to a temp file and renamed -- only after every
group before it, so committed shards are always a prefix of the plan. A rerun
skips inputs in committed shards (failed ones too, unless retried) and picks
up partials (one that cannot be read, e.g. cut short by a power loss, is
extracted again); it therefore cuts the same groups and writes the same
bytes as a run that was never interrupted.

index.jsonl follows the shards: each commit appends the shard's rows, a
writer rewrites it from the shards when it starts, and ``finalize`` rewrites
it with errors.jsonl. While a run is going on or after one was killed
(``.partial/`` exists), ``FeatureStore`` reads the rows from the shards
themselves, so what is committed is always visible.

One writer at a time: a writer holds an exclusive ``flock`` on ``.lock`` for
its whole life, and a second one is refused with the holder's pid. The
kernel drops the lock when its process dies, so a killed run never blocks
the next one.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from videolm.errors import first_line
from videolm.fileio import (atomic_save_npy, atomic_write_json, atomic_write_jsonl, fsync_directory,  # noqa: F401
                            now_iso, read_jsonl)

log = logging.getLogger(__name__)

FORMAT = "videolm-features"
FORMAT_VERSION = 1
# meta keys that must agree for a rerun (or a merge) to add to a store
COMPAT_KEYS = ("backbone", "weights", "clip_spec", "dim", "dtype")
LOCK_FILE = ".lock"
MAX_OPEN_SHARDS = 64  # memory-mapped shards kept open per reader (each holds a file descriptor)


class StoreError(Exception):
    """A store that cannot be opened or written as asked; one-line message."""


# ---------------------------------------------------------------- reading


class MappedFiles:
    """``.npy`` files under ``root``, memory-mapped on first use; at most
    ``limit`` stay open (least recently used closed first: each holds a file
    descriptor, and a common open-file limit is 1,024). Views handed out stay
    valid after their file is closed here."""

    def __init__(self, root: str, limit: int = MAX_OPEN_SHARDS):
        self.root = root
        self.limit = max(1, limit)
        self._open: OrderedDict[str, np.ndarray] = OrderedDict()

    def __call__(self, name: str) -> np.ndarray:
        array = self._open.get(name)
        if array is None:
            array = np.load(os.path.join(self.root, name), mmap_mode="r")
            self._open[name] = array
            if len(self._open) > self.limit:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(name)
        return array


class FeatureStore:
    """Read a store: ``store.features(video_id)`` is an (n_clips, dim) view of
    a memory-mapped shard; nothing is loaded until asked for. At most
    ``max_open_shards`` shards stay mapped (least recently used closed first),
    so a store of any number of shards stays under the open-file limit."""

    def __init__(self, root: str, max_open_shards: int = MAX_OPEN_SHARDS):
        self.root = root
        meta_path = os.path.join(root, "meta.json")
        index_path = os.path.join(root, "index.jsonl")
        if not os.path.isfile(meta_path):
            raise StoreError(f"{root}: not a feature store (no meta.json)")
        with open(meta_path) as f:
            self.meta = json.load(f)
        if self.meta.get("format") != FORMAT:
            raise StoreError(f"{meta_path}: not a videolm feature store (format={self.meta.get('format')!r})")
        if os.path.isdir(os.path.join(root, ".partial")) or not os.path.isfile(index_path):
            self.rows = index_rows(root)  # a run is going on or was killed: the shards are the truth
        else:
            self.rows = read_jsonl(index_path)
        self._by_id = {row["video_id"]: row for row in self.rows}
        self._shards = MappedFiles(root, max_open_shards)

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def dtype(self) -> str:
        return self.meta["dtype"]

    @property
    def num_clips(self) -> int:
        return sum(row["num_clips"] for row in self.rows)

    def ids(self) -> list[str]:
        return [row["video_id"] for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._by_id

    def entry(self, video_id: str) -> dict:
        try:
            return self._by_id[video_id]
        except KeyError:
            raise KeyError(f"{self.root}: no video {video_id!r} in the store") from None

    def shard(self, name: str) -> np.ndarray:
        """The memory-mapped shard ``name`` (see ``MappedFiles``)."""
        return self._shards(name)

    def features(self, video_id: str) -> np.ndarray:
        """(n_clips, dim), a read-only view into the memory-mapped shard."""
        row = self.entry(video_id)
        return self.shard(row["shard"])[row["offset"] : row["offset"] + row["num_clips"]]

    def clip_times(self, video_id: str) -> np.ndarray:
        """(n_clips, 2) start and end seconds of each clip."""
        row = self.entry(video_id)
        return np.stack([row["clip_start"], row["clip_end"]], axis=1)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for row in self.rows:
            yield row["video_id"], self.features(row["video_id"])

    def errors(self) -> list[dict]:
        path = os.path.join(self.root, "errors.jsonl")
        return read_jsonl(path) if os.path.isfile(path) else []

    def summary(self) -> dict:
        errors = self.errors()
        return {
            "videos": sum(1 for r in self.rows if r.get("kind") != "image"),
            "images": sum(1 for r in self.rows if r.get("kind") == "image"),
            "clips": self.num_clips,
            "dim": self.dim,
            "dtype": self.dtype,
            "backbone": self.meta.get("backbone"),
            "weights": self.meta.get("weights"),
            "failed": sum(1 for e in errors if e.get("level") == "error"),
            "warnings": sum(1 for e in errors if e.get("level") == "warning"),
            "shards": len({r["shard"] for r in self.rows}),
        }


# ---------------------------------------------------------------- writing


def describe_mismatch(old: dict, new: dict) -> list[str]:
    """Names of the meta keys (clip spec fields as ``clip_spec.x``) that differ."""
    keys = []
    for key in COMPAT_KEYS:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            keys.append(key)
    return keys


@dataclass
class Finished:
    """One input's result, as handed to the writer."""

    video_id: str
    path: str
    features: np.ndarray | None = None  # (n_clips, dim); None when failed
    row: dict = field(default_factory=dict)  # fps, duration, clip times, ...
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    time: str = field(default_factory=now_iso)  # when it finished (or failed)


class StoreWriter:
    """Write a store shard by shard (see the module doc for the protocol)."""

    def __init__(self, root: str, meta: dict, videos_per_shard: int = 512):
        if videos_per_shard < 1:
            raise ValueError("videos_per_shard must be >= 1")
        self.root = root
        self.videos_per_shard = videos_per_shard
        self.dtype = np.dtype(meta["dtype"])
        self._lock_fd: int | None = None
        meta = json.loads(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **meta}))  # as stored
        meta_path = os.path.join(root, "meta.json")
        if not os.path.isfile(meta_path) and os.path.isdir(root) and set(os.listdir(root)) - {LOCK_FILE}:
            raise StoreError(f"{root}: exists, is not empty and is not a feature store")
        os.makedirs(root, exist_ok=True)
        self._lock()
        try:
            if os.path.isfile(meta_path):
                with open(meta_path) as f:
                    old = json.load(f)
                if old.get("format") != FORMAT:
                    raise StoreError(f"{root}: exists and is not a videolm feature store")
                diff = describe_mismatch(old, meta)
                if diff:
                    raise StoreError(
                        f"{root}: holds features from backbone={old.get('backbone')} weights={old.get('weights')} "
                        f"with another setting ({', '.join(diff)} differ); write to another directory")
            else:
                atomic_write_json(meta_path, meta)
            os.makedirs(os.path.join(root, "shards"), exist_ok=True)
            os.makedirs(os.path.join(root, ".partial"), exist_ok=True)
        except BaseException:
            self.close()
            raise
        self.meta = meta
        self._clean_temp_files()
        self.committed: dict[str, dict] = {}  # video_id -> its row in a committed shard
        self.num_shards = 0
        for path in sorted(glob.glob(os.path.join(root, "shards", "*.jsonl"))):
            if not os.path.isfile(path[: -len(".jsonl")] + ".npy"):
                continue
            self.num_shards += 1
            for row in read_jsonl(path):
                self.committed[row["video_id"]] = row
        if self.num_shards:  # a killed run may have committed shards after the index was last written
            atomic_write_jsonl(os.path.join(root, "index.jsonl"), index_rows(root))
        self.groups: list[list[str]] = []
        self.results: dict[str, Finished] = {}
        self.next_group = 0

    # -- the lock

    def _lock(self) -> None:
        path = os.path.join(self.root, LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(f"{self.root}: another process (pid {holder}) is writing this store; "
                             "wait for it to finish, or write to another directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        """Release the store (idempotent). ``finalize`` calls it."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()

    def _clean_temp_files(self) -> None:
        """Leftovers of a killed run: temp files, and an npy whose jsonl never came."""
        for path in glob.glob(os.path.join(self.root, "**", "*.tmp-*"), recursive=True):
            os.remove(path)
        for path in glob.glob(os.path.join(self.root, ".partial", "*.tmp-*")):
            os.remove(path)
        for npy in glob.glob(os.path.join(self.root, "shards", "*.npy")):
            if not os.path.isfile(npy[: -len(".npy")] + ".jsonl"):
                os.remove(npy)

    # -- which inputs are left

    def conflict(self, video_id: str, path: str) -> str | None:
        """Why ``path`` cannot go under ``video_id``, when a committed row of
        that id came from another file (or this file changed since); None when
        there is no such row or it is the same file. The same file is the same
        path with the same size and modification time, or another path (the
        tree moved, or was given from another directory) with the same size
        and modification time."""
        row = self.committed.get(video_id)
        if row is None or not row.get("path"):
            return None
        old = row["path"]
        same_path = os.path.realpath(old) == os.path.realpath(path)
        try:
            st = os.stat(path)
        except OSError:
            return None if same_path else f"id {video_id!r} is already stored from {old}; {path} cannot be checked"
        known = row.get("size") is not None and row.get("mtime_ns") is not None  # older stores: path only
        same_stat = (row["size"], row["mtime_ns"]) == (st.st_size, st.st_mtime_ns) if known else None
        if same_stat or (same_path and same_stat is None):
            return None
        if same_path:
            return (f"changed since it was stored as {video_id!r} (size or modification time differ); "
                    "write to another store to extract it again")
        return (f"id {video_id!r} is already stored from {old}, another file; "
                "give this one another id (a manifest's video_id column) or write to another store")

    def is_done(self, video_id: str, retry_failed: bool = False) -> bool:
        row = self.committed.get(video_id)
        if row is None:
            return False
        return not (retry_failed and row.get("status") == "failed")

    def plan(self, video_ids: list[str]) -> None:
        """Cut the inputs still to do (in input order) into this run's shards."""
        n = self.videos_per_shard
        self.groups = [video_ids[i : i + n] for i in range(0, len(video_ids), n)]
        self.next_group = 0
        for video_id in video_ids:
            if video_id in self.results or not os.path.exists(self._partial_paths(video_id)[1]):
                continue
            try:
                self.results[video_id] = self._load_partial(video_id)
            except (OSError, ValueError, KeyError, TypeError, EOFError) as err:
                log.warning("%s: the saved result of %r cannot be read (%s); extracting it again",
                            self._partial_paths(video_id)[1], video_id, first_line(err))
                for path in self._partial_paths(video_id):
                    if os.path.exists(path):
                        os.remove(path)

    def has_partial(self, video_id: str) -> bool:
        return video_id in self.results

    # -- results

    def _partial_paths(self, video_id: str) -> tuple[str, str]:
        key = hashlib.sha1(video_id.encode()).hexdigest()[:20]
        base = os.path.join(self.root, ".partial", key)
        return base + ".npy", base + ".json"

    def _load_partial(self, video_id: str) -> Finished:
        """A finished input saved in .partial/; raises if either file is unreadable."""
        npy, js = self._partial_paths(video_id)
        with open(js) as f:
            saved = json.load(f)
        if saved["video_id"] != video_id:
            raise ValueError(f"holds {saved['video_id']!r}")
        features = None
        if saved.get("error") is None:
            features = np.load(npy)
            if features.ndim != 2 or features.shape[1] != self.meta["dim"] or features.dtype != self.dtype:
                raise ValueError(f"features of shape {features.shape} ({features.dtype})")
        return Finished(video_id, saved["path"], features, saved["row"], saved.get("error"),
                        saved.get("warnings", []), saved.get("time", now_iso()))

    def add(self, result: Finished) -> list[int]:
        """Record one finished input (ok or failed); commit every group that is
        now complete and next in order. Returns the shard numbers committed."""
        if result.features is not None:
            if result.features.ndim != 2 or result.features.shape[1] != self.meta["dim"]:
                raise StoreError(f"{result.path}: features of shape {result.features.shape}, "
                                 f"store expects (n, {self.meta['dim']})")
            result.features = result.features.astype(self.dtype, copy=False)
        npy, js = self._partial_paths(result.video_id)
        if result.features is not None:
            atomic_save_npy(npy, result.features)
        atomic_write_json(js, {"video_id": result.video_id, "path": result.path, "row": result.row,
                               "error": result.error, "warnings": result.warnings, "time": result.time})
        self.results[result.video_id] = result
        return self.commit_ready()

    def commit_ready(self) -> list[int]:
        done = []
        while self.next_group < len(self.groups) and all(v in self.results for v in self.groups[self.next_group]):
            done.append(self._commit(self.groups[self.next_group]))
            self.next_group += 1
        return done

    def _commit(self, group: list[str]) -> int:
        number = self.num_shards
        name = f"shards/{number:05d}"
        rows, arrays, offset = [], [], 0
        for video_id in group:
            res = self.results[video_id]
            if res.error is not None:
                rows.append({"video_id": video_id, "path": res.path, "status": "failed", "reason": res.error,
                             "time": res.time})
                continue
            n = int(res.features.shape[0])
            row = {"video_id": video_id, "path": res.path, "status": "ok", **res.row,
                   "shard": name + ".npy", "offset": offset, "num_clips": n}
            if res.warnings:
                row["warnings"] = res.warnings
            rows.append(row)
            arrays.append(res.features)
            offset += n
        dim = self.meta["dim"]
        data = np.concatenate(arrays) if arrays else np.zeros((0, dim), self.dtype)
        atomic_save_npy(os.path.join(self.root, name + ".npy"), data)
        atomic_write_jsonl(os.path.join(self.root, name + ".jsonl"), rows)
        self._append_index([r for r in rows if r["status"] == "ok"])
        self.num_shards += 1
        for row in rows:
            self.committed[row["video_id"]] = row
        for video_id in group:
            for path in self._partial_paths(video_id):
                if os.path.exists(path):
                    os.remove(path)
            del self.results[video_id]
        return number

    def _append_index(self, rows: list[dict]) -> None:
        """Add a committed shard's ok rows to index.jsonl, so readers that do not
        know the protocol see them before ``finalize`` (same bytes as it writes)."""
        if not rows:
            return
        data = "".join(json.dumps(_index_row(r), sort_keys=True) + "\n" for r in rows).encode()
        with open(os.path.join(self.root, "index.jsonl"), "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def finalize(self, input_errors: list[dict] | None = None) -> None:
        """Rewrite index.jsonl and errors.jsonl from the committed shards, and
        release the store."""
        pending = [g for g in self.groups[self.next_group:]]
        if pending:
            raise StoreError(f"{self.root}: {len(pending)} shard(s) still incomplete")
        write_index(self.root, input_errors or [])
        partial = os.path.join(self.root, ".partial")
        if os.path.isdir(partial) and not os.listdir(partial):
            os.rmdir(partial)
            fsync_directory(self.root)
        self.close()


def shard_rows(root: str) -> list[dict]:
    """Every input's latest row, in shard order. An input retried after a
    failure has a newer row in a later shard, which replaces the old one."""
    latest: dict[str, dict] = {}
    for path in sorted(glob.glob(os.path.join(root, "shards", "*.jsonl"))):
        if not os.path.isfile(path[: -len(".jsonl")] + ".npy"):
            continue
        for row in read_jsonl(path):
            latest.pop(row["video_id"], None)  # re-insert: order follows the newest row
            latest[row["video_id"]] = row
    return list(latest.values())


def _index_row(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "status"}


def index_rows(root: str) -> list[dict]:
    """The rows index.jsonl holds, derived from the committed shards."""
    return [_index_row(r) for r in shard_rows(root) if r.get("status") == "ok"]


def write_index(root: str, input_errors: list[dict]) -> None:
    """index.jsonl (ok rows, shard order) and errors.jsonl (failures + warnings)."""
    rows = shard_rows(root)
    index = [_index_row(r) for r in rows if r.get("status") == "ok"]
    errors = list(input_errors)
    for r in rows:
        if r.get("status") == "failed":
            errors.append({"level": "error", "video_id": r["video_id"], "path": r["path"], "reason": r["reason"],
                           "time": r.get("time")})
        for w in r.get("warnings", []):
            errors.append({"level": "warning", "video_id": r["video_id"], "path": r["path"], "reason": w})
    atomic_write_jsonl(os.path.join(root, "index.jsonl"), index)
    atomic_write_jsonl(os.path.join(root, "errors.jsonl"), errors)


def merge_stores(out: str, parts: list[str], link: bool = True) -> FeatureStore:
    """Join finished stores (e.g. one per rank of a sharded extraction) into one.
    Shards are hard-linked where the filesystem allows, else copied."""
    if not parts:
        raise StoreError("merge: no part stores given")
    stores = [FeatureStore(p) for p in parts]
    first = stores[0]
    for store in stores[1:]:
        diff = describe_mismatch(first.meta, store.meta)
        if diff:
            raise StoreError(f"{store.root}: cannot merge with {first.root} ({', '.join(diff)} differ)")
    if os.path.exists(os.path.join(out, "meta.json")) or (os.path.isdir(out) and
                                                         set(os.listdir(out)) - {os.path.basename(p) for p in parts}):
        raise StoreError(f"{out}: already exists and is not empty; merge into a new directory")
    seen: dict[str, str] = {}
    for store in stores:
        for row in shard_rows(store.root):
            if row["video_id"] in seen:
                raise StoreError(f"{store.root}: video id {row['video_id']!r} is also in {seen[row['video_id']]}")
            seen[row["video_id"]] = store.root
    os.makedirs(os.path.join(out, "shards"), exist_ok=True)
    atomic_write_json(os.path.join(out, "meta.json"), first.meta)
    number = 0
    input_errors = []
    for store in stores:
        input_errors += [e for e in store.errors() if "video_id" not in e]
        current = {r["video_id"]: r for r in shard_rows(store.root)}
        for path in sorted(glob.glob(os.path.join(store.root, "shards", "*.jsonl"))):
            name = f"shards/{number:05d}"
            src = path[: -len(".jsonl")] + ".npy"
            dst = os.path.join(out, name + ".npy")
            tmp = dst + f".tmp-{os.getpid()}"
            try:
                if not link:
                    raise OSError
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
            rows = [dict(r, shard=name + ".npy") if r.get("status") == "ok" else r for r in read_jsonl(path)
                    if current.get(r["video_id"]) is r or current.get(r["video_id"]) == r]
            atomic_write_jsonl(os.path.join(out, name + ".jsonl"), rows)
            number += 1
    write_index(out, input_errors)
    return FeatureStore(out)


JOIN_COPIED_KEYS = ("kind", "fps", "num_frames", "duration", "width", "height", "clip_start", "clip_end", "reader",
                    "variable_rate", "size", "mtime_ns")


def join_stores(out: str, parts: list[str], videos_per_shard: int = 512, atol: float = 1e-3) -> FeatureStore:
    """One store whose clip features are the parts' side by side (e.g. 2-D
    appearance and 3-D motion extracted over the same clips), each part
    L2-normalised per clip first so that neither dominates by scale. Only ids
    in every part are kept, and their clip times must agree (within ``atol``
    seconds). Written with StoreWriter (locked, shard by shard, resumable)."""
    if len(parts) < 2:
        raise StoreError("join: give at least two stores")
    stores = [FeatureStore(p) for p in parts]
    first = stores[0]
    ids = [v for v in first.ids() if all(v in s for s in stores[1:])]
    if not ids:
        raise StoreError(f"join: no id is in all of {', '.join(parts)}")
    for store in stores[1:]:
        for v in ids:
            a, b = first.clip_times(v), store.clip_times(v)
            if a.shape != b.shape or not np.allclose(a, b, atol=atol):
                raise StoreError(f"join: {v!r} has {len(a)} clips in {first.root} and {len(b)} with other times "
                                 f"in {store.root}; extract both with the same --window/--stride")
    meta = {"backbone": "+".join(str(s.meta.get("backbone")) for s in stores),
            "weights": "+".join(str(s.meta.get("weights")) for s in stores),
            "clip_spec": first.meta.get("clip_spec"), "dim": sum(s.dim for s in stores), "dtype": "float32",
            "joined": [{"root": s.root, "backbone": s.meta.get("backbone"), "weights": s.meta.get("weights"),
                        "dim": s.dim, "clip_spec": s.meta.get("clip_spec")} for s in stores],
            "join_normalised": "l2 per part and clip"}
    writer = StoreWriter(out, meta, videos_per_shard)
    try:
        todo = [v for v in ids if not writer.is_done(v)]
        writer.plan(todo)
        for v in todo:
            pieces = []
            for store in stores:
                f = np.asarray(store.features(v), dtype=np.float32)
                pieces.append(f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12))
            entry = first.entry(v)
            row = {k: entry[k] for k in JOIN_COPIED_KEYS if k in entry}
            writer.add(Finished(v, entry.get("path", ""), np.concatenate(pieces, axis=1), row))
        writer.finalize()
    finally:
        writer.close()
    return FeatureStore(out)
