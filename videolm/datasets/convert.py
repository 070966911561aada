"""The benchmarks' annotation files -> videolm's pre-training manifests.

Evaluation reads MSR-VTT, YouCook2 and the Karpathy splits in their own
formats (videolm.eval.protocols); pre-training reads videolm's caption, ASR
and image manifests (docs/formats.md, "Corpus manifests"). These converters
write the second from the first, for the recipes in ``pipelines/``:

==============================  ==================================================  =================================
converter                       reads (the format its authors publish)              writes
==============================  ==================================================  =================================
``media_inputs``                a media folder, searched recursively                extraction manifest: path, id =
                                                                                    file name without extension
``howto100m_asr``               HowTo100M ``raw_caption.json`` (``{video_id:        ASR manifest
                                {start: [..], end: [..], text: [..]}}``) or a
                                folder of ``VIDEO_ID.csv`` (``start,end,text``)
``youcook2_manifest``           ``youcookii_annotations_trainval.json``             caption (timed) or ASR manifest
                                (``database -> VIDEO -> subset, annotations[]``)    of one subset
``youcook2_zeroshot_truth``     the same file + verb and noun word lists            per segment: id, video_id, start,
                                                                                    end, words [verb, noun]
``msrvtt_captions``             ``train_val_videodatainfo.json`` (+                 caption manifest of the 9k split,
                                ``test_videodatainfo.json``), minus the 1k-A test   and a held-out part of it
                                csv (or restricted to ``MSRVTT_train.9k.csv``)
``karpathy_images``             Karpathy ``dataset_coco.json`` /                    image-caption manifest of splits,
                                ``dataset_flickr30k.json``                          and the images' extraction list
==============================  ==================================================  =================================

Ids are the benchmarks' own (``video7020``, ``GLd3aX16zBg``, the image file
name without extension), which is what the protocols look up in a store.
Every file is written atomically; a user's mistake is one ``ConvertError``
line naming the file and key.

    python -m videolm.datasets.convert msrvtt OUT.jsonl --annotations train_val_videodatainfo.json ...
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import random
import re
import sys
from dataclasses import dataclass

from videolm.features.inputs import MEDIA_EXTENSIONS
from videolm.fileio import atomic_write_jsonl, read_json_file, utf8_errors_as
from videolm.video.decode import VIDEO_EXTENSIONS

log = logging.getLogger(__name__)


class ConvertError(ValueError):
    """An annotation file that cannot be converted; one line naming the file (and key)."""


@dataclass
class Converted:
    path: str          # the manifest written
    rows: int          # manifest rows (videos / images)
    items: int         # captions, segments or truth rows in them
    skipped: int = 0   # annotations left out (the log says why)


def _read_json(path: str):
    return read_json_file(path, ConvertError, "annotation file")


def _key(obj, key: str, path: str, where: str, kind=None):
    if not isinstance(obj, dict) or key not in obj:
        raise ConvertError(f"{path}: {where} has no key {key!r}")
    if kind is not None and not isinstance(obj[key], kind):
        raise ConvertError(f"{path}: {where}.{key} must be a {kind.__name__}, not {type(obj[key]).__name__}")
    return obj[key]


def _text(value, path: str, where: str) -> str:
    """A caption or sentence: a string (a null is the file's mistake, never the caption "None")."""
    if not isinstance(value, str):
        raise ConvertError(f"{path}: {where} must be a string, not {type(value).__name__}")
    return value.strip()


def _seconds(value, path: str, where: str) -> float:
    """A time in seconds: a finite number (or, in a CSV, its text)."""
    try:
        if isinstance(value, bool) or value is None:
            raise ValueError
        t = float(value)
        if t != t or t in (float("inf"), float("-inf")):
            raise ValueError
    except (TypeError, ValueError):
        raise ConvertError(f"{path}: {where} must be a finite number of seconds, not {value!r}") from None
    return t


def _csv_rows(path: str, columns: tuple[str, ...]):
    """(line number, row) of a CSV with ``columns`` (a byte-order mark, as a
    spreadsheet saves one, is allowed); ConvertError naming file:line for a
    missing column, a short row or text that is not UTF-8."""
    if not os.path.isfile(path):
        raise ConvertError(f"{path}: no such file")
    try:
        with utf8_errors_as(ConvertError, path), open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise ConvertError(f"{path}:1: no {missing[0]!r} column (expected {','.join(columns)})")
            for row in reader:
                short = [c for c in columns if row.get(c) is None]
                if short:
                    raise ConvertError(f"{path}:{reader.line_num}: no value for {short[0]!r} (a short row)")
                yield reader.line_num, row
    except csv.Error as err:
        raise ConvertError(f"{path}: not a readable CSV ({err})") from None


def csv_ids(path: str) -> set[str]:
    """The ``video_id`` column of a CSV (MSRVTT_JSFUSION_test.csv, MSRVTT_train.9k.csv)."""
    return {row["video_id"].strip() for _, row in _csv_rows(path, ("video_id",)) if row["video_id"].strip()}


def _write(path: str, rows: list[dict], items: int, skipped: int = 0) -> Converted:
    if not rows:
        raise ConvertError(f"{path}: nothing to write (no usable annotation)")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_jsonl(path, rows)
    log.info("%s: %d rows, %d items%s", path, len(rows), items, f", {skipped} skipped" if skipped else "")
    return Converted(path, len(rows), items, skipped)


# ------------------------------------------------------------------ media


def media_inputs(root: str, out: str, ids: set[str] | None = None, videos_only: bool = False) -> Converted:
    """An extraction manifest (``{"path", "video_id"}`` rows) of every media file
    below ``root``, its id the file name without extension (so nested layouts
    such as YouCook2's ``raw_videos/training/113/ID.mp4`` or COCO's
    ``train2014/``, ``val2014/`` give the benchmark's ids); ``ids``: keep only
    those. ``videos_only``: photos are left out (a downloader's thumbnail
    ``ID.jpg`` beside ``ID.mp4``). macOS's ``._NAME`` metadata files and
    hidden files are never media."""
    if not os.path.isdir(root):
        raise ConvertError(f"{root}: no such media folder")
    extensions = VIDEO_EXTENSIONS if videos_only else MEDIA_EXTENSIONS
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if name.startswith(".") or ext.lower() not in extensions or (ids is not None and stem not in ids):
                continue
            path = os.path.join(folder, name)
            if stem in found:
                raise ConvertError(f"{path}: id {stem!r} is also {found[stem]}; keep one file per id")
            found[stem] = path
    rows = [{"path": os.path.abspath(p), "video_id": i} for i, p in sorted(found.items())]
    if ids is not None and len(found) < len(ids):
        log.warning("%s: %d of %d wanted ids have no media file (e.g. %r)", root, len(ids) - len(found), len(ids),
                    sorted(ids - set(found))[0])
    return _write(out, rows, len(rows))


# ------------------------------------------------------------------ HowTo100M


def howto100m_asr(source: str, out: str, ids: set[str] | None = None) -> Converted:
    """HowTo100M's speech transcripts -> an ASR manifest. ``source``:
    ``raw_caption.json`` (``{video_id: {"start": [...], "end": [...], "text": [...]}}``)
    or a folder of ``VIDEO_ID.csv`` files with ``start,end,text`` columns."""
    videos: dict[str, list[tuple[float, float, str]]] = {}
    if os.path.isdir(source):
        for name in sorted(os.listdir(source)):
            vid, ext = os.path.splitext(name)
            if ext != ".csv" or (ids is not None and vid not in ids):
                continue
            path = os.path.join(source, name)
            videos[vid] = [(_seconds(r["start"], path, f"line {n}: start"), _seconds(r["end"], path, f"line {n}: end"),
                            r["text"]) for n, r in _csv_rows(path, ("start", "end", "text"))]
    else:
        data = _read_json(source)
        if not isinstance(data, dict):
            raise ConvertError(f"{source}: expected an object of video_id -> {{start, end, text}}")
        for vid, caps in data.items():
            if ids is not None and vid not in ids:
                continue
            starts, ends, texts = (_key(caps, k, source, vid, list) for k in ("start", "end", "text"))
            if not len(starts) == len(ends) == len(texts):
                raise ConvertError(f"{source}: {vid} has {len(starts)} starts, {len(ends)} ends, {len(texts)} texts")
            videos[vid] = [(_seconds(s, source, f"{vid}.start[{k}]"), _seconds(e, source, f"{vid}.end[{k}]"), t)
                           for k, (s, e, t) in enumerate(zip(starts, ends, texts))]
    rows, items, skipped = [], 0, 0
    for vid in sorted(videos):   # an empty or non-string text (the ASR's null) or a backwards span: skipped, counted
        segments = [{"start": s, "end": e, "text": t.strip()} for s, e, t in videos[vid]
                    if isinstance(t, str) and t.strip() and e >= s]
        skipped += len(videos[vid]) - len(segments)
        if segments:
            rows.append({"video_id": vid, "segments": segments})
            items += len(segments)
    return _write(out, rows, items, skipped)


# ------------------------------------------------------------------ YouCook2


def _youcook2_segments(path: str, subset: str):
    """(video id, segment id, start, end, sentence) of one subset, in file order."""
    database = _key(_read_json(path), "database", path, "the file", dict)
    subsets = sorted({str(v.get("subset")) for v in database.values() if isinstance(v, dict)})
    if subset not in subsets:
        raise ConvertError(f"{path}: no video with subset {subset!r} (the file has {', '.join(subsets)})")
    for vid, video in database.items():
        if _key(video, "subset", path, f"database.{vid}") != subset:
            continue
        for j, ann in enumerate(_key(video, "annotations", path, f"database.{vid}", list)):
            where = f"database.{vid}.annotations[{j}]"
            segment = _key(ann, "segment", path, where, list)
            if len(segment) != 2 or not all(isinstance(t, (int, float)) for t in segment) or segment[1] < segment[0]:
                raise ConvertError(f"{path}: {where}.segment must be [start, end] seconds, not {segment!r}")
            yield vid, ann.get("id", j), float(segment[0]), float(segment[1]), \
                _text(_key(ann, "sentence", path, where), path, f"{where}.sentence")


def youcook2_manifest(path: str, out: str, subset: str = "training", kind: str = "caption") -> Converted:
    """One subset's segments as a timed caption manifest (``kind="caption"``:
    each segment one item) or an ASR manifest (``kind="asr"``: a video's
    segments are its transcript, drawn as VideoBERT draws ASR)."""
    if kind not in ("caption", "asr"):
        raise ConvertError(f"kind must be caption or asr, not {kind!r}")
    videos: dict[str, list[dict]] = {}
    for vid, _, start, end, sentence in _youcook2_segments(path, subset):
        if sentence.strip():
            videos.setdefault(vid, []).append({"start": start, "end": end, "text": sentence.strip()})
    key = "captions" if kind == "caption" else "segments"
    rows = [{"video_id": vid, key: segs} for vid, segs in videos.items()]
    return _write(out, rows, sum(len(s) for s in videos.values()))


def _words(sentence: str) -> list[str]:
    return re.findall(r"[a-z]+", sentence.lower())


def youcook2_zeroshot_truth(path: str, verbs: list[str], nouns: list[str], out: str,
                            subset: str = "validation") -> Converted:
    """VideoBERT's zero-shot verb / noun classification truth: for each segment,
    the first word of its sentence in ``verbs`` and the first word after it in
    ``nouns``; a segment without both is left out (counted). Rows:
    ``{"id", "video_id", "start", "end", "words": [verb, noun], "sentence"}``."""
    verb_set, noun_set = set(verbs), set(nouns)
    rows, skipped = [], 0
    for vid, seg_id, start, end, sentence in _youcook2_segments(path, subset):
        words = _words(sentence)
        v = next((i for i, w in enumerate(words) if w in verb_set), None)
        n = next((w for w in words[v + 1:] if w in noun_set), None) if v is not None else None
        if n is None:
            skipped += 1
            continue
        rows.append({"id": f"{vid}_{seg_id}", "video_id": vid, "start": start, "end": end,
                     "words": [words[v], n], "sentence": sentence})
    return _write(out, rows, len(rows), skipped)


# ------------------------------------------------------------------ MSR-VTT


def msrvtt_captions(annotations: list[str], out: str, exclude: str | None = None, ids: str | None = None,
                    holdout: int = 0, holdout_out: str | None = None, seed: int = 0) -> list[Converted]:
    """MSR-VTT's ``*_videodatainfo.json`` files -> a caption manifest, every
    sentence of each video. The 9k training split is all 10k videos
    (``train_val_videodatainfo.json`` + ``test_videodatainfo.json``) less the
    1k-A test videos (``exclude``: ``MSRVTT_JSFUSION_test.csv``), or exactly
    the ids of ``MSRVTT_train.9k.csv`` (``ids``). ``holdout`` videos of it, a
    seeded draw, go to ``holdout_out`` instead: a validation set that is not
    the test split."""
    captions: dict[str, list[str]] = {}
    origin: dict[str, str] = {}   # video id -> the file that lists it
    for path in annotations:
        data = _read_json(path)
        for i, video in enumerate(_key(data, "videos", path, "the file", list)):
            vid = str(_key(video, "video_id", path, f"videos[{i}]"))
            if vid in origin:   # its sentences would be counted twice
                raise ConvertError(f"{path}: videos[{i}] is {vid!r}, which {origin[vid]} lists too; give each "
                                   f"annotation file once (MSRVTT_data.json already holds all 10k videos)")
            origin[vid] = path
            captions[vid] = []
        mine = {v for v, p in origin.items() if p == path}
        for i, sentence in enumerate(_key(data, "sentences", path, "the file", list)):
            vid = str(_key(sentence, "video_id", path, f"sentences[{i}]"))
            text = _text(_key(sentence, "caption", path, f"sentences[{i}]"), path, f"sentences[{i}].caption")
            if vid not in mine:
                raise ConvertError(f"{path}: sentences[{i}] names video {vid!r}, which is not in its videos")
            if text:
                captions[vid].append(text)
    keep = set(captions)
    if ids is not None:
        wanted = csv_ids(ids)
        missing = sorted(wanted - keep)
        if missing:
            raise ConvertError(f"{ids}: {len(missing)} ids are in no annotation file (e.g. {missing[0]!r}); "
                               "give test_videodatainfo.json too")
        keep = wanted
    if exclude is not None:
        excluded = csv_ids(exclude)
        absent = sorted(excluded - set(captions))
        if absent and ids is None:   # the 9k split is the 10k less the test ids: they must be in the files read
            raise ConvertError(f"{exclude}: {len(absent)} of its {len(excluded)} test ids are in no annotation file "
                               f"(e.g. {absent[0]!r}); give test_videodatainfo.json too, or the split is not 9k")
        keep -= excluded
    empty = sorted(v for v in keep if not captions[v])
    if empty:
        raise ConvertError(f"{annotations[0]}: {len(empty)} videos have no sentence (e.g. {empty[0]!r})")
    order = sorted(keep, key=lambda v: (len(v), v))  # video2 before video10
    if not 0 <= holdout < len(order):
        raise ConvertError(f"holdout={holdout} must be in [0, {len(order)}) (the split has {len(order)} videos)")
    held = set(random.Random(seed).sample(order, holdout))
    if held and holdout_out is None:
        raise ConvertError("holdout needs holdout_out, the manifest the held-out videos go to")
    results = [_write(out, [{"video_id": v, "captions": captions[v]} for v in order if v not in held],
                      sum(len(captions[v]) for v in order if v not in held))]
    if held:
        results.append(_write(holdout_out, [{"video_id": v, "captions": captions[v]} for v in order if v in held],
                              sum(len(captions[v]) for v in held)))
    return results


# ------------------------------------------------------------------ Karpathy splits (COCO, Flickr30k)


def karpathy_images(path: str, out: str, splits: tuple[str, ...] = ("train", "restval"), image_root: str | None = None,
                    inputs_out: str | None = None) -> list[Converted]:
    """Karpathy's ``dataset_coco.json`` / ``dataset_flickr30k.json`` -> an image-caption
    manifest of ``splits`` (COCO's training set is ``train`` + ``restval``,
    113,287 images; Flickr30k's ``train``, 29,000), every ``raw`` sentence.
    With ``image_root`` and ``inputs_out``, also the extraction manifest of
    those images (``image_root/filepath/filename``; Flickr30k has no filepath),
    ids being the file names without extension, as the protocols expect."""
    if (image_root is None) != (inputs_out is None):
        raise ConvertError("--image-root and --inputs-out go together: give both (the images' folder, and where "
                           "the extraction manifest of them goes) or neither")
    images = _key(_read_json(path), "images", path, "the file", list)
    rows, inputs, items = [], [], 0
    for i, image in enumerate(images):
        if _key(image, "split", path, f"images[{i}]") not in splits:
            continue
        filename = _key(image, "filename", path, f"images[{i}]", str)
        texts = [_text(_key(s, "raw", path, f"images[{i}].sentences[{j}]"), path, f"images[{i}].sentences[{j}].raw")
                 for j, s in enumerate(_key(image, "sentences", path, f"images[{i}]", list))]
        texts = [t for t in texts if t]
        if not texts:
            raise ConvertError(f"{path}: images[{i}] ({filename}) has no sentence")
        stem = os.path.splitext(filename)[0]
        rows.append({"image_id": stem, "captions": texts})
        items += len(texts)
        if image_root is not None:
            folder = image.get("filepath") or ""   # Flickr30k has none
            if not isinstance(folder, str):
                raise ConvertError(f"{path}: images[{i}].filepath must be a string, not {type(folder).__name__}")
            inputs.append({"path": os.path.abspath(os.path.join(image_root, folder, filename)), "video_id": stem})
    if not rows:
        raise ConvertError(f"{path}: no image with split {' or '.join(splits)}")
    results = [_write(out, rows, items)]
    if inputs_out is not None:
        results.append(_write(inputs_out, inputs, len(inputs)))
    return results


# ------------------------------------------------------------------ command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m videolm.datasets.convert", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("media", help="extraction manifest of a media folder (id = file name)")
    m.add_argument("root")
    m.add_argument("out")
    m.add_argument("--ids", help="a CSV with a video_id column: only these")
    m.add_argument("--videos-only", action="store_true", help="leave photos out (thumbnails beside videos)")
    h = sub.add_parser("howto100m", help="HowTo100M raw_caption.json (or a folder of CSVs) -> ASR manifest")
    h.add_argument("source")
    h.add_argument("out")
    h.add_argument("--ids", help="a CSV with a video_id column (HowTo100M_v1.csv): only these")
    y = sub.add_parser("youcook2", help="youcookii_annotations_trainval.json -> caption / ASR manifest")
    y.add_argument("annotations")
    y.add_argument("out")
    y.add_argument("--subset", default="training")
    y.add_argument("--kind", default="caption", choices=["caption", "asr"])
    v = sub.add_parser("msrvtt", help="*_videodatainfo.json -> caption manifest of the 9k split")
    v.add_argument("out")
    v.add_argument("--annotations", action="append", required=True)
    v.add_argument("--exclude", help="MSRVTT_JSFUSION_test.csv (the 1k-A test videos)")
    v.add_argument("--ids", help="MSRVTT_train.9k.csv (exactly these videos)")
    v.add_argument("--holdout", type=int, default=0)
    v.add_argument("--holdout-out")
    v.add_argument("--seed", type=int, default=0, help="the held-out draw's seed")
    k = sub.add_parser("karpathy", help="dataset_coco.json / dataset_flickr30k.json -> image manifest")
    k.add_argument("annotations")
    k.add_argument("out")
    k.add_argument("--split", action="append", default=None, help="default: train and restval")
    k.add_argument("--image-root")
    k.add_argument("--inputs-out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.cmd == "media":
            media_inputs(args.root, args.out, csv_ids(args.ids) if args.ids else None, args.videos_only)
        elif args.cmd == "howto100m":
            howto100m_asr(args.source, args.out, csv_ids(args.ids) if args.ids else None)
        elif args.cmd == "youcook2":
            youcook2_manifest(args.annotations, args.out, args.subset, args.kind)
        elif args.cmd == "msrvtt":
            msrvtt_captions(args.annotations, args.out, args.exclude, args.ids, args.holdout, args.holdout_out,
                            args.seed)
        else:
            karpathy_images(args.annotations, args.out, tuple(args.split or ("train", "restval")), args.image_root,
                            args.inputs_out)
    except ConvertError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
