"""The feature store: one vector per clip, sharded, memory-mapped, resumable.

Layout of a store directory, format 2 (readable with plain numpy + json, see
docs/formats.md)::

    meta.json                 backbone, weights, clip spec, dim, dtype, videolm version
    index/                    the per-video columns of every committed shard, as .npy arrays
                              (memory-mapped by readers: opening costs O(1), a lookup O(log n))
    errors.jsonl              one row per failed input (level "error") or warning
    shards/00000.npy          (clips, dim) float16/float32, opens with mmap_mode="r"
    shards/00000.jsonl        the rows of that shard (ok and failed, without clip times): the source of truth
    times/00000.npy           (clips, 2) float64 start and end seconds of that shard's clips
    .partial/log-*.bin        finished inputs whose shard is not yet complete (append-only logs)
    .lock                     held (flock) by the one process writing the store; holds its pid

How a run stays resumable and deterministic: the inputs still to do are cut,
in input order, into groups of ``videos_per_shard``; each group becomes one
shard. A finished input is appended at once to this writer's log in
``.partial/`` (one ``write``, so a killed process loses at most the inputs
in flight), and a group is committed as a shard -- features, clip times,
then its jsonl, each written to a temp file, fsynced and renamed -- only
after every group before it, so committed shards are always a prefix of the
plan. A rerun skips inputs in committed shards (failed ones too, unless
retried) and picks up the logged results (a record that cannot be read,
e.g. cut short by a power loss, is extracted again); it therefore cuts the
same groups and writes the same bytes as a run that was never interrupted.

``index/`` covers the first ``index/index.json["shards"]`` shards: the end
of a run (``finalize``) rebuilds it from the previous index and the shards
committed since. A reader opens it memory-mapped and adds the rows of any
shard committed after it (a run going on, or one that was killed), so what
is committed is always visible, at the cost of reading those shards' jsonl.

Format 1 stores (an ``index.jsonl`` of one JSON row per video with its clip
times) are read transparently (parsed at open, as before) and converted by
``upgrade_store`` (``videolm store upgrade``); a writer refuses them.

One writer at a time: a writer holds an exclusive ``flock`` on ``.lock`` for
its whole life, and a second one is refused with the holder's pid. The
kernel drops the lock when its process dies, so a killed run never blocks
the next one.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import glob
import json
import logging
import os
import re
import shutil
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from videolm.errors import first_line
from videolm.fileio import (atomic_directory, atomic_save_npy, atomic_write_json, atomic_write_jsonl,  # noqa: F401
                            fsync_directory, iter_jsonl, moved_aside, now_iso, read_json_file, read_jsonl,
                            restore_moved_aside)

log = logging.getLogger(__name__)

FORMAT = "videolm-features"
FORMAT_VERSION = 2
INDEX_FORMAT = "videolm-features-index"
INDEX_DIR = "index"
TIMES_DIR = "times"
# meta keys that must agree for a rerun (or a merge) to add to a store
COMPAT_KEYS = ("backbone", "weights", "clip_spec", "dim", "dtype", "temporal")  # temporal: absent = "mean"
LOCK_FILE = ".lock"
MAX_OPEN_SHARDS = 64  # memory-mapped shards kept open per reader (each holds a file descriptor)
ROW_KEYS = ("video_id", "shard", "offset", "num_clips", "status")  # row keys that are columns, not fields
NO_TIMES_KEY = "clip_times_npy"  # a v2 shard row whose clip times are not in times/ carries this key = false
SHARD_JSONL = re.compile(r"^(\d{5,})\.jsonl$")


class StoreError(Exception):
    """A store that cannot be opened or written as asked; one-line message."""


class UnreadableIndex(ValueError):
    """An index array that is there but cannot be read (truncated, not .npy)."""


# what a damaged JSON file's line adds
DAMAGED = "; the store is damaged: restore the file, or extract its inputs again into a new store"


def shard_name(number: int) -> str:
    return f"shards/{number:05d}.npy"


def shard_number(name: str) -> int:
    match = re.fullmatch(r"shards/(\d{5,})\.npy", name)
    if match is None:
        raise StoreError(f"shard {name!r}: expected shards/NNNNN.npy")
    return int(match.group(1))


def _shard_files(root: str, number: int) -> tuple[str, str, str]:
    """(features npy, rows jsonl, clip times npy) of shard ``number``."""
    base = f"{number:05d}"
    return (os.path.join(root, "shards", base + ".npy"), os.path.join(root, "shards", base + ".jsonl"),
            os.path.join(root, TIMES_DIR, base + ".npy"))


def committed_shards(root: str) -> list[int]:
    """Numbers of the committed shards (a jsonl and its npy), in order."""
    try:
        names = os.listdir(os.path.join(root, "shards"))
    except FileNotFoundError:
        return []
    have = set(names)
    numbers = []
    for name in names:
        match = SHARD_JSONL.match(name)
        if match and name[: -len(".jsonl")] + ".npy" in have:
            numbers.append(int(match.group(1)))
    return sorted(numbers)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for each (s, n), vectorised."""
    lengths = np.asarray(lengths, np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    shift = np.asarray(starts, np.int64) - (np.cumsum(lengths) - lengths)
    return np.repeat(shift, lengths) + np.arange(total, dtype=np.int64)


# ---------------------------------------------------------------- the index


INDEX_ARRAYS = ("video_id", "video_id_order", "shard", "offset", "num_clips", "clip_offsets", "clip_start",
                "clip_end", "has_clip_times", "is_image", "fields", "fields_offsets")


@dataclass
class StoreIndex:
    """The per-video columns of a store, row r = the r-th stored input in
    shard order; memory-mapped from ``index/`` or built in memory (format 1,
    shards committed after the index)."""

    video_id: np.ndarray        # (N,) |S{w} utf-8 ids
    video_id_order: np.ndarray  # (N,) int64 argsort of video_id (np.searchsorted(..., sorter=))
    shard: np.ndarray           # (N,) int32 shard number: shards/{shard:05d}.npy
    offset: np.ndarray          # (N,) int64 first row in the shard
    num_clips: np.ndarray       # (N,) int64
    clip_offsets: np.ndarray    # (N+1,) int64: clips of row r are clip_*[clip_offsets[r] : clip_offsets[r+1]]
    clip_start: np.ndarray      # (C,) float64 seconds
    clip_end: np.ndarray        # (C,) float64 seconds
    has_clip_times: np.ndarray  # (N,) bool: False when the row had no clip times (they are NaN)
    is_image: np.ndarray        # (N,) bool
    fields: np.ndarray          # (B,) uint8: each row's other keys as a utf-8 JSON object, concatenated
    fields_offsets: np.ndarray  # (N+1,) int64

    def __len__(self) -> int:
        return len(self.video_id)

    @classmethod
    def empty(cls) -> "StoreIndex":
        return IndexBuilder().build()

    @classmethod
    def load(cls, directory: str) -> "StoreIndex":
        """index/'s arrays, memory-mapped; a file that is there but cannot be read raises
        ``UnreadableIndex`` naming it."""
        arrays = {}
        for name in INDEX_ARRAYS:
            path = os.path.join(directory, name + ".npy")
            try:
                arrays[name] = np.load(path, mmap_mode="r")
            except FileNotFoundError:
                raise
            except (ValueError, OSError, EOFError) as err:
                raise UnreadableIndex(f"{path}: cannot be read ({first_line(err)})") from None
        return cls(**arrays)

    def save(self, directory: str) -> None:
        for name in INDEX_ARRAYS:
            np.save(os.path.join(directory, name + ".npy"), np.ascontiguousarray(getattr(self, name)))

    def find(self, ids: Sequence[str]) -> np.ndarray:
        """Row of each id, -1 where absent; (len(ids),) int64."""
        n = len(self)
        width = self.video_id.dtype.itemsize
        keys = [v.encode("utf-8") if isinstance(v, str) else b"" for v in ids]
        ok = np.array([0 < len(k) <= width and not k.endswith(b"\0") for k in keys], bool)
        out = np.full(len(keys), -1, np.int64)
        if n == 0 or not ok.any():
            return out
        query = np.array([k for k, good in zip(keys, ok) if good], dtype=self.video_id.dtype)
        pos = np.searchsorted(self.video_id, query, sorter=self.video_id_order)  # (q,) in sorted order
        pos = np.minimum(pos, n - 1)
        rows = np.asarray(self.video_id_order[pos], np.int64)
        hit = self.video_id[rows] == query
        out[np.flatnonzero(ok)] = np.where(hit, rows, -1)
        return out

    def find_one(self, video_id: str) -> int:
        """Row of one id, or -1 (a binary search over the memory-mapped ids)."""
        key = video_id.encode("utf-8") if isinstance(video_id, str) else b""
        n = len(self)
        if n == 0 or not 0 < len(key) <= self.video_id.dtype.itemsize or key.endswith(b"\0"):
            return -1
        query = np.array(key, dtype=self.video_id.dtype)
        pos = int(np.searchsorted(self.video_id, query, sorter=self.video_id_order))
        if pos >= n:
            return -1
        row = int(self.video_id_order[pos])
        return row if self.video_id[row] == query else -1

    def id_at(self, row: int) -> str:
        return self.video_id[row].decode("utf-8")

    def fields_at(self, row: int) -> dict:
        a, b = int(self.fields_offsets[row]), int(self.fields_offsets[row + 1])
        return json.loads(self.fields[a:b].tobytes())

    def times_at(self, row: int) -> np.ndarray:
        """(n, 2) start and end seconds of the row's clips (NaN when it had none recorded)."""
        a, b = int(self.clip_offsets[row]), int(self.clip_offsets[row + 1])
        return np.stack([self.clip_start[a:b], self.clip_end[a:b]], axis=1)

    def select(self, rows: np.ndarray) -> "StoreIndex":
        """The given rows (int64, in that order), in memory."""
        rows = np.asarray(rows, np.int64)
        clips = _ranges(np.asarray(self.clip_offsets[:-1])[rows], np.asarray(self.num_clips)[rows])
        fo = np.asarray(self.fields_offsets)
        flen = (fo[1:] - fo[:-1])[rows]
        fbytes = _ranges(fo[:-1][rows], flen)
        num_clips = np.asarray(self.num_clips)[rows]
        return _finish(np.asarray(self.video_id)[rows], np.asarray(self.shard)[rows], np.asarray(self.offset)[rows],
                       num_clips, np.asarray(self.clip_start)[clips], np.asarray(self.clip_end)[clips],
                       np.asarray(self.has_clip_times)[rows], np.asarray(self.is_image)[rows],
                       np.asarray(self.fields)[fbytes], _offsets(flen))


def _offsets(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def _finish(video_id, shard, offset, num_clips, clip_start, clip_end, has_clip_times, is_image, fields,
            fields_offsets) -> StoreIndex:
    video_id = np.asarray(video_id)
    if video_id.dtype.kind != "S" or video_id.dtype.itemsize == 0:
        video_id = video_id.astype("S1")
    return StoreIndex(video_id, np.argsort(video_id, kind="stable").astype(np.int64),
                      np.asarray(shard, np.int32), np.asarray(offset, np.int64), np.asarray(num_clips, np.int64),
                      _offsets(num_clips), np.asarray(clip_start, np.float64), np.asarray(clip_end, np.float64),
                      np.asarray(has_clip_times, bool), np.asarray(is_image, bool), np.asarray(fields, np.uint8),
                      np.asarray(fields_offsets, np.int64))


def concat_indexes(parts: list[StoreIndex], shard_base: list[int] | None = None) -> StoreIndex:
    """Rows of ``parts`` one after the other, in memory; ``shard_base[i]`` is
    added to part i's shard numbers (a merge renumbers the shards)."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return StoreIndex.empty()
    if len(parts) == 1 and not shard_base:
        return parts[0]
    base = shard_base or [0] * len(parts)
    width = max(p.video_id.dtype.itemsize for p in parts)
    ids = np.concatenate([np.asarray(p.video_id).astype(f"S{width}") for p in parts])
    flen = np.concatenate([np.diff(np.asarray(p.fields_offsets)) for p in parts])
    return _finish(ids, np.concatenate([np.asarray(p.shard, np.int64) + b for p, b in zip(parts, base)]),
                   np.concatenate([p.offset for p in parts]), np.concatenate([p.num_clips for p in parts]),
                   np.concatenate([p.clip_start for p in parts]), np.concatenate([p.clip_end for p in parts]),
                   np.concatenate([p.has_clip_times for p in parts]), np.concatenate([p.is_image for p in parts]),
                   np.concatenate([p.fields for p in parts]), _offsets(flen))


def keep_latest(index: StoreIndex) -> StoreIndex:
    """Drop rows whose id comes again later (the newer row replaces it)."""
    ids = np.asarray(index.video_id)
    order = np.asarray(index.video_id_order)
    if len(ids) < 2:
        return index
    sorted_ids = ids[order]
    repeated = sorted_ids[1:] == sorted_ids[:-1]  # stable sort: among equal ids, the last is the newest
    if not repeated.any():
        return index
    dropped = np.zeros(len(ids), bool)
    dropped[order[:-1][repeated]] = True
    return index.select(np.flatnonzero(~dropped))


class IndexBuilder:
    """Accumulates rows (from shard jsonl files, or format 1 index rows) into a StoreIndex."""

    def __init__(self):
        self.ids: list[bytes] = []
        self.shard: list[int] = []
        self.offset: list[int] = []
        self.num_clips: list[int] = []
        self.times: list[np.ndarray] = []  # (n, 2) float64 per row
        self.has_times: list[bool] = []
        self.is_image: list[bool] = []
        self.fields: list[bytes] = []

    def add(self, video_id: str, shard: int, offset: int, num_clips: int, fields: dict, times: np.ndarray | None):
        """``times``: (num_clips, 2), or None when the row records none (stored as NaN)."""
        self.ids.append(video_id.encode("utf-8"))
        self.shard.append(shard)
        self.offset.append(offset)
        self.num_clips.append(num_clips)
        self.has_times.append(times is not None)
        self.times.append(np.full((num_clips, 2), np.nan) if times is None else times)
        self.is_image.append(fields.get("kind") == "image")
        self.fields.append(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("utf-8"))

    def add_row(self, row: dict, shard: int | None = None, times: np.ndarray | None = None,
                times_in_row: bool = True) -> None:
        """One ok row as a shard jsonl (or format 1 index.jsonl) holds it."""
        fields = {k: v for k, v in row.items() if k not in ROW_KEYS}
        n = int(row["num_clips"])
        if times_in_row:  # format 1: lists in the row; kept there unless they are two of n numbers
            times = _row_times(fields, n)
        elif fields.pop(NO_TIMES_KEY, True) is False:
            times = None
        else:
            fields.pop("clip_start", None)
            fields.pop("clip_end", None)
        if times is not None:
            fields.pop("clip_start", None)
            fields.pop("clip_end", None)
        self.add(row["video_id"], shard_number(row["shard"]) if shard is None else shard, int(row["offset"]), n,
                 fields, times)

    def build(self) -> StoreIndex:
        ids = np.array(self.ids, dtype=f"S{max([len(i) for i in self.ids] + [1])}")
        times = np.concatenate(self.times) if self.times else np.zeros((0, 2))
        return _finish(ids, self.shard, self.offset, self.num_clips, times[:, 0], times[:, 1], self.has_times,
                       self.is_image, np.frombuffer(b"".join(self.fields), np.uint8),
                       _offsets(np.array([len(f) for f in self.fields], np.int64)))


def _row_times(row: dict, n: int) -> np.ndarray | None:
    """(n, 2) clip times from a row's clip_start/clip_end lists, or None when
    they are missing or not n numbers each (such lists stay in the row)."""
    start, end = row.get("clip_start"), row.get("clip_end")
    if not isinstance(start, list) or not isinstance(end, list) or len(start) != n or len(end) != n:
        return None
    try:
        times = np.ascontiguousarray(np.array([start, end], dtype=np.float64).T.reshape(n, 2))
    except (TypeError, ValueError):
        return None
    return times


class _Damaged(StoreError):
    """fileio's one line for a file that does not parse ("PATH:LINE: not valid JSON (...)"), with
    what to do about a damaged store."""

    def __init__(self, message: str):
        super().__init__(message + DAMAGED)


def _read_json(path: str) -> dict:
    """A store's JSON file, or a one-line StoreError naming it (and the line) when it is damaged."""
    return read_json_file(path, _Damaged)


def _shard_rows(root: str, number: int) -> list[dict]:
    return [row for _, row in iter_jsonl(_shard_files(root, number)[1], _Damaged, "shard rows file")]


def _add_shard(builder: IndexBuilder, root: str, number: int) -> None:
    """The ok rows of one committed shard (format 2 with times/, or format 1)."""
    times_path = _shard_files(root, number)[2]
    times = np.load(times_path, mmap_mode="r") if os.path.isfile(times_path) else None
    for row in _shard_rows(root, number):
        if row.get("status") != "ok":
            continue
        if times is None:
            builder.add_row(row, number)
        else:
            o, n = int(row["offset"]), int(row["num_clips"])
            builder.add_row(row, number, np.array(times[o : o + n], np.float64), times_in_row=False)


def read_index_info(root: str) -> dict | None:
    path = os.path.join(root, INDEX_DIR, "index.json")
    if not os.path.isfile(path):
        return None
    info = _read_json(path)
    if info.get("format") != INDEX_FORMAT:
        raise StoreError(f"{path}: not a videolm store index (format={info.get('format')!r})")
    return info


def open_index(root: str) -> tuple[StoreIndex, dict | None, list[int]]:
    """(index of every committed shard, index/index.json or None, the shards
    read from their jsonl because the index did not cover them yet)."""
    unreadable: list[str] = []
    for _ in range(3):  # a writer may swap index/ for a new one while it is being opened: open it again
        info = read_index_info(root)
        base = _load_index(root, info, unreadable) if info else None
        if info is None or base is not None:
            break
    else:
        if unreadable:  # the same file failed each time: not a writer's swap but a damaged file
            raise StoreError(f"{unreadable[-1]}; remove {os.path.join(root, INDEX_DIR)} to read the store from its "
                             "shards (the next `videolm extract` into it writes the index again)")
        raise StoreError(f"{os.path.join(root, INDEX_DIR)}: changed while being read, three times; try again")
    covered = info["shards"] if info else 0
    tail = [n for n in committed_shards(root) if n >= covered]
    if not tail:
        return base if base is not None else StoreIndex.empty(), info, tail
    builder = IndexBuilder()
    for number in tail:
        _add_shard(builder, root, number)
    return keep_latest(concat_indexes([base, builder.build()])), info, tail


def _load_index(root: str, info: dict, unreadable: list[str] | None = None) -> StoreIndex | None:
    """index/'s arrays, or None when they do not match ``info`` (replaced meanwhile, or unreadable:
    then ``unreadable`` gets a line naming the file)."""
    try:
        index = StoreIndex.load(os.path.join(root, INDEX_DIR))
    except FileNotFoundError:
        return None
    except UnreadableIndex as err:
        if unreadable is not None:
            unreadable.append(str(err))
        return None
    inputs = info.get("inputs", info["videos"])   # index.json before "inputs" counted images under "videos"
    if (len(index), len(index.clip_start)) != (inputs, info["clips"]) or read_index_info(root) != info:
        return None
    return index


def _scan_errors(root: str, numbers: list[int]) -> "OrderedDict[str, tuple[int, dict]]":
    """Failed rows and rows with warnings of the given shards, latest per id,
    in the order of their latest row: id -> (shard number, row). Only lines
    that can hold one are parsed."""
    found: OrderedDict[str, tuple[int, dict]] = OrderedDict()
    for number in numbers:
        path = _shard_files(root, number)[1]
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if '"failed"' not in line and '"warnings"' not in line:
                    continue
                try:
                    row = json.loads(line)
                    row["video_id"]
                except (ValueError, KeyError, TypeError) as err:
                    raise StoreError(f"{path}:{lineno}: damaged shard row ({first_line(err)}); extract that "
                                     f"shard's inputs again into a new store") from None
                found.pop(row["video_id"], None)
                if row.get("status") == "failed" or row.get("warnings"):
                    found[row["video_id"]] = (number, row)
    return found


def error_rows(root: str, index: StoreIndex, input_errors: list[dict]) -> list[dict]:
    """errors.jsonl: input errors, then failures and warnings of the latest row of each input."""
    found = _scan_errors(root, committed_shards(root))
    failed = [v for v, (_, r) in found.items() if r.get("status") == "failed"]
    rows = index.find(failed)
    superseded = {v for v, r in zip(failed, rows) if r >= 0 and int(index.shard[r]) > found[v][0]}
    errors = list(input_errors)
    for video_id, (_, r) in found.items():
        if video_id in superseded:
            continue
        if r.get("status") == "failed":
            errors.append({"level": "error", "video_id": r["video_id"], "path": r["path"], "reason": r["reason"],
                           "time": r.get("time")})
        for w in r.get("warnings", []):
            errors.append({"level": "warning", "video_id": r["video_id"], "path": r["path"], "reason": w})
    return errors


def write_index_dir(root: str, index: StoreIndex, shards: int, errors: list[dict]) -> None:
    """``index/`` (built aside and renamed into place) describing ``shards`` committed shards."""
    images = int(np.count_nonzero(index.is_image))
    info = {"format": INDEX_FORMAT, "format_version": FORMAT_VERSION, "shards": shards, "inputs": len(index),
            "videos": len(index) - images, "images": images, "clips": int(np.asarray(index.num_clips).sum()),
            "id_width": index.video_id.dtype.itemsize,
            "failed": sum(1 for e in errors if e.get("level") == "error"),
            "warnings": sum(1 for e in errors if e.get("level") == "warning"),
            "arrays": list(INDEX_ARRAYS)}
    with atomic_directory(os.path.join(root, INDEX_DIR)) as tmp:
        index.save(tmp)
        with open(os.path.join(tmp, "index.json"), "w") as f:
            f.write(json.dumps(info, indent=2, sort_keys=True) + "\n")


def write_index(root: str, input_errors: list[dict]) -> StoreIndex:
    """errors.jsonl and ``index/`` from the previous index and the shards committed since."""
    index, _, _ = open_index(root)
    errors = error_rows(root, index, input_errors)
    atomic_write_jsonl(os.path.join(root, "errors.jsonl"), errors)
    numbers = committed_shards(root)
    write_index_dir(root, index, (numbers[-1] + 1) if numbers else 0, errors)
    return index


# ---------------------------------------------------------------- reading


class MappedFiles:
    """``.npy`` files under ``root``, memory-mapped on first use; at most
    ``limit`` stay open here (least recently used closed first: each holds a
    file descriptor, and a common open-file limit is 1,024). Views handed out
    stay valid after their file is closed here, and each keeps its mapping,
    and so a descriptor, for as long as it lives: a caller that keeps views of
    many shards (``dict(store)``) holds one descriptor per shard."""

    def __init__(self, root: str, limit: int = MAX_OPEN_SHARDS):
        self.root = root
        self.limit = max(1, limit)
        self._open: OrderedDict[str, np.ndarray] = OrderedDict()

    def __call__(self, name: str) -> np.ndarray:
        array = self._open.get(name)
        if array is None:
            path = os.path.join(self.root, name)
            try:
                array = np.load(path, mmap_mode="r")
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE, errno.EACCES, errno.ENOMEM):   # not the file's fault
                    raise StoreError(f"{path}: cannot be opened ({first_line(err)}); every feature view still "
                                     f"held keeps its shard's file open: copy what you keep (np.array), or raise "
                                     f"the open-file limit (ulimit -n)") from None
                raise StoreError(f"{path}: damaged feature shard ({first_line(err)}); extract its inputs again "
                                 "into a new store") from None
            except (ValueError, EOFError) as err:
                raise StoreError(f"{path}: damaged feature shard ({first_line(err)}); extract its inputs again "
                                 "into a new store") from None
            self._open[name] = array
            if len(self._open) > self.limit:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(name)
        return array


class StoreRows(Sequence):
    """``store.rows``: row r is ``store.entry`` of the r-th input, built when asked for."""

    def __init__(self, store: "FeatureStore"):
        self.store = store

    def __len__(self) -> int:
        return len(self.store.index)

    def __getitem__(self, row):
        if isinstance(row, slice):
            return [self.store.entry_at(r) for r in range(*row.indices(len(self)))]
        if row < 0:
            row += len(self)
        if not 0 <= row < len(self):
            raise IndexError(row)
        return self.store.entry_at(row)

    def __iter__(self):
        for row in range(len(self)):
            yield self.store.entry_at(row)


class FeatureStore:
    """Read a store: ``store.features(video_id)`` is an (n_clips, dim) view of
    a memory-mapped shard; nothing is loaded until asked for. The index's
    columns are memory-mapped too (``store.index``), so opening a store of
    any size costs the same, and a pickled store (a DataLoader worker) holds
    only its path and reopens it. At most ``max_open_shards`` shards stay
    mapped (least recently used closed first), so a store of any number of
    shards stays under the open-file limit."""

    def __init__(self, root: str, max_open_shards: int = MAX_OPEN_SHARDS):
        self.root = root
        self.max_open_shards = max_open_shards
        meta_path = os.path.join(root, "meta.json")
        if not os.path.isfile(meta_path):
            aside = moved_aside(root) if not os.path.exists(root) else None
            if aside:
                raise StoreError(f"{root}: missing; {aside} is the store as it was before an upgrade stopped while "
                                 f"swapping it: `videolm store upgrade {root}` puts it back and finishes")
            raise StoreError(f"{root}: not a feature store (no meta.json)")
        self.meta = _read_json(meta_path)
        if self.meta.get("format") != FORMAT:
            raise StoreError(f"{meta_path}: not a videolm feature store (format={self.meta.get('format')!r})")
        self.format_version = int(self.meta.get("format_version", 1))
        if self.format_version > FORMAT_VERSION:
            raise StoreError(f"{meta_path}: format {self.format_version}, written by a newer videolm "
                             f"(this one reads up to {FORMAT_VERSION}); upgrade videolm")
        self._info = None
        partial = os.path.isdir(os.path.join(root, ".partial"))
        if self.format_version == 1:
            index_path = os.path.join(root, "index.jsonl")
            if partial or not os.path.isfile(index_path):
                rows = index_rows_v1(root)  # a run is going on or was killed: the shards are the truth
            else:
                rows = read_jsonl(index_path)
            builder = IndexBuilder()
            for row in rows:
                builder.add_row(row)
            self.index = builder.build()
        else:
            self.index, info, tail = open_index(root)
            self._info = info if not tail and not partial else None  # its counts hold for the whole store
        self._shards = MappedFiles(root, max_open_shards)

    def __getstate__(self) -> dict:
        return {"root": self.root, "max_open_shards": self.max_open_shards}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"], state["max_open_shards"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def dtype(self) -> str:
        return self.meta["dtype"]

    @property
    def num_clips(self) -> int:
        return int(np.asarray(self.index.num_clips).sum())

    @property
    def rows(self) -> StoreRows:
        """Every input's entry, in shard order (built one at a time; at scale use ``store.index``)."""
        return StoreRows(self)

    def ids(self) -> list[str]:
        return [v.decode("utf-8") for v in self.index.video_id.tolist()]

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, video_id: str) -> bool:
        return self.index.find_one(video_id) >= 0

    def locate(self, video_ids: Sequence[str]) -> np.ndarray:
        """Index row of each id (-1 where absent), for many ids at once."""
        return self.index.find(video_ids)

    def _row(self, video_id: str) -> int:
        row = self.index.find_one(video_id)
        if row < 0:
            raise KeyError(f"{self.root}: no video {video_id!r} in the store")
        return row

    def entry_at(self, row: int) -> dict:
        """The stored row of index row ``row``: the writer's row plus shard, offset, num_clips, clip times."""
        ix = self.index
        entry = {"video_id": ix.id_at(row), **ix.fields_at(row), "shard": shard_name(int(ix.shard[row])),
                 "offset": int(ix.offset[row]), "num_clips": int(ix.num_clips[row])}
        if ix.has_clip_times[row]:
            a, b = int(ix.clip_offsets[row]), int(ix.clip_offsets[row + 1])
            entry["clip_start"] = ix.clip_start[a:b].tolist()
            entry["clip_end"] = ix.clip_end[a:b].tolist()
        return entry

    def entry(self, video_id: str) -> dict:
        return self.entry_at(self._row(video_id))

    def is_image(self, video_id: str) -> bool:
        return bool(self.index.is_image[self._row(video_id)])

    def shard(self, name: str) -> np.ndarray:
        """The memory-mapped shard ``name`` (see ``MappedFiles``)."""
        return self._shards(name)

    def features_at(self, row: int) -> np.ndarray:
        ix = self.index
        offset, n = int(ix.offset[row]), int(ix.num_clips[row])
        return self.shard(shard_name(int(ix.shard[row])))[offset : offset + n]

    def features(self, video_id: str) -> np.ndarray:
        """(n_clips, dim), a read-only view into the memory-mapped shard."""
        return self.features_at(self._row(video_id))

    def clip_times(self, video_id: str) -> np.ndarray:
        """(n_clips, 2) start and end seconds of each clip."""
        row = self._row(video_id)
        if self.index.has_clip_times[row]:
            return self.index.times_at(row)
        entry = self.entry_at(row)  # no (valid) times recorded: as the row has them
        if "clip_start" not in entry or "clip_end" not in entry:
            raise StoreError(f"{self.root}: {video_id!r} has no clip times recorded (a format 1 row without them); "
                             f"extract it again into a new store")
        return np.stack([entry["clip_start"], entry["clip_end"]], axis=1)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for row in range(len(self.index)):
            yield self.index.id_at(row), self.features_at(row)

    def errors(self) -> list[dict]:
        path = os.path.join(self.root, "errors.jsonl")
        if not os.path.isfile(path):
            return []
        try:
            return read_jsonl(path)
        except ValueError as err:   # JSON and UTF-8 errors
            raise StoreError(f"{path}: damaged ({first_line(err)}); the next `videolm extract` into the store "
                             f"writes it again from the shards") from None

    def summary(self) -> dict:
        if self._info is not None:
            failed, warnings = self._info["failed"], self._info["warnings"]
        else:
            errors = self.errors()
            failed = sum(1 for e in errors if e.get("level") == "error")
            warnings = sum(1 for e in errors if e.get("level") == "warning")
        images = int(np.count_nonzero(self.index.is_image))
        return {
            "videos": len(self.index) - images,
            "images": images,
            "clips": self.num_clips,
            "dim": self.dim,
            "dtype": self.dtype,
            "backbone": self.meta.get("backbone"),
            "weights": self.meta.get("weights"),
            "failed": failed,
            "warnings": warnings,
            "shards": len(np.unique(np.asarray(self.index.shard))),
            "format_version": self.format_version,
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


def _split_times(row: dict, n: int) -> tuple[dict, np.ndarray | None]:
    """(the row without its clip-time lists, (n, 2) times) when it has n of
    each; else (the row as it is, None)."""
    times = _row_times(row, n)
    if times is None:
        return row, None
    return {k: v for k, v in row.items() if k not in ("clip_start", "clip_end")}, times


class PartialLog:
    """Append-only records of finished inputs in ``.partial/log-*.bin``.

    A record is one JSON header line (id, path, row without clip times,
    error, warnings, time, shape, dtype, payload size and crc32) followed by
    the payload: the features, then the (n, 2) float64 clip times. One
    ``write`` per record, no fsync: a killed process loses nothing written;
    a power loss may cut the tail, and a record that does not check out ends
    the readable part of its file."""

    @staticmethod
    def record(result: Finished, compact: dict, times: np.ndarray | None) -> bytes:
        feats = result.features
        payload = b"" if feats is None else np.ascontiguousarray(feats).tobytes()
        if times is not None:
            payload += np.ascontiguousarray(times, np.float64).tobytes()
        header = {"video_id": result.video_id, "path": result.path, "row": compact, "error": result.error,
                  "warnings": result.warnings, "time": result.time, "times": times is not None,
                  "shape": None if feats is None else list(feats.shape),
                  "dtype": None if feats is None else feats.dtype.str, "nbytes": len(payload),
                  "crc": zlib.crc32(payload)}
        return json.dumps(header, sort_keys=True).encode("utf-8") + b"\n" + payload

    @staticmethod
    def read(path: str) -> tuple[list[tuple[Finished, dict, np.ndarray | None]], str | None, str | None]:
        """(readable records in file order as (result, compact row, times), why
        the rest is not or None, the id of the damaged record when known)."""
        out = []
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            end = data.find(b"\n", pos)
            if end < 0:
                return out, "a record header cut short", None
            try:
                head = json.loads(data[pos:end])
                nbytes, crc, video_id = int(head["nbytes"]), head["crc"], head["video_id"]
            except (ValueError, KeyError, TypeError):
                return out, "a record header that cannot be read", None
            payload = data[end + 1 : end + 1 + nbytes]
            if len(payload) != nbytes or zlib.crc32(payload) != crc:
                return out, "a result cut short or damaged", video_id
            pos = end + 1 + head["nbytes"]
            feats, times = None, None
            if head["shape"] is not None:
                dtype = np.dtype(head["dtype"])
                count = int(np.prod(head["shape"]))
                feats = np.frombuffer(payload, dtype, count).reshape(head["shape"]).copy()
                if head["times"]:
                    times = np.frombuffer(payload, np.float64, offset=count * dtype.itemsize).reshape(-1, 2).copy()
            row = dict(head["row"])
            if times is not None:
                row.update(clip_start=times[:, 0].tolist(), clip_end=times[:, 1].tolist())
            result = Finished(head["video_id"], head["path"], feats, row, head["error"], head["warnings"],
                              head["time"])
            out.append((result, head["row"], times))
        return out, None, None


def _flock_or_refuse(fd: int, how: int, root: str, then: str) -> None:
    """Take ``how`` (LOCK_EX / LOCK_SH) on the store's lock file without waiting, or a one-line
    StoreError naming the writer's pid and what to do (``then``); the caller closes ``fd``."""
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        raise StoreError(f"{root}: another process (pid {holder}) is writing this store; {then}") from None


def remove_new_store(out: str, existed: bool) -> None:
    """Undo a new store that holds nothing (its meta, empty folders, its
    lock), after a run that could not compute a feature: the folder was empty
    or absent before (``existed``; StoreWriter refuses any other that is not
    a store)."""
    for name in os.listdir(out):
        path = os.path.join(out, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    if not existed:
        os.rmdir(out)


class StoreWriter:
    """Write a store shard by shard (see the module doc for the protocol)."""

    def __init__(self, root: str, meta: dict, videos_per_shard: int = 512):
        if videos_per_shard < 1:
            raise ValueError("videos_per_shard must be >= 1")
        self.root = root
        self.videos_per_shard = videos_per_shard
        self.dtype = np.dtype(meta["dtype"])
        self._lock_fd: int | None = None
        self._log_fd: int | None = None
        meta = json.loads(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **meta}))  # as stored
        meta_path = os.path.join(root, "meta.json")
        if not os.path.isfile(meta_path) and os.path.isdir(root) and set(os.listdir(root)) - {LOCK_FILE}:
            raise StoreError(f"{root}: exists, is not empty and is not a feature store")
        os.makedirs(root, exist_ok=True)
        self._lock()
        try:
            if os.path.isfile(meta_path):
                old = _read_json(meta_path)
                if old.get("format") != FORMAT:
                    raise StoreError(f"{root}: exists and is not a videolm feature store")
                if int(old.get("format_version", 1)) != FORMAT_VERSION:
                    raise StoreError(f"{root}: a format {old.get('format_version', 1)} store; run "
                                     f"`videolm store upgrade {root}` first (this videolm writes format "
                                     f"{FORMAT_VERSION})")
                diff = describe_mismatch(old, meta)
                if diff:
                    raise StoreError(
                        f"{root}: holds features from backbone={old.get('backbone')} weights={old.get('weights')} "
                        f"with another setting ({', '.join(diff)} differ); write to another directory")
            else:
                atomic_write_json(meta_path, meta)
            for sub in ("shards", TIMES_DIR, ".partial"):
                os.makedirs(os.path.join(root, sub), exist_ok=True)
        except BaseException:
            self.close()
            raise
        self.meta = meta
        self._clean_temp_files()
        numbers = committed_shards(root)
        self.num_shards = (numbers[-1] + 1) if numbers else 0
        # what is committed, for is_done / conflict: ok rows through the index, failed rows scanned
        self._stored = FeatureStore(root) if numbers else None
        self._failed = {v: (n, r) for v, (n, r) in _scan_errors(root, numbers).items() if r.get("status") == "failed"}
        self._new: dict[str, dict] = {}  # rows committed by this writer
        self.groups: list[list[str]] = []
        self.results: dict[str, Finished] = {}
        self._group_of: dict[str, int] = {}  # planned id -> its group
        self._missing: list[int] = []
        self._prepared: dict[str, tuple[dict, np.ndarray | None]] = {}  # id -> (row without times, times)
        self._log_path: str | None = None
        self._log_of: dict[str, str] = {}  # id -> the log holding its latest record
        self._pending: dict[str, set[str]] = {}  # log -> ids with an uncommitted record there
        self.next_group = 0

    # -- the lock

    def _lock(self) -> None:
        path = os.path.join(self.root, LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _flock_or_refuse(fd, fcntl.LOCK_EX, self.root, "wait for it to finish, or write to another directory")
        except StoreError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        """Release the store (idempotent). ``finalize`` calls it."""
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        if hasattr(self, "_lock_fd"):
            self.close()

    def _clean_temp_files(self) -> None:
        """Leftovers of a killed run: temp files, and shard files whose jsonl never came."""
        for path in glob.glob(os.path.join(self.root, "**", "*.tmp-*"), recursive=True):
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        for path in glob.glob(os.path.join(self.root, ".partial", "*.tmp-*")):
            os.remove(path)
        for path in glob.glob(os.path.join(glob.escape(self.root), "*.old-*")):   # index/ moved aside by a
            shutil.rmtree(path, ignore_errors=True)   # killed swap: the index is rebuilt from the shards
        for npy in glob.glob(os.path.join(self.root, "shards", "*.npy")) + glob.glob(
                os.path.join(self.root, TIMES_DIR, "*.npy")):
            number = os.path.basename(npy)[: -len(".npy")]
            if not os.path.isfile(os.path.join(self.root, "shards", number + ".jsonl")):
                os.remove(npy)

    # -- which inputs are left

    @property
    def committed(self) -> "CommittedRows":
        """video id -> its latest committed row (``.get``, ``in``)."""
        return CommittedRows(self)

    def _locate(self, video_id: str) -> tuple[str, "dict | int | None"]:
        """Where the latest committed row of an id is: ("new", row) committed by this writer,
        ("stored", index row) an ok row of the store it opened, ("failed", row) a failure recorded
        after any ok row, or ("", None)."""
        row = self._new.get(video_id)
        if row is not None:
            return "new", row
        failed = self._failed.get(video_id)
        if self._stored is not None:
            r = self._stored.index.find_one(video_id)
            if r >= 0 and (failed is None or int(self._stored.index.shard[r]) > failed[0]):
                return "stored", r
        return ("failed", failed[1]) if failed is not None else ("", None)

    def _committed_row(self, video_id: str) -> dict | None:
        where, found = self._locate(video_id)
        return dict(self._stored.entry_at(found), status="ok") if where == "stored" else found

    def conflict(self, video_id: str, path: str) -> str | None:
        """Why ``path`` cannot go under ``video_id``, when a committed row of
        that id came from another file (or this file changed since); None when
        there is no such row or it is the same file. The same file is the same
        path with the same size and modification time, or another path (the
        tree moved, or was given from another directory) with the same size
        and modification time."""
        row = self._committed_row(video_id)
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

    def committed_status(self, video_id: str) -> str | None:
        """"ok" or "failed" for the latest committed row of an id, None when there is none; cheap
        (no row is built): what a run asks of every input."""
        where, found = self._locate(video_id)
        if where == "stored":
            return "ok"
        return found.get("status") if found is not None else None

    def is_done(self, video_id: str, retry_failed: bool = False) -> bool:
        status = self.committed_status(video_id)
        return status is not None and not (retry_failed and status == "failed")

    def plan(self, video_ids: list[str]) -> None:
        """Cut the inputs still to do (in input order) into this run's shards,
        and take up the results a killed run logged for them."""
        n = self.videos_per_shard
        self.groups = [video_ids[i : i + n] for i in range(0, len(video_ids), n)]
        self.next_group = 0
        self._group_of = {v: i // n for i, v in enumerate(video_ids)}
        self._missing = [len(g) for g in self.groups]  # inputs of each group without a result yet
        for video_id in self.results:
            if video_id in self._group_of:
                self._missing[self._group_of[video_id]] -= 1
        wanted = set(video_ids)
        for path in sorted(glob.glob(os.path.join(self.root, ".partial", "log-*.bin"))):
            if path == self._log_path or path in self._pending:
                continue
            try:
                records, damage, damaged_id = PartialLog.read(path)
            except OSError as err:
                records, damage, damaged_id = [], first_line(err), None
            if damage:
                what = f"the saved result of {damaged_id!r}" if damaged_id else "a saved result"
                log.warning("%s: %s cannot be read (%s); extracting it again, and any saved after it",
                            path, what, damage)
            pending = set()
            for result, compact, times in records:
                if self.committed_status(result.video_id) == "ok":   # a failed one may be a retry's result
                    continue
                pending.add(result.video_id)
                old = self._log_of.get(result.video_id)
                if old is not None:
                    self._pending[old].discard(result.video_id)
                self._log_of[result.video_id] = path
                if result.video_id in wanted:
                    self._have(result.video_id)
                    self.results[result.video_id] = result
                    self._prepared[result.video_id] = (compact, times)
            self._pending[path] = pending
        self._drop_empty_logs()

    def has_partial(self, video_id: str) -> bool:
        return video_id in self.results

    # -- results

    def add(self, result: Finished) -> list[int]:
        """Record one finished input (ok or failed); commit every group that is
        now complete and next in order. Returns the shard numbers committed."""
        if not result.video_id or "\0" in result.video_id:
            raise StoreError(f"{result.path}: id {result.video_id!r} cannot be stored (empty, or holds NUL)")
        compact, times = result.row, None
        if result.features is not None:
            if result.features.ndim != 2 or result.features.shape[1] != self.meta["dim"]:
                raise StoreError(f"{result.path}: features of shape {result.features.shape}, "
                                 f"store expects (n, {self.meta['dim']})")
            with np.errstate(over="ignore"):   # an overflow is this input's error, below
                cast = result.features.astype(self.dtype, copy=False)
            if cast is not result.features and not np.isfinite(cast).all() and np.isfinite(result.features).all():
                top = float(np.abs(result.features).max())
                result = dataclasses.replace(result, features=None, error=(
                    f"a feature value of magnitude {top:.4g} does not fit {self.dtype} (at most "
                    f"{float(np.finfo(self.dtype).max):g}); extract into a --dtype float32 store"))
            else:
                result.features = cast
                compact, times = _split_times(result.row, result.features.shape[0])
        self._append_log(PartialLog.record(result, compact, times), result.video_id)
        self._have(result.video_id)
        self.results[result.video_id] = result
        self._prepared[result.video_id] = (compact, times)
        return self.commit_ready()

    def _append_log(self, record: bytes, video_id: str) -> None:
        if self._log_fd is None:
            self._log_path = os.path.join(self.root, ".partial", f"log-{time.time_ns():020d}-{os.getpid()}.bin")
            self._log_fd = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._pending[self._log_path] = set()
        view = memoryview(record)
        while view:
            view = view[os.write(self._log_fd, view):]
        old = self._log_of.get(video_id)
        if old is not None and old in self._pending:
            self._pending[old].discard(video_id)
        self._log_of[video_id] = self._log_path
        self._pending[self._log_path].add(video_id)

    def _drop_empty_logs(self) -> None:
        """Remove logs none of whose records is still waiting for its shard."""
        for path in [p for p, ids in self._pending.items() if not ids]:
            if path == self._log_path:
                os.close(self._log_fd)
                self._log_fd, self._log_path = None, None
            if os.path.exists(path):
                os.remove(path)
            del self._pending[path]

    def _have(self, video_id: str) -> None:
        """Count a new result against its group (before it goes into ``results``)."""
        group = self._group_of.get(video_id)
        if group is not None and video_id not in self.results:
            self._missing[group] -= 1

    def commit_ready(self) -> list[int]:
        done = []
        while self.next_group < len(self.groups) and self._missing[self.next_group] == 0:
            done.append(self._commit(self.groups[self.next_group]))
            self.next_group += 1
        if done:
            self._compact_log()
            self._drop_empty_logs()
        return done

    def _compact_log(self) -> None:
        """After a commit, the records of this run's log still waiting for
        their shard (results that came before their turn) go into a fresh log
        and the old one is dropped: the log holds what is waiting, not every
        feature of the run (results arriving out of order left one waiting
        record in every log, so none was ever dropped)."""
        if self._log_path is None:
            return
        waiting = sorted(self._pending.get(self._log_path, ()))
        os.close(self._log_fd)
        self._log_fd, self._log_path = None, None
        for video_id in waiting:
            if video_id in self.results and video_id in self._prepared:
                self._append_log(PartialLog.record(self.results[video_id], *self._prepared[video_id]), video_id)

    def _commit(self, group: list[str]) -> int:
        number = self.num_shards
        rows, arrays, times, offset = [], [], [], 0
        for video_id in group:
            res = self.results[video_id]
            if res.error is not None:
                rows.append({"video_id": video_id, "path": res.path, "status": "failed", "reason": res.error,
                             "time": res.time})
                continue
            compact, clip_times = self._prepared.get(video_id) or _split_times(res.row, res.features.shape[0])
            n = int(res.features.shape[0])
            row = {"video_id": video_id, "path": res.path, "status": "ok", **compact, "offset": offset,
                   "num_clips": n}
            row.pop("shard", None)
            if clip_times is None:
                row[NO_TIMES_KEY] = False
                clip_times = np.full((n, 2), np.nan)
            if res.warnings:
                row["warnings"] = res.warnings
            rows.append(row)
            arrays.append(res.features)
            times.append(clip_times)
            offset += n
        dim = self.meta["dim"]
        data = np.concatenate(arrays) if arrays else np.zeros((0, dim), self.dtype)
        npy, jsonl, times_npy = _shard_files(self.root, number)
        atomic_save_npy(npy, data)
        atomic_save_npy(times_npy, np.ascontiguousarray(np.concatenate(times)) if times else np.zeros((0, 2)))
        atomic_write_jsonl(jsonl, rows)  # last: the shard is committed when its jsonl is there
        self.num_shards += 1
        for row in rows:
            self._new[row["video_id"]] = row
        for video_id in group:
            del self.results[video_id]
            self._prepared.pop(video_id, None)
            holder = self._log_of.pop(video_id, None)
            if holder is not None and holder in self._pending:
                self._pending[holder].discard(video_id)
        return number

    def finalize(self, input_errors: list[dict] | None = None) -> None:
        """Rewrite errors.jsonl and index/ from the committed shards, and
        release the store."""
        pending = [g for g in self.groups[self.next_group:]]
        if pending:
            raise StoreError(f"{self.root}: {len(pending)} shard(s) still incomplete")
        self._drop_empty_logs()
        write_index(self.root, input_errors or [])
        partial = os.path.join(self.root, ".partial")
        if os.path.isdir(partial) and not os.listdir(partial):
            os.rmdir(partial)
            fsync_directory(self.root)
        self.close()


class CommittedRows:
    """``writer.committed``: the latest committed row of an id (read through the index)."""

    def __init__(self, writer: StoreWriter):
        self.writer = writer

    def get(self, video_id: str, default=None):
        row = self.writer._committed_row(video_id)
        return default if row is None else row

    def __contains__(self, video_id: str) -> bool:
        return self.writer._committed_row(video_id) is not None


# ---------------------------------------------------------------- format 1


def shard_rows_v1(root: str) -> list[dict]:
    """Every input's latest row in a format 1 store, in shard order. An input
    retried after a failure has a newer row in a later shard, which replaces the old one."""
    latest: dict[str, dict] = {}
    for number in committed_shards(root):
        for row in _shard_rows(root, number):
            latest.pop(row["video_id"], None)  # re-insert: order follows the newest row
            latest[row["video_id"]] = row
    return list(latest.values())


def index_rows_v1(root: str) -> list[dict]:
    """The rows a format 1 index.jsonl holds, derived from the committed shards."""
    return [{k: v for k, v in r.items() if k != "status"} for r in shard_rows_v1(root) if r.get("status") == "ok"]


def _v2_shard_rows(rows: list[dict], number_clips: int) -> tuple[list[dict], np.ndarray]:
    """A format 1 shard's rows as format 2 rows (no shard name, clip times
    moved out) and its (clips, 2) times array."""
    times = np.full((number_clips, 2), np.nan)
    out = []
    for row in rows:
        row = {k: v for k, v in row.items() if k != "shard"}
        if row.get("status") == "ok":
            o, n = int(row["offset"]), int(row["num_clips"])
            compact, t = _split_times(row, n)
            if t is None:
                compact = dict(row, **{NO_TIMES_KEY: False})
            else:
                times[o : o + n] = t
            row = compact
        out.append(row)
    return out, times


def _link_or_copy(src: str, dst: str, link: bool = True) -> None:
    tmp = dst + f".tmp-{os.getpid()}"
    if os.path.exists(tmp):
        os.remove(tmp)
    try:
        if not link:
            raise OSError
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _take_shard(src_root: str, number: int, dst_root: str, dst_number: int, link: bool = True) -> None:
    """Shard ``number`` of ``src_root`` as shard ``dst_number`` of ``dst_root``:
    hard links where the filesystem allows; a format 1 shard's jsonl is
    rewritten and its clip times written out."""
    src_npy, src_jsonl, src_times = _shard_files(src_root, number)
    dst_npy, dst_jsonl, dst_times = _shard_files(dst_root, dst_number)
    _link_or_copy(src_npy, dst_npy, link)
    if os.path.isfile(src_times):
        _link_or_copy(src_times, dst_times, link)
        _link_or_copy(src_jsonl, dst_jsonl, link)
        return
    clips = np.load(src_npy, mmap_mode="r").shape[0]
    rows, times = _v2_shard_rows(read_jsonl(src_jsonl), clips)
    atomic_save_npy(dst_times, np.ascontiguousarray(times))
    atomic_write_jsonl(dst_jsonl, rows)


def upgrade_store(root: str) -> bool:
    """Convert a format 1 store to format 2 in place: the new store is built
    beside it (features hard-linked, clip times and rows rewritten, results of
    an unfinished run carried over) and swapped in by renames, so a reader
    sees the old store or the new one. False when it is format 2 already."""
    meta_path = os.path.join(root, "meta.json")
    aside = restore_moved_aside(root)   # an upgrade stopped between its two renames: the old store is whole
    if aside:
        log.warning("%s: put back from %s (an upgrade was stopped while swapping it)", root, aside)
    if not os.path.isfile(meta_path):
        raise StoreError(f"{root}: not a feature store (no meta.json)")
    meta = _read_json(meta_path)
    if meta.get("format") != FORMAT:
        raise StoreError(f"{meta_path}: not a videolm feature store (format={meta.get('format')!r})")
    version = int(meta.get("format_version", 1))
    if version == FORMAT_VERSION:
        return False
    if version > FORMAT_VERSION:
        raise StoreError(f"{meta_path}: format {version}, written by a newer videolm")
    lock = os.open(os.path.join(root, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _flock_or_refuse(lock, fcntl.LOCK_EX, root, "wait for it to finish")
        with atomic_directory(root) as tmp:
            for sub in ("shards", TIMES_DIR):
                os.makedirs(os.path.join(tmp, sub))
            numbers = committed_shards(root)
            for number in numbers:
                _take_shard(root, number, tmp, number)
            _carry_partials_v1(root, tmp, meta)
            _carry_the_rest(root, tmp)
            errors = os.path.join(root, "errors.jsonl")
            input_errors = [e for e in read_jsonl(errors) if "video_id" not in e] if os.path.isfile(errors) else []
            write_index(tmp, input_errors)
            atomic_write_json(os.path.join(tmp, "meta.json"), dict(meta, format_version=FORMAT_VERSION))
    finally:
        os.close(lock)
    return True


REBUILT_BY_UPGRADE = {"shards", TIMES_DIR, INDEX_DIR, "index.jsonl", "errors.jsonl", "meta.json", ".partial", LOCK_FILE}


def _carry_the_rest(root: str, tmp: str) -> None:
    """What a store holds besides its own files (``tokens/`` that `tokenize
    encode` writes there, a user's notes) into the upgraded store, hard-linked
    where the filesystem allows: the swap replaces the whole directory."""
    for name in sorted(os.listdir(root)):
        if name in REBUILT_BY_UPGRADE or ".tmp-" in name or ".old-" in name:
            continue
        src, dst = os.path.join(root, name), os.path.join(tmp, name)
        if os.path.isdir(src) and not os.path.islink(src):
            shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy_file)
        else:
            _link_or_copy_file(src, dst)


def _link_or_copy_file(src: str, dst: str) -> None:
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _carry_partials_v1(root: str, tmp: str, meta: dict) -> None:
    """A format 1 run's per-input partials (.partial/HASH.json + .npy) as one format 2 log."""
    sources = sorted(glob.glob(os.path.join(root, ".partial", "*.json")))
    if not sources:
        return
    os.makedirs(os.path.join(tmp, ".partial"))
    records = []
    for js in sources:
        try:
            with open(js) as f:
                saved = json.load(f)
            feats = None
            if saved.get("error") is None:
                feats = np.load(js[: -len(".json")] + ".npy").astype(np.dtype(meta["dtype"]), copy=False)
        except (OSError, ValueError, KeyError, EOFError) as err:
            log.warning("%s: cannot be read (%s); that input is extracted again", js, first_line(err))
            continue
        result = Finished(saved["video_id"], saved["path"], feats, saved["row"], saved.get("error"),
                          saved.get("warnings", []), saved.get("time", now_iso()))
        compact, times = (result.row, None) if feats is None else _split_times(result.row, feats.shape[0])
        records.append(PartialLog.record(result, compact, times))
    with open(os.path.join(tmp, ".partial", f"log-{time.time_ns():020d}-{os.getpid()}.bin"), "wb") as f:
        f.write(b"".join(records))


# ---------------------------------------------------------------- merge and join


def merge_stores(out: str, parts: list[str], link: bool = True) -> FeatureStore:
    """Join finished stores (e.g. one per rank of a sharded extraction) into
    one, by reference: every shard file is hard-linked where the filesystem
    allows (else copied), and the index is the parts' indexes one after the
    other. Ids must be unique across the parts (failed ones included)."""
    if not parts:
        raise StoreError("merge: no part stores given")
    stores = [FeatureStore(p) for p in parts]
    for store in stores:
        _check_finished(store.root, store.format_version)
    first = stores[0]
    for store in stores[1:]:
        diff = describe_mismatch(first.meta, store.meta)
        if diff:
            raise StoreError(f"{store.root}: cannot merge with {first.root} ({', '.join(diff)} differ)")
    marker = os.path.join(out, MERGE_MARKER)   # what an unfinished merge into OUT was merging
    given = [os.path.realpath(p) for p in parts]
    if os.path.isfile(marker) and not os.path.exists(os.path.join(out, "meta.json")):
        try:
            with open(marker) as f:
                was = json.load(f)
        except (OSError, ValueError):
            was = None
        if was != given:
            raise StoreError(f"{out}: holds an unfinished merge of other stores ({marker}); merge into a new "
                             f"directory")
        for name in os.listdir(out):   # a merge of the same parts that was stopped: start it again
            if name not in (MERGE_MARKER, LOCK_FILE) and name not in {os.path.basename(p) for p in parts}:
                path = os.path.join(out, name)
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
    elif os.path.exists(os.path.join(out, "meta.json")) or (os.path.isdir(out) and set(os.listdir(out)) -
                                                           {os.path.basename(p) for p in parts} - {LOCK_FILE}):
        raise StoreError(f"{out}: already exists and is not empty; merge into a new directory")
    os.makedirs(out, exist_ok=True)
    lock = os.open(os.path.join(out, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _flock_or_refuse(lock, fcntl.LOCK_EX, out, "wait for that merge to finish")
        atomic_write_json(marker, given)
        merged = _merge_into(out, stores, first, link)
        os.remove(marker)
    finally:
        os.close(lock)
    return merged


MERGE_MARKER = ".merging.json"


def _merge_into(out: str, stores: list, first, link: bool) -> FeatureStore:
    numbers = [committed_shards(s.root) for s in stores]
    failed = [[v for v, (_, r) in _scan_errors(s.root, n).items() if r.get("status") == "failed" and v not in s]
              for s, n in zip(stores, numbers)]
    _check_unique(stores, failed)
    os.makedirs(os.path.join(out, "shards"), exist_ok=True)
    os.makedirs(os.path.join(out, TIMES_DIR), exist_ok=True)
    next_number, input_errors, indexes = 0, [], []
    for store, shard_numbers in zip(stores, numbers):
        renumber = np.full((shard_numbers[-1] + 1) if shard_numbers else 0, -1, np.int64)
        for number in shard_numbers:
            _take_shard(store.root, number, out, next_number, link)
            renumber[number] = next_number
            next_number += 1
        input_errors += [e for e in store.errors() if "video_id" not in e]
        index = store.index
        if len(index):
            index = dataclasses.replace(index, shard=renumber[np.asarray(index.shard)].astype(np.int32))
        indexes.append(index)
    merged = concat_indexes(indexes, [0] * len(indexes))
    errors = error_rows(out, merged, input_errors)
    atomic_write_jsonl(os.path.join(out, "errors.jsonl"), errors)
    write_index_dir(out, merged, next_number, errors)
    atomic_write_json(os.path.join(out, "meta.json"), dict(first.meta, format_version=FORMAT_VERSION))
    return FeatureStore(out)


def _check_finished(root: str, format_version: int) -> None:
    """A part store whose last run finished (index/index.json, no .partial/ beside it) and that no
    process is writing; else a one-line StoreError: merging it would silently leave inputs out."""
    path = os.path.join(root, LOCK_FILE)
    if os.path.isfile(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            _flock_or_refuse(fd, fcntl.LOCK_SH, root, "merge it when that run has finished")
        finally:
            os.close(fd)
    index = os.path.isfile(os.path.join(root, "index.jsonl")) if format_version == 1 else read_index_info(root)
    if os.path.isdir(os.path.join(root, ".partial")) or not index:
        raise StoreError(f"{root}: its last run did not finish (killed, or stopped by an error); rerun the same "
                         "`videolm extract` into it to finish it, then merge")


def _check_unique(stores: list[FeatureStore], failed: list[list[str]]) -> None:
    """A one-line StoreError naming both parts when an id is in two of them."""
    width = max([s.index.video_id.dtype.itemsize for s in stores] + [len(v.encode()) for f in failed for v in f] + [1])
    ids = np.concatenate([np.asarray(s.index.video_id).astype(f"S{width}") for s in stores] +
                         [np.array([v.encode() for v in f], dtype=f"S{width}") for f in failed])
    owner = np.concatenate([np.full(len(s.index), i) for i, s in enumerate(stores)] +
                           [np.full(len(f), i) for i, f in enumerate(failed)])
    order = np.argsort(ids, kind="stable")
    same = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if len(same):
        a, b = order[same[0]], order[same[0] + 1]
        video_id = ids[a].decode("utf-8")
        raise StoreError(f"{stores[owner[b]].root}: video id {video_id!r} is also in {stores[owner[a]].root}")


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
    if len({os.path.realpath(p) for p in parts}) < len(parts):
        raise StoreError("join: a store is given twice; give each part once")
    stores = [FeatureStore(p) for p in parts]
    for store in stores:
        _check_finished(store.root, store.format_version)
    first = stores[0]
    ids = [v for v in first.ids() if all(v in s for s in stores[1:])]
    if not ids:
        raise StoreError(f"join: no id is in all of {', '.join(parts)}")
    for store in stores[1:]:
        for v in ids:
            a, b = first.clip_times(v), store.clip_times(v)
            if a.shape != b.shape or not np.allclose(a, b, rtol=0.0, atol=atol):   # atol at any time, not relative
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
