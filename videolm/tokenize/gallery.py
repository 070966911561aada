"""What a visual word looks like: for chosen words, the middle frames of the
store's clips nearest each word's centroid, one row per word, in a PNG (as in
Fig. 2 of VideoBERT). Frames are read back from the sources the store's
index names, at the clips' times."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from videolm.features.media_root import MediaRoot, NoSource
from videolm.features.store import FeatureStore
from videolm.fileio import atomic_savefig
from videolm.tokenize.kmeans import Progress
from videolm.tokenize.vocab import TokenizeError, Vocabulary, open_for_encoding
from videolm.video.decode import IMAGE_EXTENSIONS, DecodeError, load_image, open_video

log = logging.getLogger(__name__)


@dataclass
class GalleryConfig:
    words: list[int] | None = None  # None: the most frequent words of the store
    num_words: int = 8  # how many words, when choosing by frequency
    per_word: int = 6  # clips shown per word, nearest to its centroid first
    size: int = 96  # thumbnail side in pixels

    def __post_init__(self):
        for name, least in (("num_words", 1), ("per_word", 1), ("size", 16)):
            if getattr(self, name) < least:
                raise ValueError(f"gallery {name} must be >= {least}, got {getattr(self, name)}")


@dataclass
class GalleryResult:
    out: str
    words: list[int]
    counts: list[int]  # clips of the store in each shown word
    missing: list[str] = field(default_factory=list)  # sources that could not be read (grey tiles)


@dataclass
class _Clip:
    video: int  # row of the store's index
    clip: int  # clip number within the video


def draw_gallery(store: FeatureStore | str, vocab: Vocabulary | str, out: str,
                 config: GalleryConfig | None = None, progress: Progress | None = None,
                 media_root: MediaRoot | None = None) -> GalleryResult:
    """Encode every clip of the store, pick the words, read the middle frame
    of each word's nearest clips from the sources (found through
    ``media_root``), and write the PNG (atomically). Unreadable sources
    become grey tiles and are listed, by the path tried."""
    config = config or GalleryConfig()
    progress = progress or Progress()
    store, vocab = open_for_encoding(store, vocab)
    ids, dist, video, clip = _encode_all(store, vocab)
    counts = np.bincount(ids[ids >= 0], minlength=vocab.num_words)  # (num_words,)
    if config.words:
        bad = [w for w in config.words if not 0 <= w < vocab.num_words]
        if bad:
            raise TokenizeError(f"word {bad[0]} is out of range: {vocab.path or 'the vocabulary'} has words "
                                f"0..{vocab.num_words - 1}")
        words = list(config.words)
    else:
        by_count = np.lexsort((np.arange(vocab.num_words), -counts))  # most clips first, then lower id
        words = [int(w) for w in by_count[: config.num_words] if counts[w] > 0]

    chosen: list[list[_Clip]] = []
    for word in words:
        members = np.flatnonzero(ids == word)
        nearest = members[np.argsort(dist[members], kind="stable")[: config.per_word]]
        chosen.append([_Clip(int(video[i]), int(clip[i])) for i in nearest])

    frames, missing = _read_middle_frames(store, [c for row in chosen for c in row], config.size, progress,
                                          media_root or MediaRoot())
    _draw(store, vocab, words, counts, chosen, frames, config, out)
    return GalleryResult(out, words, [int(counts[w]) for w in words], missing)


def _encode_all(store: FeatureStore, vocab: Vocabulary):
    """Word, distance, video row and clip number of every clip, in index order."""
    ids, dist, video, clip = [], [], [], []
    for v, row in enumerate(store.rows):
        enc = vocab.encode(store.features(row["video_id"]))
        ids.append(enc.ids)
        dist.append(enc.distances)
        video.append(np.full(row["num_clips"], v))
        clip.append(np.arange(row["num_clips"]))
    return np.concatenate(ids), np.concatenate(dist), np.concatenate(video), np.concatenate(clip)


def middle_frame(row: dict, clip: int) -> int:
    """Decode index of the frame shown at the middle of a clip."""
    mid = (row["clip_start"][clip] + row["clip_end"][clip]) / 2
    last = max(int(row.get("num_frames") or 1) - 1, 0)
    return min(max(int(np.floor(mid * row["fps"])), 0), last)


def source_row(row: dict, media_root: MediaRoot) -> dict:
    """``row`` with ``path`` the file to read its frames from (``media_root.source``)
    and, for an imported row whose source is found only now (``--media-root``),
    the fps and frame count read from that source. Raises NoSource, DecodeError."""
    row = {**row, "path": media_root.source(row)}
    if row.get("reader") == "imported" and not row.get("fps") and not row["path"].lower().endswith(IMAGE_EXTENSIONS):
        info = open_video(row["path"]).info
        row.update(fps=float(info.fps), num_frames=int(info.num_frames or 0))
    return row


def _read_middle_frames(store: FeatureStore, clips: list[_Clip], size: int, progress: Progress,
                        media_root: MediaRoot) -> tuple[dict[tuple[int, int], np.ndarray], list[str]]:
    """(video row, clip) -> (size, size, 3) uint8, one decode pass per video."""
    sources: dict[int, dict | None] = {}   # video row -> its row with the source to read, None: none to read
    wanted: dict[int, dict[int, list[int]]] = {}  # video row -> frame index -> clips
    frames, missing = {}, []
    for c in clips:
        if c.video not in sources:
            row = store.rows[c.video]
            try:
                sources[c.video] = source_row(row, media_root)
            except NoSource as err:
                sources[c.video] = None
                missing.append(str(err))
            except DecodeError as err:
                sources[c.video] = None
                log.warning("%s: cannot read frames for the gallery (%s)", media_root.shown(row), err)
                missing.append(media_root.shown(row))
        row = sources[c.video]
        if row is None:
            continue
        index = 0 if row.get("kind") == "image" else middle_frame(row, c.clip)
        wanted.setdefault(c.video, {}).setdefault(index, []).append(c.clip)
    progress.start("frames", len(wanted))
    for v, by_index in wanted.items():
        row = sources[v]
        try:
            got = _decode(row, sorted(by_index), size)
        except DecodeError as err:
            log.warning("%s: cannot read frames for the gallery (%s)", row["path"], err)
            missing.append(row["path"])
            got = {}
        for index, clip_numbers in by_index.items():
            for n in clip_numbers:
                if index in got:
                    frames[(v, n)] = got[index]
        progress.advance()
    return frames, missing


def _decode(row: dict, indices: list[int], size: int) -> dict[int, np.ndarray]:
    if row.get("kind") == "image" or row["path"].lower().endswith(IMAGE_EXTENSIONS):   # (an imported row's photo)
        frame, _ = load_image(row["path"], size, size)
        return {0: frame}
    reader = open_video(row["path"], size, size)
    got, last = {}, None
    if reader.info.num_frames is not None:  # decord: seek to exactly these frames
        stream = reader.frames(indices)
    else:  # PyAV: one sequential pass, keep what is asked for
        stream = reader.frames()
    for i, _, get in stream:  # (index, position, get)
        last = (i, get)
        if i in indices:
            got[i] = get()
        if i >= indices[-1]:
            break
    for i in indices:  # the source has fewer frames than its index says: show its last one
        if i not in got and last is not None:
            got[i] = last[1]()
    return got


def _draw(store, vocab, words, counts, chosen, frames, config: GalleryConfig, out: str) -> None:
    from matplotlib.figure import Figure

    rows, cols = max(len(words), 1), config.per_word
    width, height = 1.3 + 1.1 * cols, 0.6 + 1.2 * rows  # inches
    fig = Figure(figsize=(width, height), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    blank = np.full((config.size, config.size, 3), 200, np.uint8)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r >= len(words) or c >= len(chosen[r]):
                ax.set_frame_on(False)
                continue
            clip = chosen[r][c]
            row = store.rows[clip.video]
            ax.imshow(frames.get((clip.video, clip.clip), blank))
            when = "" if row.get("kind") == "image" else f" {row['clip_start'][clip.clip]:.1f}s"
            name = row["video_id"] if len(row["video_id"]) <= 16 else "…" + row["video_id"][-15:]
            ax.set_title(f"{name}{when}", fontsize=6)
        if r < len(words):
            word = words[r]
            path = ".".join(str(d) for d in vocab.path_of(word))
            axes[r][0].set_ylabel(f"word {word}\n({path})\n{counts[word]} clips", fontsize=7, rotation=0,
                                  ha="right", va="center", labelpad=4)
    if not words:
        axes[0][0].text(0.5, 0.5, "no clip has a word", ha="center", va="center")
    fig.suptitle(f"{len(words)} visual words of {os.path.basename(os.path.normpath(vocab.path or 'vocabulary'))} "
                 f"on {os.path.basename(os.path.normpath(store.root))}: clips nearest each centroid", fontsize=8)
    fig.subplots_adjust(left=1.2 / width, right=0.98, top=1 - 0.55 / height, bottom=0.02,
                        wspace=0.08, hspace=0.35)
    atomic_savefig(fig, out)
