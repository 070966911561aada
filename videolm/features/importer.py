"""`videolm store import`: features someone else computed, one ``.npy`` file
per video, into a feature store, so pre-training, visual words and
evaluation read them like extracted ones; `videolm store export`: the other
way, a store as one ``<id>.npy`` per input (and ``clips.jsonl``) for other tools.

Released clip features come this way: fairseq MMPT / VideoCLIP's HowTo100M
S3D features (``<video_id>.npy``, one 512-d vector per second), the outputs
of video_features (``<video>_s3d.npy``, ``<video>_i3d.npy``, ... beside
``_fps.npy`` / ``_timestamps_ms.npy`` sidecars, which are skipped). A file
holds a (clips, dim) floating-point array (a 1-D array is one clip); the
clips are consecutive windows: clip i spans ``[i * stride, i * stride +
window]`` seconds, the spacing the features were computed at, which the
user gives (it is not in the files). Files are read with
``np.load(allow_pickle=False)``: an array of Python objects is refused, so
loading never runs pickled code.

The store records ``backbone: imported:NAME``: search by example, which
needs the backbone to embed a new file as the store's were, refuses such a
store in one line. ``--media DIR`` names where the source videos are
(``DIR/<id>.<ext>``), for the pictures (gallery, retrieval examples); the
features never need them.

The same guarantees as extraction: the writer is the extractor's, so a
rerun skips finished files, a killed run loses at most the file in flight,
a bad file becomes an ``errors.jsonl`` row and the run goes on."""

from __future__ import annotations

import glob
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np

from videolm.errors import first_line
from videolm.features.store import Finished, StoreWriter
from videolm.fileio import now_iso
from videolm.progress import Progress
from videolm.video.decode import VIDEO_EXTENSIONS

SIDECARS = ("_fps.npy", "_timestamps_ms.npy")   # video_features writes these beside the features
# (and `videolm store export` writes no other .npy than the features)


class ImportUsageError(ValueError):
    """A mistake in what import was given (a path, a setting); one line."""


@dataclass
class ImportResult:
    store: str
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    skipped_failed: int = 0    # of the skipped, those that failed in an earlier run
    clips: int = 0
    errors: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def feature_files(inputs: list[str], suffix: str = "") -> list[tuple[str, str]]:
    """(video id, path) of every feature file: a file as given, a directory's
    ``*.npy`` below it (sorted, sidecars skipped). The id is the file name
    less ``.npy`` and ``suffix``; under a directory, its path relative to
    that directory, folders kept (as extraction names a directory's videos).
    Two files with one id are refused."""
    found: list[tuple[str, str]] = []
    for given in inputs:
        if os.path.isdir(given):
            paths = sorted(p for p in glob.glob(os.path.join(given, "**", "*.npy"), recursive=True)
                           if not p.endswith(SIDECARS))
            if not paths:
                raise ImportUsageError(f"{given}: no .npy feature file in it")
            named = [(os.path.relpath(p, given), p) for p in paths]
        elif os.path.isfile(given):
            if not given.endswith(".npy"):
                raise ImportUsageError(f"{given}: not a .npy file (import reads one numpy array per video)")
            named = [(os.path.basename(given), given)]
        else:
            raise ImportUsageError(f"{given}: no such file or directory")
        for name, path in named:
            folder, stem = os.path.split(name[: -len(".npy")])
            if suffix and stem.endswith(suffix) and len(stem) > len(suffix):
                stem = stem[: -len(suffix)]
            found.append((os.path.join(folder, stem).replace(os.sep, "/"), path))
    seen: dict[str, str] = {}
    for video_id, path in found:
        if video_id in seen:
            raise ImportUsageError(f"id {video_id!r} comes from two files, {seen[video_id]} and {path}; "
                                   f"import them into separate stores")
        seen[video_id] = path
    return found


def read_features(path: str, dim: int | None = None) -> np.ndarray:
    """(clips, dim) float32 of one file; ValueError with a one-line reason."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err) or "Python objects" in str(err):
            raise ValueError("holds Python objects (a pickle); only numeric arrays are read") from None
        raise ValueError(f"not a numpy array ({first_line(err)})") from None
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot be read ({first_line(err)})") from None
    if not isinstance(array, np.ndarray):
        raise ValueError("an .npz archive, not one array; save each video's (clips, dim) array as its own .npy")
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"an array of shape {array.shape}; expected (clips, dim)")
    if array.dtype.kind != "f":
        raise ValueError(f"dtype {array.dtype}; expected floating-point features")
    if array.shape[0] == 0:
        raise ValueError("no clips (shape (0, dim))")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"dim {array.shape[1]}, where the store's is {dim}")
    features = np.asarray(array, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
    if len(bad):
        raise ValueError(f"NaN/Inf in clip {int(bad[0])} ({len(bad)} clip(s))")
    return features


def _media_of(video_id: str, media: str | None) -> str | None:
    if media is None:
        return None
    for ext in sorted(VIDEO_EXTENSIONS):
        path = os.path.join(media, video_id + ext)
        if os.path.isfile(path):
            return path
    return None


def _row(features: np.ndarray, path: str, window: float, stride: float, media_path: str | None) -> dict:
    n = len(features)
    start = np.arange(n, dtype=np.float64) * stride
    st = os.stat(path)
    row = {"kind": "video", "size": st.st_size, "mtime_ns": st.st_mtime_ns, "reader": "imported",
           "duration": float(start[-1] + window), "fps": 0.0, "num_frames": 0,
           "clip_start": start.tolist(), "clip_end": (start + window).tolist()}
    if media_path is not None:
        from videolm.video.decode import DecodeError, open_video

        row["media"] = media_path
        try:
            info = open_video(media_path).info
            row.update(fps=float(info.fps), num_frames=int(info.num_frames or 0), width=info.width,
                       height=info.height)
        except DecodeError:
            pass   # the pictures will say the source cannot be read
    return row


def import_features(inputs: list[str], out: str, window: float, stride: float | None = None,
                    name: str = "features", weights: str = "unknown", dtype: str = "float16", suffix: str = "",
                    media: str | None = None, videos_per_shard: int = 256,
                    progress: Progress | None = None) -> ImportResult:
    """Import the feature files under ``inputs`` into the store ``out`` (new, or
    one this import began: a rerun resumes). ``window`` / ``stride``: seconds
    each clip spans and between clip starts (default: the window)."""
    progress = progress or Progress()
    if not window > 0:
        raise ImportUsageError(f"--window must be > 0 seconds, not {window}")
    stride = window if stride is None else stride
    if not stride > 0:
        raise ImportUsageError(f"--stride must be > 0 seconds, not {stride}")
    if dtype not in ("float16", "float32"):
        raise ImportUsageError(f"--dtype must be float16 or float32, not {dtype!r}")
    if media is not None and not os.path.isdir(media):
        raise ImportUsageError(f"--media {media}: no such directory")
    if not name or "/" in name:
        raise ImportUsageError(f"--name must be a non-empty word, not {name!r}")
    files = feature_files(inputs, suffix)
    path_of = dict(files)
    t0 = time.perf_counter()
    dim, first_error = None, None
    for _, path in files:   # the store's dim: the first file that reads
        try:
            dim = read_features(path).shape[1]
            break
        except ValueError as err:
            first_error = first_error or f"{path}: {err}"
    if dim is None:
        raise ImportUsageError(f"no file could be read as (clips, dim) features; the first: {first_error}")
    meta = {"backbone": f"imported:{name}", "weights": weights, "dim": dim, "dtype": dtype,
            "clip_spec": {"window_s": float(window), "stride_s": float(stride), "frames": None, "short_side": None,
                          "crop": None},
            "imported": {"name": name, "from": [os.path.abspath(p) for p in inputs]}}
    result = ImportResult(out)
    writer = StoreWriter(out, meta, videos_per_shard)
    try:
        clash = {}
        for video_id, path in files:
            reason = writer.conflict(video_id, path)
            if reason is not None:
                clash[video_id] = reason
        todo = [(v, p) for v, p in files if v not in clash and not writer.is_done(v)]
        result.skipped = len(files) - len(todo) - len(clash)
        result.skipped_failed = sum(writer.committed_status(v) == "failed" for v, _ in files if v not in clash)
        writer.plan([v for v, _ in todo])
        progress.start("inputs", len(todo) + len(clash))
        for video_id, reason in clash.items():
            path = path_of[video_id]
            result.failed += 1
            result.errors.append({"level": "error", "video_id": video_id, "path": path, "reason": reason})
            progress.advance(1, "inputs")
            progress.finished(path, "failed", reason)
        for video_id, path in todo:
            if writer.has_partial(video_id):   # finished by a killed run
                res = writer.results[video_id]
            else:
                try:
                    feats = read_features(path, dim)
                    res = Finished(video_id, path, feats, _row(feats, path, window, stride, _media_of(video_id, media)))
                except (ValueError, OSError) as err:
                    res = Finished(video_id, path, None, {}, first_line(err))
                writer.add(res)
            if res.error is None:
                result.ok += 1
                result.clips += len(res.features) if res.features is not None else 0
            else:
                result.failed += 1
                result.errors.append({"level": "error", "video_id": video_id, "path": path, "reason": res.error})
            progress.advance(1, "inputs")
            progress.finished(path, "ok" if res.error is None else "failed", res.error)
        writer.commit_ready()
        writer.finalize([{"level": "error", "video_id": v, "path": path_of[v], "reason": r, "time": now_iso()}
                         for v, r in clash.items()])
    finally:
        writer.close()
    result.seconds = time.perf_counter() - t0
    return result


# ------------------------------------------------------------------ export

EXPORT_MARKER = "export.json"


@dataclass
class ExportResult:
    out: str
    written: int = 0
    skipped: int = 0
    clips: int = 0
    seconds: float = 0.0


def export_store(store_dir: str, out: str, dtype: str | None = None,
                 progress: Progress | None = None) -> ExportResult:
    """Every stored input as ``OUT/<id>.npy`` ((clips, dim), the store's dtype
    or ``dtype``; an id with folders in it, as extraction gives relative
    paths, keeps them) and ``OUT/clips.jsonl`` (id, file, kind, clip times):
    what other tools read, and what ``import_features`` reads back. A rerun
    into the same OUT skips the files already written (each is written
    atomically) and writes clips.jsonl again, last."""
    from videolm.features.store import FeatureStore
    from videolm.fileio import atomic_save_npy, atomic_write_json, atomic_write_jsonl

    progress = progress or Progress()
    if dtype not in (None, "float16", "float32"):
        raise ImportUsageError(f"--dtype must be float16 or float32, not {dtype!r}")
    store = FeatureStore(store_dir)
    mine = {"store": os.path.abspath(store.root), "backbone": store.meta.get("backbone"),
            "weights": store.meta.get("weights"), "clip_spec": store.meta.get("clip_spec"),
            "dtype": dtype or store.dtype}
    marker = os.path.join(out, EXPORT_MARKER)
    if os.path.isfile(marker):
        with open(marker) as f:
            was = json.load(f)
        if was != mine:
            raise ImportUsageError(f"{out}: holds an export of {was.get('store')} ({was.get('backbone')}, "
                                   f"{was.get('dtype')}); export into another directory")
    elif os.path.isdir(out) and os.listdir(out):
        raise ImportUsageError(f"{out}: exists, is not empty and is not an export; give a new directory")
    ids = store.ids()
    for video_id in ids:
        parts = video_id.split("/")
        if video_id.startswith("/") or ".." in parts or "" in parts:
            raise ImportUsageError(f"id {video_id!r} cannot be a file name under {out}")
    os.makedirs(out, exist_ok=True)
    atomic_write_json(marker, mine)
    t0 = time.perf_counter()
    result, rows = ExportResult(out), []
    progress.start("inputs", len(ids))
    for video_id in ids:
        file = video_id + ".npy"
        path = os.path.join(out, file)
        features = store.features(video_id)
        if os.path.isfile(path):
            result.skipped += 1
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_save_npy(path, np.asarray(features, dtype=dtype or store.dtype))
            result.written += 1
        times = store.clip_times(video_id)
        rows.append({"video_id": video_id, "file": file, "kind": "image" if store.is_image(video_id) else "video",
                     "num_clips": int(len(features)), "clip_start": times[:, 0].tolist(),
                     "clip_end": times[:, 1].tolist()})
        result.clips += len(features)
        progress.advance(1, "inputs")
    atomic_write_jsonl(os.path.join(out, "clips.jsonl"), rows)
    result.seconds = time.perf_counter() - t0
    return result
