"""Decoding one input into clip messages, without torch.

Both engines decode through ``decode_input``: the local engine's DataLoader
workers (which turn each clip array into a shared-memory tensor) and the Ray
engine's decode tasks (``decode_rows``). This module imports numpy and the
video readers only: a Ray decode worker is a fresh process, and importing
torch there cost it 3-5 s of start-up on 2 cores while the backbone actor
imported the same, on the run's critical path.
"""

from __future__ import annotations

import json
import logging
import os
import traceback

import numpy as np

from videolm.features.inputs import InputItem
from videolm.video.decode import DecodeError
from videolm.video.sampling import ClipSpec, open_clips

log = logging.getLogger(__name__)

CHUNK = 4  # clips per message from a worker


def decode_input(pos: int, item: InputItem, spec: ClipSpec, reader: str, threads: int):
    """Open, decode and cut one input. Yields ("clips", pos, first_clip,
    uint8 (n, T, H, W, 3) array, [(start, end)]) with at most CHUNK clips each,
    then ("done", pos, row, n_clips, warnings) or ("error", pos, reason);
    ("restart", pos) means: forget that input's clips, they all come again."""
    while True:
        sent, buf, opened = 0, [], None
        try:
            opened = open_clips(item.path, spec, reader, threads)
            for window, clip in opened.clips:
                buf.append((window, clip))
                if len(buf) == CHUNK:
                    yield _message(pos, sent, buf)
                    sent, buf = sent + len(buf), []
            if buf:
                yield _message(pos, sent, buf)
                sent += len(buf)
            break
        except DecodeError as err:
            if reader == "auto" and opened is not None and opened.info.reader == "decord":
                # decord failed midway (a failure before the first clip already fell back):
                # read the whole video again with PyAV; the consumer drops what it had
                log.info("%s: %s after %d clips; reading it again with PyAV", item.path, err, sent + len(buf))
                yield ("restart", pos)
                reader = "pyav"
                continue
            yield ("error", pos, str(err))
            return
        except Exception as err:  # an unexpected decoder failure must not stop the run; keep the trace in the log
            log.debug("%s: %s", item.path, traceback.format_exc())
            yield ("error", pos, f"{type(err).__name__}: {err}".splitlines()[0])
            return
    meta = opened.info
    try:  # with the path, tells a rerun whether an id still names the same file
        st = os.stat(item.path)
        size, mtime_ns = st.st_size, st.st_mtime_ns
    except OSError:  # gone since it was read: the features stand, the identity check is skipped
        size = mtime_ns = None
    row = {"kind": "image" if meta.reader == "image" else "video", "reader": meta.reader,
           "width": meta.width, "height": meta.height, "fps": round(meta.fps, 6),
           "num_frames": meta.num_frames, "duration": round(meta.duration or 0.0, 6),
           "size": size, "mtime_ns": mtime_ns}
    if meta.variable_rate:
        row["variable_rate"] = True
    warnings = []
    if row["kind"] == "video" and row["duration"] < spec.window_s - 1e-9:
        what = "dropped (--drop-short)" if spec.drop_short else "stored as one padded clip"
        warnings.append(f"shorter than one clip ({row['duration']:.2f} s < {spec.window_s:.2f} s); {what}")
    if meta.skipped_packets:
        warnings.append(f"{meta.skipped_packets} undecodable packet(s) skipped (a damaged stretch of the file); "
                        f"the clips there hold the frames around it")
    if meta.rotation:
        row["rotation"] = meta.rotation
    yield ("done", pos, row, sent, warnings)


def _message(pos, first, buf):
    clips = np.stack([c for _, c in buf])  # (n, T, H, W, 3) uint8
    times = [(w.start_s, w.end_s) for w, _ in buf]
    return ("clips", pos, first, clips, times)


def decode_rows(row: dict, spec: dict, reader: str, threads: int, nice: int):
    """The Ray engine's decode task (a Ray Data flat_map): one input -> its clip
    rows, then one closing row. ``nice``: the nice value to run at, above the
    backbone actors' (Ray reuses worker processes: the value is raised once,
    never past it). Row layout: see ``videolm.features.ray_engine``."""
    if os.nice(0) < nice:
        os.nice(nice - os.nice(0))
    item = InputItem(row["video_id"], row["path"], row["path"])
    pos, attempt = int(row["pos"]), 0
    for message in decode_input(pos, item, ClipSpec.from_dict(spec), reader, threads):
        kind = message[0]
        if kind == "clips":
            _, _, first, clips, times = message
            for j in range(clips.shape[0]):
                yield {"pos": pos, "attempt": attempt, "idx": first + j, "start": times[j][0], "end": times[j][1],
                       "clip": clips[j].tobytes(), "info": ""}
        elif kind == "restart":  # read again from the first clip; the driver drops this attempt's features
            attempt += 1
        else:  # "done" (row, n_clips, warnings) or "error" (reason)
            yield {"pos": pos, "attempt": attempt, "idx": -1, "start": 0.0, "end": 0.0, "clip": b"",
                   "info": json.dumps([kind, *message[2:]])}
