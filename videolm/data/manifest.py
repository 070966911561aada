"""Corpus manifest rows: parsing and checking, without torch.

``parse_row(row, kind)`` turns one JSON row of a caption, image or ASR
manifest (formats: docs/formats.md, "Corpus manifests") into
``(media id, payload)`` or raises ``BadRow`` saying why; ``read_manifest``
reads a whole file, keeping bad rows as ``file:line: why`` messages. Kept
apart from ``videolm.data.corpus`` so that a command checking its inputs
(``videolm evaluate --protocol captions``) does not import torch first.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from videolm.data.errors import DataError


class BadRow(ValueError):
    """A manifest row that cannot be used; the message says why (no file:line)."""


def _shown(value) -> str:
    """repr, cut short: a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRow(f"{what} must be a number of seconds, not {_shown(value)}")
    return float(value)


def _media_id(row, key: str) -> str:
    if not isinstance(row, dict):
        raise BadRow(f"not a JSON object ({type(row).__name__})")
    if key not in row:
        raise BadRow(f"missing key {key!r}")
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise BadRow(f"{key!r} must be a non-empty string, not {_shown(value)}")
    return str(value)


def _span(obj: dict, what: str) -> tuple[float | None, float | None]:
    start, end = obj.get("start"), obj.get("end")
    if start is None and end is None:
        return None, None
    if start is None or end is None:
        raise BadRow(f"{what} has {'start' if end is None else 'end'} without {'end' if end is None else 'start'}")
    start, end = _number(start, f"{what} start"), _number(end, f"{what} end")
    if end < start:
        raise BadRow(f"{what} ends ({end}) before it starts ({start})")
    return start, end


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise BadRow(f"{what} text must be a string, not {_shown(value)}")
    if not value.strip():
        raise BadRow(f"{what} has empty text")
    return value


def parse_captions(row: dict, timed: bool = True) -> list[tuple[str, float | None, float | None]]:
    """``captions`` (strings or {text, start, end}) or ``caption``; row-level
    ``start``/``end`` apply to captions without their own."""
    if "captions" in row:
        captions = row["captions"]
        if not isinstance(captions, list) or not captions:
            raise BadRow("'captions' must be a non-empty list")
    elif "caption" in row:
        captions = [row["caption"]]
    else:
        raise BadRow("missing key 'captions' (or 'caption')")
    default = _span(row, "the row") if timed else (None, None)
    out = []
    for i, cap in enumerate(captions):
        what = f"caption {i}" if len(captions) > 1 else "the caption"
        if isinstance(cap, dict):
            text = _text(cap.get("text"), what)
            own = "start" in cap or "end" in cap
            start, end = (_span(cap, what) if own else default) if timed else (None, None)
        else:
            text, (start, end) = _text(cap, what), default
        out.append((text, start, end))
    return out


def parse_segments(row: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    segments = row.get("segments")
    if segments is None:
        raise BadRow("missing key 'segments'")
    if not isinstance(segments, list) or not segments:
        raise BadRow("'segments' must be a non-empty list")
    parsed = []
    for i, seg in enumerate(segments):
        what = f"segment {i}"
        if not isinstance(seg, dict):
            raise BadRow(f"{what} must be an object with start, end and text")
        if "start" not in seg or "end" not in seg:
            raise BadRow(f"{what} needs start and end")
        start, end = _span(seg, what)
        parsed.append((start, end, _text(seg.get("text"), what)))
    parsed.sort(key=lambda s: s[0])  # stable: equal starts keep file order
    return (np.array([s[0] for s in parsed]), np.array([s[1] for s in parsed]), [s[2] for s in parsed])


def parse_row(row, kind: str) -> tuple[str, object]:
    """(media id, payload) of one manifest row; BadRow when unusable."""
    if kind == "asr":
        return _media_id(row, "video_id"), parse_segments(row)
    if kind == "image":
        return _media_id(row, "image_id"), parse_captions(row, timed=False)
    return _media_id(row, "video_id"), parse_captions(row)


def read_manifest(path: str, kind: str) -> tuple[list[tuple[int, str, object]], list[str], int]:
    """(usable rows as (line, id, payload), bad-row messages 'file:line: why', rows read)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such manifest")
    rows, bad, count = [], [], 0
    try:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                count += 1
                try:
                    media_id, payload = parse_row(json.loads(line), kind)
                except json.JSONDecodeError as err:
                    bad.append(f"{path}:{line_no}: not valid JSON ({err.msg})")
                    continue
                except BadRow as err:
                    bad.append(f"{path}:{line_no}: {err}")
                    continue
                rows.append((line_no, media_id, payload))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None
    return rows, bad, count
