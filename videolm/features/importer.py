"""`videolm store import`: features someone else computed, one ``.npy`` file
per video, into a feature store, so pre-training, visual words and
evaluation read them like extracted ones; `videolm store export`: the other
way, a store as one ``<id>.npy`` per input (and ``clips.jsonl``) for other tools.

Released clip features come this way: fairseq MMPT / VideoCLIP's HowTo100M
S3D features (``<video_id>.npy``, one 512-d vector per second), the outputs
of video_features (``<video>_s3d.npy``, ``<video>_i3d.npy``, ... beside
``_fps.npy`` / ``_timestamps_ms.npy`` sidecars, which are not features). A
file holds a (clips, dim) floating-point array (a 1-D array is one clip);
the clips are consecutive windows: clip i spans ``[i * stride, i * stride +
window]`` seconds, the spacing the features were computed at, which the
user gives (it is not in the files); where video_features wrote a
``_timestamps_ms.npy`` beside a file, clip i spans ``window`` from its
timestamp (to it, for I3D's stacks; ``timestamps_of``); for a directory that `videolm
store export` wrote, its ``export.json`` gives and its ``clips.jsonl`` lists
each file's kind and clip times, so an export comes back as it was stored
(stills as stills). Files are read with
``np.load(allow_pickle=False)`` after their ``.npy`` header is checked: an
array of Python objects is refused, so loading never runs pickled code.

What a directory holds besides features is left alone: sidecars, feature
stores (a store written under its own input is not read back on a rerun),
and with ``--suffix`` every file whose name does not end ``SUFFIX.npy``. A
new store's dim is the one most files agree on (the headers of up to 64,
spread over the list); a file of another dim is then that file's error, and
no clear majority (two networks' features mixed) is refused naming both.

The store records ``backbone: imported:NAME``: search by example, which
needs the backbone to embed a new file as the store's were, refuses such a
store in one line. ``--media DIR`` names where the source videos or photos
are (``DIR/<id>.<ext>``, or the one ``<id>.<ext>`` below DIR), for the
pictures (gallery, retrieval examples); the features never need them.

The same guarantees as extraction, through the same code: the writer is the
extractor's and ``runplan.begin_run`` decides what is left, so a rerun skips
finished files (``retry_failed`` reads the failed ones again), a killed run
loses at most the files in flight, a bad file becomes an ``errors.jsonl``
row and the run goes on."""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from videolm.errors import first_line
from videolm.features.inputs import InputItem
from videolm.features.media_root import MediaIndex
from videolm.features.runplan import ExtractResult, Selection, begin_run
from videolm.features.store import FORMAT, Finished, StoreWriter
from videolm.progress import Progress

SIDECARS = ("_fps.npy", "_timestamps_ms.npy")   # video_features writes these beside the features
# (and `videolm store export` writes no other .npy than the features)
FLOAT16_MAX = float(np.finfo(np.float16).max)   # 65504
DIM_SAMPLE = 64          # files whose headers decide a new store's dim
DIM_MAJORITY = 0.75      # the share of them that must agree on it

@dataclass
class ImportResult(ExtractResult):
    """Extraction's counts (ok, failed, skipped and of them failed earlier,
    clips, seconds, errors) and how many ids ``--media`` had a source for."""

    media_found: int | None = None   # of the files read this run (``media_looked``)
    media_looked: int = 0


class ImportUsageError(ValueError):
    """A mistake in what import was given (a path, a setting); one line."""


def _is_store(directory: str) -> bool:
    """A videolm feature store (its meta.json says so): never features to import."""
    try:
        with open(os.path.join(directory, "meta.json")) as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _is_export(directory: str) -> bool:
    """A directory `videolm store export` wrote (its marker and clips.jsonl)."""
    return os.path.isfile(os.path.join(directory, EXPORT_MARKER)) and \
        os.path.isfile(os.path.join(directory, "clips.jsonl"))


def _npy_under(root: str, skip: set[str]) -> list[str]:
    """The .npy files below ``root`` (sorted; video_features' sidecars left
    out, except in an export, which holds nothing but features), not
    descending into a feature store or a directory in ``skip`` (real paths)."""
    sidecars = () if _is_export(root) else SIDECARS
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if os.path.realpath(os.path.join(dirpath, d)) not in skip
                             and not _is_store(os.path.join(dirpath, d)))
        found += [os.path.join(dirpath, f) for f in sorted(filenames)
                  if f.endswith(".npy") and not (sidecars and f.endswith(sidecars))]
    return found


def feature_files(inputs: list[str], suffix: str = "", out: str | None = None) -> list[tuple[str, str]]:
    """(video id, path) of every feature file: a file as given, a directory's
    ``*.npy`` below it (sorted, sidecars skipped; so are feature stores and
    ``out``, a store written under its own input). The id is the file name
    less ``.npy`` and ``suffix``; under a directory, its path relative to that
    directory, folders kept (as extraction names a directory's videos). With
    a ``suffix``, only files whose name ends ``SUFFIX.npy`` are read. One file
    given twice (alone and in its directory) counts once, under the id it was
    found under first; two files with one id are refused."""
    skip = {os.path.realpath(out)} if out is not None else set()
    found: list[tuple[str, str]] = []
    wanted = suffix + ".npy"
    for given in inputs:
        if os.path.isdir(given):
            if _is_store(given):
                raise ImportUsageError(f"{given}: a videolm feature store, not .npy features "
                                       f"(it is read as it is; `videolm store export` writes one .npy per input)")
            paths = _npy_under(given, skip)
            named = [(os.path.relpath(p, given), p) for p in paths]
            if suffix:
                named = [(n, p) for n, p in named if n.endswith(wanted) and len(os.path.basename(n)) > len(wanted)]
            if not named:
                raise ImportUsageError(f"{given}: no {'*' + wanted if suffix else '.npy'} feature file in it")
        elif os.path.isfile(given):
            if not given.endswith(".npy"):
                raise ImportUsageError(f"{given}: not a .npy file (import reads one numpy array per video)")
            named = [(os.path.basename(given), given)]
        else:
            raise ImportUsageError(f"{given}: no such file or directory")
        for name, path in named:
            stem = name[: -len(".npy")]
            if suffix and stem.endswith(suffix) and len(os.path.basename(stem)) > len(suffix):
                stem = stem[: -len(suffix)]
            found.append((stem.replace(os.sep, "/"), path))
    seen: dict[str, str] = {}
    taken: set[str] = set()   # real paths
    unique = []
    for video_id, path in found:
        real = os.path.realpath(path)
        if real in taken:
            continue   # the same file, given twice
        if video_id in seen:
            raise ImportUsageError(f"id {video_id!r} comes from two files, {seen[video_id]} and {path}; "
                                   f"import them into separate stores")
        seen[video_id] = path
        taken.add(real)
        unique.append((video_id, path))
    return unique


def _open(path: str) -> np.ndarray:
    """The file's array, memory-mapped (only its header is read); ValueError
    with a one-line reason when it is not one numeric .npy array."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as err:
        raise ValueError(f"cannot be read ({first_line(err)})") from None
    if magic[:4] == b"PK\x03\x04":
        raise ValueError("an .npz archive, not one array; save each video's (clips, dim) array as its own .npy")
    if magic != b"\x93NUMPY":
        raise ValueError("not a numpy .npy file (no .npy header)")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err) or "Python objects" in str(err):
            raise ValueError("holds Python objects (a pickle); only numeric arrays are read") from None
        raise ValueError(f"not a readable numpy array ({first_line(err)})") from None
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot be read ({first_line(err)})") from None


def _open_features(path: str) -> np.ndarray:
    """The file's (clips, dim) floating-point array, memory-mapped (a 1-D
    array is one clip); ValueError with a one-line reason otherwise."""
    array = _open(path)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"an array of shape {array.shape}; expected (clips, dim)")
    if array.dtype.kind != "f":
        raise ValueError(f"dtype {array.dtype}; expected floating-point features")
    return array


def _shape_of(path: str) -> tuple[int, int]:
    """(clips, dim) from the header alone; ValueError as ``read_features``."""
    return _open_features(path).shape


def read_features(path: str, dim: int | None = None, dtype: str = "float32") -> np.ndarray:
    """(clips, dim) float32 of one file; ValueError with a one-line reason,
    also when a value does not fit ``dtype``, the store's precision."""
    array = _open_features(path)
    if array.shape[0] == 0:
        raise ValueError("no clips (shape (0, dim))")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"dim {array.shape[1]}, where the store's is {dim}")
    features = np.asarray(array, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
    if len(bad):
        raise ValueError(f"NaN/Inf in clip {int(bad[0])} ({len(bad)} clip(s))")
    if dtype == "float16":
        top = float(np.abs(features).max())
        if top > FLOAT16_MAX:
            raise ValueError(f"a value of magnitude {top:.4g} does not fit float16 (at most {FLOAT16_MAX:g}); "
                             f"import with --dtype float32")
    return features


def store_dim(files: list[tuple[str, str]], out: str) -> int:
    """The store's dim: an earlier import's, else the dim most of the first
    readable files' headers (up to DIM_SAMPLE, spread over the list) agree on;
    files of another dim then fail one by one. No clear majority (features of
    two networks mixed, say _rgb and _flow) is refused, naming the dims."""
    try:
        with open(os.path.join(out, "meta.json")) as f:
            return int(json.load(f)["dim"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    step = max(len(files) // DIM_SAMPLE, 1)
    dims: Counter = Counter()
    example: dict[int, str] = {}
    first_error = None
    for _, path in files[::step][:DIM_SAMPLE]:
        try:
            d = int(_shape_of(path)[1])
        except ValueError as err:
            first_error = first_error or f"{path}: {err}"
            continue
        dims[d] += 1
        example.setdefault(d, path)
    if not dims:   # none of the sample: the first of the rest that reads
        for _, path in files:
            try:
                return int(_shape_of(path)[1])
            except ValueError as err:
                first_error = first_error or f"{path}: {err}"
        raise ImportUsageError(f"no file could be read as (clips, dim) features; the first: {first_error}")
    (dim, count), total = dims.most_common(1)[0], sum(dims.values())
    if count < DIM_MAJORITY * total:
        listed = ", ".join(f"{d} ({n} of {total} sampled files, e.g. {example[d]})" for d, n in dims.most_common())
        raise ImportUsageError(f"the files hold features of different dims: {listed}; import each kind into its "
                               f"own store (--suffix picks files by name, e.g. _rgb)")
    return dim


@dataclass
class Exported:
    """What `videolm store export` wrote beside its files: the clip spacing
    (export.json) and each file's kind and clip times (clips.jsonl). Rows
    are checked once and read again when their file is imported, so no
    clip times are held for the whole listing."""

    window: float
    stride: float
    where: dict[str, tuple[str, int, int]]   # real path of a file -> (clips.jsonl, byte offset, line number)

    def row(self, path: str) -> dict:
        """The clips.jsonl row of ``path``; ValueError (that file's error) where
        its export does not list it, or the row changed since it was checked."""
        found = self.where.get(os.path.realpath(path))
        if found is None:
            raise ValueError("not listed in its export's clips.jsonl")
        listing, offset, lineno = found
        with open(listing, "rb") as f:
            f.seek(offset)
            try:
                return _listed_row(f.readline())
            except (ValueError, TypeError) as err:
                raise ValueError(f"{listing}:{lineno} changed since the import began ({first_line(err)})") from None


def _listed_row(line: bytes) -> dict:
    """One clips.jsonl row, checked: ValueError with the reason."""
    row = json.loads(line)
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    file, kind, n = row.get("file"), row.get("kind"), row.get("num_clips")
    if not isinstance(file, str) or not file.endswith(".npy"):
        raise ValueError(f"file must be a .npy path, not {file!r}")
    if kind not in ("video", "image"):
        raise ValueError(f"kind must be video or image, not {kind!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"num_clips must be a positive integer, not {n!r}")
    for key in ("clip_start", "clip_end"):
        values = row.get(key)
        if not isinstance(values, list) or len(values) != n or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ValueError(f"{key} must be {n} finite numbers of seconds")
    if any(e < b for b, e in zip(row["clip_start"], row["clip_end"])):
        raise ValueError("a clip ends before it starts")
    return row


def exported(inputs: list[str]) -> Exported | None:
    """The exports among the input directories, checked; None when there is
    none. Exports of different clip spacings, or a clips.jsonl row that is
    not one (naming file:line), are refused."""
    found, where = [], {}
    for given in inputs:
        if not (os.path.isdir(given) and _is_export(given)):
            continue
        marker, listing = os.path.join(given, EXPORT_MARKER), os.path.join(given, "clips.jsonl")
        try:
            with open(marker, encoding="utf-8") as f:
                spec = json.load(f)["clip_spec"]
            window = float(spec["window_s"])
            stride = float(spec.get("stride_s") or window)
        except (ValueError, KeyError, TypeError) as err:
            raise ImportUsageError(f"{marker}: not an export's marker ({first_line(err)})") from None
        found.append((window, stride, marker))
        with open(listing, "rb") as f:
            offset = 0
            for lineno, line in enumerate(f, 1):
                here, offset = offset, offset + len(line)
                if not line.strip():
                    continue
                try:
                    row = _listed_row(line)
                except (ValueError, TypeError) as err:   # JSON and UTF-8 errors are ValueErrors
                    raise ImportUsageError(f"{listing}:{lineno}: not a clips.jsonl row ({first_line(err)})") from None
                where[os.path.realpath(os.path.join(given, row["file"]))] = (listing, here, lineno)
    if not found:
        return None
    if len({(w, st) for w, st, _ in found}) > 1:
        raise ImportUsageError("the exports have different clip spacings: " + ", ".join(
            f"{w:g} s every {st:g} s ({m})" for w, st, m in found) + "; import each into its own store")
    return Exported(found[0][0], found[0][1], where)


TIMESTAMPS = "_timestamps_ms.npy"
STACK_END_KEYS = ("rgb", "flow")   # video_features' I3D: a stack's timestamp is its last frame's


def timestamps_of(path: str, suffix: str = "") -> tuple[str, str] | None:
    """The video_features sidecar beside the feature file ``path`` and what
    its timestamps mark, ``"start"`` or ``"end"``; None when there is none.
    video_features writes ``<video>_<key>.npy`` beside
    ``<video>_timestamps_ms.npy``: with ``suffix`` the key is known; without,
    the longest ``<video>`` whose sidecar is there. Its frame-wise
    extractors (ResNet, CLIP, RAFT, ...) stamp each frame's own time, so a
    clip starts there; its I3D (``_rgb`` / ``_flow``) stamps the stack's last
    frame, so a clip ends there."""
    folder, name = os.path.split(path)
    stem = name[: -len(".npy")]
    if suffix:
        splits = [len(stem) - len(suffix)] if stem.endswith(suffix) and len(stem) > len(suffix) else []
    else:
        splits = sorted((i for i, c in enumerate(stem) if c == "_" and i > 0), reverse=True)
    for cut in splits:
        sidecar = os.path.join(folder, stem[:cut] + TIMESTAMPS)
        if os.path.isfile(sidecar):
            key = stem[cut:].lstrip("_")
            return sidecar, "end" if key in STACK_END_KEYS else "start"
    return None


def read_timestamps(sidecar: str, clips: int) -> np.ndarray:
    """Seconds from a ``_timestamps_ms.npy`` sidecar of a file of ``clips``
    clips; ValueError naming the sidecar when it does not fit them."""
    name = os.path.basename(sidecar)
    try:
        ms = _open(sidecar)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    if ms.ndim != 1 or ms.dtype.kind not in "fiu":
        raise ValueError(f"{name}: an array of shape {ms.shape} and dtype {ms.dtype}; expected one number per clip")
    if len(ms) != clips:
        raise ValueError(f"{name} holds {len(ms)} timestamp(s); the file holds {clips} clip(s)")
    seconds = np.asarray(ms, np.float64) / 1000.0
    if not np.isfinite(seconds).all() or (seconds < 0).any() or (np.diff(seconds) < 0).any():
        raise ValueError(f"{name}: timestamps must be finite, >= 0 and in order")
    return seconds


def _row(features: np.ndarray, path: str, window: float, stride: float, media_path: str | None,
         listed: dict | None = None, stamped: tuple[str, str] | None = None) -> dict:
    """The store row of one file: its clips every ``stride`` seconds, or as an
    export's clips.jsonl row ``listed`` gives them (kind and clip times), or
    spanning ``window`` from (or to) each timestamp of a video_features
    sidecar ``stamped`` (``timestamps_of``)."""
    n = len(features)
    st = os.stat(path)
    if listed is not None:
        if int(listed["num_clips"]) != n:
            raise ValueError(f"clips.jsonl lists {listed['num_clips']} clip(s) for it; the file holds {n}")
        start, end = np.asarray(listed["clip_start"], np.float64), np.asarray(listed["clip_end"], np.float64)
        kind = listed["kind"]
    elif stamped is not None:
        at = read_timestamps(stamped[0], n)
        start, end = (np.maximum(at - window, 0.0), at) if stamped[1] == "end" else (at, at + window)
        kind = "video"
    else:
        start = np.arange(n, dtype=np.float64) * stride
        end, kind = start + window, "video"
    row = {"kind": kind, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "reader": "imported",
           "duration": float(end.max()), "fps": 0.0, "num_frames": 1 if kind == "image" else 0,
           "clip_start": start.tolist(), "clip_end": end.tolist()}
    if media_path is not None:   # never opened here: the pictures read its fps when they draw it
        row["media"] = media_path
    return row


def _check_settings(out: str, window: float, stride: float, dtype: str, media: str | None, name: str) -> None:
    if not (math.isfinite(window) and window > 0):
        raise ImportUsageError(f"--window must be a finite number of seconds > 0, not {window}")
    if not (math.isfinite(stride) and stride > 0):
        raise ImportUsageError(f"--stride must be a finite number of seconds > 0, not {stride}")
    if dtype not in ("float16", "float32"):
        raise ImportUsageError(f"--dtype must be float16 or float32, not {dtype!r}")
    if media is not None and not os.path.isdir(media):
        raise ImportUsageError(f"--media {media}: no such directory")
    if not name or "/" in name:
        raise ImportUsageError(f"--name must be a non-empty word, not {name!r}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ImportUsageError(f"{out}: exists and is not a directory; give a new store directory")


def _same_clip_times(out: str, clip_times: str) -> None:
    """A rerun places its clips as the import that began the store did."""
    try:
        with open(os.path.join(out, "meta.json")) as f:
            began = json.load(f)["imported"].get("clip_times")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    if began is not None and began != clip_times:
        raise ImportUsageError(f"{out}: its import placed clips by {began}, this one by {clip_times}; "
                               f"rerun as it began (--no-timestamps or not) or write another store")


def import_features(inputs: list[str], out: str, window: float | None = None, stride: float | None = None,
                    name: str = "features", weights: str = "unknown", dtype: str = "float16", suffix: str = "",
                    media: str | None = None, videos_per_shard: int = 256, retry_failed: bool = False,
                    progress: Progress | None = None, stamps: bool = True) -> ImportResult:
    """Import the feature files under ``inputs`` into the store ``out`` (new, or
    one this import began: a rerun resumes, and with ``retry_failed`` reads the
    files that failed again). ``window`` / ``stride``: seconds each clip spans
    and between clip starts (default: the window); an export's directory
    (`videolm store export`) brings its own, and each file's kind and clip
    times. With ``stamps``, a plain file with a video_features
    ``_timestamps_ms.npy`` beside it (``timestamps_of``) has its clips at
    those times, each ``window`` long. ``result.media_found``: how many of the files read this run
    ``media`` had a source for (a rerun records no source for files already
    imported)."""
    progress = progress or Progress()
    export = exported(inputs)
    if export is not None:
        plain = [given for given in inputs if not (os.path.isdir(given) and _is_export(given))]
        if plain:
            raise ImportUsageError(f"{plain[0]}: not an export; import an export on its own (its clips come from "
                                   f"its clips.jsonl) and plain .npy files into another store")
        if window is not None or stride is not None:   # given: it must be the export's
            w = window if window is not None else export.window
            st = stride if stride is not None else w
            if (w, st) != (export.window, export.stride):
                raise ImportUsageError(f"the export's clips are {export.window:g} s every {export.stride:g} s "
                                       f"(its export.json), not {w:g} s every {st:g} s; leave --window and "
                                       f"--stride out")
        window, stride = export.window, export.stride
    if window is None:
        raise ImportUsageError("--window is needed: the seconds each feature vector spans (the files do not say; "
                               "an export's directory does)")
    stride = window if stride is None else stride
    _check_settings(out, window, stride, dtype, media, name)
    files = feature_files(inputs, suffix, out)
    listed = export.row if export is not None else (lambda path: None)
    t0 = time.perf_counter()
    dim = store_dim(files, out)
    meta = {"backbone": f"imported:{name}", "weights": weights, "dim": dim, "dtype": dtype,
            "clip_spec": {"window_s": float(window), "stride_s": float(stride), "frames": None, "short_side": None,
                          "crop": None},
            "imported": {"name": name, "from": [os.path.abspath(p) for p in inputs],
                         "clip_times": "export" if export is not None else
                         "timestamps where a _timestamps_ms.npy is beside" if stamps else "spacing"}}
    _same_clip_times(out, meta["imported"]["clip_times"])
    source = MediaIndex(media) if media is not None else (lambda video_id: None)
    writer = StoreWriter(out, meta, videos_per_shard)
    try:
        run = begin_run([InputItem(v, p, p) for v, p in files], writer, Selection(retry_failed=retry_failed), [],
                        progress, dim)
        result = run.result
        found = 0
        for pos, item in enumerate(run.decode):
            media_path = source(item.video_id)
            found += media_path is not None
            try:
                feats = read_features(item.path, dim, dtype)
                stamped = timestamps_of(item.path, suffix) if export is None and stamps else None
                res = Finished(item.video_id, item.path, feats,
                               _row(feats, item.path, window, stride, media_path, listed(item.path), stamped))
            except (ValueError, OSError) as err:
                res = Finished(item.video_id, item.path, None, {}, first_line(err))
            run.record(pos, res)
            if res.error is None:
                result.clips += len(res.features)
                progress.advance(len(res.features), "clips")
        result = run.end(t0)
    finally:
        writer.close()
    return ImportResult(**vars(result), media_found=found if media is not None else None,
                        media_looked=len(run.decode))


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
    from videolm.fileio import atomic_save_npy, atomic_write_json, atomic_writer

    progress = progress or Progress()
    if dtype not in (None, "float16", "float32"):
        raise ImportUsageError(f"--dtype must be float16 or float32, not {dtype!r}")
    store = FeatureStore(store_dir)
    mine = {"store": os.path.abspath(store.root), "backbone": store.meta.get("backbone"),
            "weights": store.meta.get("weights"), "clip_spec": store.meta.get("clip_spec"),
            "dtype": dtype or store.dtype}
    marker = os.path.join(out, EXPORT_MARKER)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ImportUsageError(f"{out}: exists and is not a directory; give a new directory")
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
    result = ExportResult(out)
    progress.start("inputs", len(ids))
    with atomic_writer(os.path.join(out, "clips.jsonl")) as listing:   # written as it goes, renamed last
        for video_id in ids:
            file = video_id + ".npy"
            path = os.path.join(out, file)
            features = store.features(video_id)
            if os.path.isfile(path):
                result.skipped += 1
            else:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                cast = np.asarray(features, dtype=dtype or store.dtype)
                if not np.isfinite(cast).all() and np.isfinite(np.asarray(features)).all():
                    raise ImportUsageError(f"{video_id!r}: a value of magnitude "
                                           f"{float(np.abs(np.asarray(features, np.float32)).max()):.4g} does not "
                                           f"fit {cast.dtype}; export with --dtype float32")
                atomic_save_npy(path, cast)
                result.written += 1
            times = store.clip_times(video_id)
            listing.write(json.dumps({"video_id": video_id, "file": file,
                                      "kind": "image" if store.is_image(video_id) else "video",
                                      "num_clips": int(len(features)), "clip_start": times[:, 0].tolist(),
                                      "clip_end": times[:, 1].tolist()}, sort_keys=True) + "\n")
            result.clips += len(features)
            progress.advance(1, "inputs")
    result.seconds = time.perf_counter() - t0
    return result
