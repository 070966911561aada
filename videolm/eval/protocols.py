"""Retrieval protocols: which items form the gallery, which captions are the
queries, and what is correct, read from each benchmark's own annotation file.

=================  ==========================================================  =============================
protocol           annotation file (the format its authors publish)            items, captions
=================  ==========================================================  =============================
``msrvtt-1ka``     ``MSRVTT_JSFUSION_test.csv`` (``key,vid_key,video_id,       1,000 test videos, 1 caption
                   sentence``), the JSFusion 1k-A split                        each
``msrvtt-full``    ``test_videodatainfo.json`` (``videos[].split``,            2,990 test videos, all ~20
                   ``sentences[].video_id, caption``); for ``--split val``     captions (ragged counts kept)
                   ``train_val_videodatainfo.json`` (split ``validate``)
``youcook2``       ``youcookii_annotations_trainval.json`` (``database ->      validation segments: a segment
                   VIDEO -> subset, annotations[].segment, sentence``)         is its video's clips in
                                                                               [start, end]; 1 caption each
``coco-5k``        Karpathy ``dataset_coco.json`` (``images[].split,           5,000 test images, 5 captions
                   filename, sentences[].raw``)
``flickr30k-1k``   Karpathy ``dataset_flickr30k.json``                         1,000 test images, 5 captions
``captions``       videolm caption / image-caption manifests (JSONL, the       the user's own items; videos
                   format pre-training reads, docs/formats.md)                 and images reported apart
=================  ==========================================================  =============================

Store ids: a video's store id is the MSR-VTT / YouCook2 video id (``video7020``,
``GLd3aX16zBg``), an image's is its file name without extension
(``COCO_val2014_000000391895``), which is what ``videolm extract DIR`` gives
for files named that way.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

from videolm.fileio import iter_jsonl, read_json_file, utf8_errors_as

PROTOCOLS = ("msrvtt-1ka", "msrvtt-full", "youcook2", "coco-5k", "flickr30k-1k", "captions")
SPLITS = ("val", "test")


class ProtocolError(Exception):
    """Annotations that cannot be used as asked; one line naming the file (and line or key)."""


@dataclass
class Item:
    """One gallery item: a whole video or image, or a timed segment of a video."""

    id: str                                  # unique within the protocol
    media_id: str                            # the store id
    kind: str                                # "video" | "image"
    captions: list[str] = field(default_factory=list)
    span: tuple[float, float] | None = None  # seconds within the video; None = all of it


@dataclass
class Protocol:
    name: str
    split: str
    annotations: list[str]
    items: list[Item]
    note: str = ""          # what the protocol is, for the report

    def kinds(self) -> list[str]:
        return sorted({item.kind for item in self.items})


# ------------------------------------------------------------------ file helpers


def _read_json(path: str):
    return read_json_file(path, ProtocolError, "annotation file")


def _get(obj, key: str, path: str, where: str, kind=None):
    if not isinstance(obj, dict) or key not in obj:
        raise ProtocolError(f"{path}: {where} has no key {key!r}")
    value = obj[key]
    if kind is not None and not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ProtocolError(f"{path}: {where}.{key} must be a {name}, not {type(value).__name__}")
    return value


def _text(value, path: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ProtocolError(f"{path}: {where} must be a non-empty string, not {value!r:.40}")
    return value.strip()


def _one(annotations: list[str], name: str) -> str:
    if len(annotations) != 1:
        raise ProtocolError(f"protocol {name} reads one annotation file (--annotations FILE), "
                            f"not {len(annotations)}")
    return annotations[0]


# ------------------------------------------------------------------ loaders


def load_msrvtt_1ka(annotations: list[str], split: str) -> Protocol:
    path = _one(annotations, "msrvtt-1ka")
    if split != "test":
        raise ProtocolError("msrvtt-1ka has only a test split (1k-A has no validation set); pick checkpoints "
                            "on a held-out part of the training videos (e.g. --protocol captions) or on "
                            "msrvtt-full --split val, never on this split")
    if not os.path.isfile(path):
        raise ProtocolError(f"{path}: no such annotation file")
    items: dict[str, Item] = {}
    with utf8_errors_as(ProtocolError, path), open(path, newline="", encoding="utf-8-sig") as f:   # -sig: a BOM
        reader = csv.DictReader(f)
        missing = [c for c in ("video_id", "sentence") if c not in (reader.fieldnames or [])]
        if missing:
            raise ProtocolError(f"{path}:1: missing column {missing[0]!r} "
                                f"(expected key,vid_key,video_id,sentence)")
        for row in reader:
            line = reader.line_num
            vid = (row.get("video_id") or "").strip()
            if not vid:
                raise ProtocolError(f"{path}:{line}: empty video_id")
            text = _text(row.get("sentence"), path, f"line {line} sentence")
            items.setdefault(vid, Item(vid, vid, "video")).captions.append(text)
    if not items:
        raise ProtocolError(f"{path}: no rows")
    return Protocol("msrvtt-1ka", split, [path], list(items.values()),
                    "MSR-VTT 1k-A (JSFusion): 1,000 test videos, one caption each")


def load_msrvtt_full(annotations: list[str], split: str) -> Protocol:
    path = _one(annotations, "msrvtt-full")
    data = _read_json(path)
    videos = _get(data, "videos", path, "the file", list)
    sentences = _get(data, "sentences", path, "the file", list)
    want = {"test": "test", "val": "validate"}[split]
    items: dict[str, Item] = {}
    for i, video in enumerate(videos):
        vid = _text(_get(video, "video_id", path, f"videos[{i}]"), path, f"videos[{i}].video_id")
        if _get(video, "split", path, f"videos[{i}]") == want:
            items[vid] = Item(vid, vid, "video")
    if not items:
        other = "train_val_videodatainfo.json" if split == "val" else "test_videodatainfo.json"
        raise ProtocolError(f"{path}: no video with split {want!r} (for --split {split} use {other})")
    for i, sentence in enumerate(sentences):
        vid = _text(_get(sentence, "video_id", path, f"sentences[{i}]"), path, f"sentences[{i}].video_id")
        if vid in items:
            items[vid].captions.append(_text(_get(sentence, "caption", path, f"sentences[{i}]"), path,
                                             f"sentences[{i}].caption"))
    empty = [v for v, item in items.items() if not item.captions]
    if empty:
        raise ProtocolError(f"{path}: {len(empty)} {want} videos have no sentence (e.g. {empty[0]!r})")
    return Protocol("msrvtt-full", split, [path], list(items.values()),
                    f"MSR-VTT full {want} split, every caption of each video")


def load_youcook2(annotations: list[str], split: str) -> Protocol:
    path = _one(annotations, "youcook2")
    if split != "val":
        raise ProtocolError("youcook2: the test split's annotations are not public; use --split val "
                            "(the validation segments, as the papers do)")
    database = _get(_read_json(path), "database", path, "the file", dict)
    items = []
    for vid, video in database.items():
        if _get(video, "subset", path, f"database.{vid}") != "validation":
            continue
        for j, ann in enumerate(_get(video, "annotations", path, f"database.{vid}", list)):
            where = f"database.{vid}.annotations[{j}]"
            segment = _get(ann, "segment", path, where, list)
            if len(segment) != 2 or not all(isinstance(t, (int, float)) for t in segment) or segment[1] < segment[0]:
                raise ProtocolError(f"{path}: {where}.segment must be [start, end] seconds, not {segment!r}")
            seg_id = ann.get("id", j)
            items.append(Item(f"{vid}_{seg_id}", vid, "video", [_text(_get(ann, "sentence", path, where), path,
                                                                     f"{where}.sentence")],
                              (float(segment[0]), float(segment[1]))))
    if not items:
        raise ProtocolError(f"{path}: no video with subset 'validation'")
    return Protocol("youcook2", split, [path], items,
                    "YouCook2 validation segments (a segment = its video's clips within [start, end])")


def _load_karpathy(name: str, annotations: list[str], split: str) -> Protocol:
    path = _one(annotations, name)
    images = _get(_read_json(path), "images", path, "the file", list)
    items = []
    for i, image in enumerate(images):
        if _get(image, "split", path, f"images[{i}]") != split:
            continue
        filename = _text(_get(image, "filename", path, f"images[{i}]"), path, f"images[{i}].filename")
        captions = [_text(_get(s, "raw", path, f"images[{i}].sentences[{j}]"), path,
                          f"images[{i}].sentences[{j}].raw")
                    for j, s in enumerate(_get(image, "sentences", path, f"images[{i}]", list))]
        if not captions:
            raise ProtocolError(f"{path}: images[{i}] ({filename}) has no sentence")
        stem = os.path.splitext(filename)[0]
        items.append(Item(stem, stem, "image", captions))
    if not items:
        raise ProtocolError(f"{path}: no image with split {split!r}")
    size = {"coco-5k": "5,000", "flickr30k-1k": "1,000"}[name]
    return Protocol(name, split, [path], items, f"{name}: Karpathy {split} split ({size} images when complete), "
                                                "every caption of each image")


def load_captions(annotations: list[str], split: str) -> Protocol:
    """videolm's own manifests: ``{"video_id", "captions"|"caption", [start, end]}``
    rows are videos (or their timed spans), ``{"image_id", ...}`` rows images."""
    from videolm.data.manifest import BadRow, parse_row

    if not annotations:
        raise ProtocolError("protocol captions needs --annotations MANIFEST.jsonl (one or more)")
    items: dict[tuple, Item] = {}   # (media id, span) -> item
    names: set[str] = set()
    for path in annotations:
        for line_no, row in iter_jsonl(path, ProtocolError, "annotation file"):
            kind = "image" if isinstance(row, dict) and "image_id" in row else "video"
            try:
                media_id, captions = parse_row(row, "image" if kind == "image" else "caption")
            except BadRow as err:
                raise ProtocolError(f"{path}:{line_no}: {err}") from None
            for text, start, end in captions:
                span = None if start is None else (start, end)
                key = (media_id, span)
                if key not in items:   # named by its span, to 6 digits unless two spans would share a name
                    name = media_id if span is None else f"{media_id}@{start:g}-{end:g}"
                    name = f"{media_id}@{start!r}-{end!r}" if name in names else name
                    names.add(name)
                    items[key] = Item(name, media_id, kind, [], span)
                items[key].captions.append(text.strip())
    if not items:
        raise ProtocolError(f"{annotations[0]}: no rows")
    return Protocol("captions", split, list(annotations), list(items.values()),
                    "caption manifest(s): " + ", ".join(os.path.basename(p) for p in annotations))


LOADERS = {
    "msrvtt-1ka": load_msrvtt_1ka,
    "msrvtt-full": load_msrvtt_full,
    "youcook2": load_youcook2,
    "coco-5k": lambda a, s: _load_karpathy("coco-5k", a, s),
    "flickr30k-1k": lambda a, s: _load_karpathy("flickr30k-1k", a, s),
    "captions": load_captions,
}
DEFAULT_SPLIT = {"youcook2": "val"}


def load_protocol(name: str, annotations: list[str], split: str | None = None) -> Protocol:
    if name not in LOADERS:
        raise ProtocolError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    split = split or DEFAULT_SPLIT.get(name, "test")
    if split not in SPLITS:
        raise ProtocolError(f"--split must be val or test, not {split!r}")
    return LOADERS[name](list(annotations), split)


# ------------------------------------------------------------------ against a store


@dataclass
class Resolved:
    """The protocol's items that the store has, and what was dropped."""

    items: list[Item]
    dropped: list[str]      # item ids with no features in the store


def resolve(protocol: Protocol, store, allow_missing: bool = False) -> Resolved:
    """Keep the items whose media the store holds (with at least one clip). A
    missing item changes the protocol, so it is an error unless allowed."""
    present, dropped = [], []
    for item in protocol.items:
        ok = item.media_id in store and store.entry(item.media_id)["num_clips"] > 0
        (present if ok else dropped).append(item)
    if dropped and not allow_missing:
        shown = ", ".join(repr(i.media_id) for i in dropped[:3])
        raise ProtocolError(f"{len(dropped)} of {len(protocol.items)} {protocol.name} items have no features in "
                            f"{store.root} (first: {shown}); extract them, or pass --allow-missing to evaluate "
                            "on the rest (the report then says how many were dropped)")
    if not present:
        raise ProtocolError(f"none of the {len(protocol.items)} {protocol.name} items is in {store.root}")
    return Resolved(present, [i.id for i in dropped])
