"""What to extract: files, directories, text lists and CSV/JSONL manifests.

Every input gets a ``video_id``: the manifest's ``video_id`` (or ``id``)
column when there is one, else the path relative to the directory or list it
came from, without extension (a lone file: its name without extension).
A manifest line that cannot be read, or an id seen before, is an
``InputError`` naming the file and line; the other inputs go on.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass

from videolm.fileio import now_iso
from videolm.video.decode import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

MEDIA_EXTENSIONS = VIDEO_EXTENSIONS + IMAGE_EXTENSIONS
LIST_EXTENSIONS = (".txt", ".lst", ".list")
PATH_KEYS = ("path", "video_path", "file", "filename")
ID_KEYS = ("video_id", "image_id", "id")


class UsageError(Exception):
    """A mistake in the command itself (exit status 2)."""


@dataclass(frozen=True)
class InputItem:
    video_id: str
    path: str
    origin: str  # where it was listed, e.g. "videos/" or "list.csv:7"


@dataclass(frozen=True)
class InputError:
    where: str  # "manifest.jsonl:3"
    reason: str

    def to_row(self) -> dict:
        return {"level": "error", "path": self.where, "reason": self.reason, "time": now_iso()}


def _strip_ext(path: str) -> str:
    """The id of a listed path: relative paths keep their folders; absolute ones
    keep only the file name."""
    if os.path.isabs(path):
        path = os.path.basename(path)
    return os.path.splitext(path)[0].replace(os.sep, "/")


def media_files(root: str) -> list[str]:
    """Every video or image under ``root`` (extensions in any case), sorted, links followed."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(MEDIA_EXTENSIONS)]
    return found


def _resolve(base_dir: str, path: str) -> str:
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base_dir, path))


def _from_record(record: dict, manifest: str, lineno: int) -> InputItem | InputError:
    where = f"{manifest}:{lineno}"
    path = next((record[k] for k in PATH_KEYS if record.get(k)), None)
    if not isinstance(path, str) or not path.strip():
        return InputError(where, f"no path (expected one of the keys {', '.join(PATH_KEYS)})")
    base = os.path.dirname(os.path.abspath(manifest))
    full = _resolve(base, path.strip())
    vid = next((record[k] for k in ID_KEYS if record.get(k) not in (None, "")), None)
    vid = str(vid) if vid is not None else _strip_ext(os.path.normpath(path.strip()))
    return InputItem(vid, full, where)


def _read_manifest(path: str) -> list[InputItem | InputError]:
    ext = os.path.splitext(path)[1].lower()
    out: list[InputItem | InputError] = []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        if ext in LIST_EXTENSIONS:
            base = os.path.dirname(os.path.abspath(path))
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if line and not line.startswith("#"):
                    out.append(InputItem(_strip_ext(os.path.normpath(line)), _resolve(base, line), f"{path}:{lineno}"))
        elif ext == ".csv":
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or not any(h.strip() in PATH_KEYS for h in header):
                raise UsageError(f"{path}: CSV manifest needs a header with a 'path' column")
            header = [h.strip() for h in header]
            for row in reader:
                lineno = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    out.append(InputError(f"{path}:{lineno}", f"expected {len(header)} fields, found {len(row)}"))
                    continue
                out.append(_from_record(dict(zip(header, row)), path, lineno))
        else:  # .jsonl
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    out.append(InputError(f"{path}:{lineno}", f"not valid JSON ({err.msg})"))
                    continue
                if not isinstance(record, dict):
                    out.append(InputError(f"{path}:{lineno}", "expected a JSON object"))
                    continue
                out.append(_from_record(record, path, lineno))
    return out


def _where(item: InputItem) -> str:
    """What an error about this input names: the manifest line it came from,
    or the file itself (not the folder it was found in)."""
    return item.path if os.path.isdir(item.origin) else item.origin


def collect_inputs(args: list[str]) -> tuple[list[InputItem], list[InputError]]:
    """Expand the command's inputs. A path given on the command line that does
    not exist is a usage error; a missing path inside a list is that input's
    error, found when it is decoded."""
    if not args:
        raise UsageError("no inputs given")
    found: list[InputItem | InputError] = []
    for arg in args:
        if os.path.isdir(arg):
            root = os.path.normpath(arg)
            media = media_files(root)
            if not media:
                raise UsageError(f"{arg}: no video or image files in this directory "
                                 f"(looked for {' '.join(MEDIA_EXTENSIONS)})")
            found += [InputItem(_strip_ext(os.path.relpath(p, root)), p, arg) for p in media]
        elif os.path.isfile(arg):
            ext = os.path.splitext(arg)[1].lower()
            if ext in LIST_EXTENSIONS + (".csv", ".jsonl"):
                found += _read_manifest(arg)
            else:
                found.append(InputItem(_strip_ext(os.path.basename(arg)), arg, arg))
        else:
            raise UsageError(f"{arg}: no such file or directory")
    items, errors, seen = [], [], {}
    for entry in found:
        if isinstance(entry, InputError):
            errors.append(entry)
        elif entry.video_id in seen:
            errors.append(InputError(_where(entry), f"duplicate id {entry.video_id!r} ({entry.path}; "
                                                    f"first from {seen[entry.video_id]}; ids can be given in a "
                                                    f".csv or .jsonl manifest's video_id)"))
        else:
            seen[entry.video_id] = _where(entry)
            items.append(entry)
    return items, errors
