"""Atomic file writes, used by every part that writes files (stores,
vocabularies, model directories, checkpoints, evaluation reports).

A file is written to a temporary name beside its target, flushed and
fsynced, then renamed over the target, and the directory is fsynced, so a
reader (or a machine that lost power) sees the old file or the new one,
never a truncated mix.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import time
from contextlib import contextmanager, suppress

import numpy as np


def fsync_directory(directory: str) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def _replace(tmp: str, path: str) -> None:
    os.replace(tmp, path)
    fsync_directory(os.path.dirname(path))


@contextmanager
def _temporary(tmp: str):
    """``tmp`` removed when the block that writes it fails (a full disk, a
    kill by KeyboardInterrupt), so a failed write leaves nothing behind."""
    try:
        yield tmp
    except BaseException:
        with suppress(OSError):
            os.remove(tmp)
        raise


def _write_with(path: str, tmp: str, write) -> None:
    with _temporary(tmp):
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, path)


def atomic_write_bytes(path: str, data: bytes) -> None:
    _write_with(path, f"{path}.tmp-{os.getpid()}", lambda f: f.write(data))


@contextmanager
def atomic_writer(path: str):
    """A text file written as it goes (for a listing too large to build in
    memory first) under a temporary name, fsynced and renamed to ``path`` when
    the block ends; an error leaves ``path`` as it was."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with _temporary(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, path)


def atomic_write_json(path: str, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_write_jsonl(path: str, rows) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())


def atomic_save_npy(path: str, array: np.ndarray) -> None:
    _write_with(path, f"{path}.tmp-{os.getpid()}.npy", lambda f: np.save(f, array))


def atomic_save_npz(path: str, **arrays) -> None:
    _write_with(path, f"{path}.tmp-{os.getpid()}.npz", lambda f: np.savez(f, **arrays))


def _fsync_tree(root: str) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(directory, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_directory(directory)


@contextmanager
def atomic_directory(directory: str):
    """Build a directory under a temporary name (yielded), then move it into
    place. An existing one is moved aside first and removed after, so a reader
    sees the old directory or the new one, never a mix; if the body raises,
    the temporary is removed and the old directory stays."""
    directory = os.path.normpath(directory)
    tmp = f"{directory}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
        _fsync_tree(tmp)
        if os.path.isdir(directory) and os.listdir(directory):
            old = f"{directory}.old-{os.getpid()}"
            os.replace(directory, old)
            _replace(tmp, directory)
            shutil.rmtree(old)
        else:
            if os.path.isdir(directory):
                os.rmdir(directory)
            _replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def moved_aside(directory: str) -> str | None:
    """The newest ``DIRECTORY.old-PID`` that ``atomic_directory`` left when it
    was stopped between moving the old directory aside and moving the new one
    in (the old one is whole); None when there is none."""
    found = glob.glob(glob.escape(os.path.normpath(directory)) + ".old-*")
    return max(found, key=os.path.getmtime) if found else None


def restore_moved_aside(directory: str) -> str | None:
    """Put back the directory ``atomic_directory`` moved aside when it is
    missing (see ``moved_aside``); returns where it came from, or None."""
    aside = moved_aside(directory) if not os.path.exists(directory) else None
    if aside:
        os.replace(aside, os.path.normpath(directory))
    return aside


@contextmanager
def utf8_errors_as(error: type[Exception], path: str):
    """A text file read in the block that is not UTF-8: ``error`` with one
    line naming ``path`` and the byte, instead of a UnicodeDecodeError."""
    try:
        yield
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None


def atomic_savefig(fig, path: str, dpi: int = 100) -> str:
    """A matplotlib figure as PNG, written to a temporary name and renamed."""
    tmp = f"{path}.tmp-{os.getpid()}.png"
    with _temporary(tmp):
        fig.savefig(tmp, dpi=dpi)
        _replace(tmp, path)
    return path


def read_json_file(path: str, error: type[Exception] = ValueError, what: str = "file"):
    """A JSON file's content; ``error`` with one line naming the file (and line) otherwise."""
    if not os.path.isfile(path):
        raise error(f"{path}: no such {what}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise error(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a UTF-8 text file") from None


def iter_jsonl(path: str, error: type[Exception] = ValueError, what: str = "file"):
    """(line number, value) of each non-blank line of a JSON-lines file; a line that
    does not parse is ``error`` naming ``path:line``."""
    if not os.path.isfile(path):
        raise error(f"{path}: no such {what}")
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as err:
                raise error(f"{path}:{line_no}: not valid JSON ({err.msg})") from None


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def now_iso() -> str:
    """Local time as ISO 8601, as errors and partial results record it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
