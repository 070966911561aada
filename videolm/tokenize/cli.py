"""`videolm tokenize fit | encode | info | gallery`: the visual vocabulary from the command line."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

DESCRIPTION = """\
Visual words (VideoBERT): hierarchical k-means over a feature store's clip features.
A word id is the tree path read as a base-k number (k**depth words); [PAD] and [MASK]
come after the words. See docs/tokenizer.md.

  videolm tokenize fit STORE -o VOCAB [--k 12 --depth 4]   fit a vocabulary on a sample of STORE
  videolm tokenize encode STORE --vocab VOCAB               token ids for every clip, next to the store
  videolm tokenize info VOCAB                               sizes, empty words, inertia per level
  videolm tokenize gallery STORE --vocab VOCAB -o words.png what the most frequent words look like"""


def _word_list(text: str) -> list[int]:
    try:
        return [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated word ids (e.g. 3,17,120), got {text!r}") from None


def add_parser(subparsers) -> None:
    from videolm.cliutil import Formatter as _Formatter
    from videolm.tokenize.gallery import GalleryConfig
    from videolm.tokenize.kmeans import ENCODE_BATCH, KMeansConfig

    d, g = KMeansConfig(), GalleryConfig()
    p = subparsers.add_parser("tokenize", formatter_class=_Formatter, help="visual words: fit, encode, inspect",
                              description=DESCRIPTION)
    sub = p.add_subparsers(dest="tokenize_cmd", metavar="{fit,encode,info,gallery}")
    sub.required = True

    fit = sub.add_parser("fit", formatter_class=_Formatter, help="fit a visual vocabulary on a feature store",
                         description="Fit hierarchical k-means on a uniform sample of STORE's clips, drawn "
                                     "shard by shard from the memory-mapped shards: memory is the sample (sample "
                                     "size x dim x 4 bytes) and a few int64 arrays of its size, whatever the size "
                                     "of the store.")
    fit.add_argument("store", help="feature store directory")
    fit.add_argument("-o", "--out", required=True, help="vocabulary directory to create")
    fit.add_argument("--k", type=int, default=d.k, help="branching factor (children per node)")
    fit.add_argument("--depth", type=int, default=d.depth, help="levels; words = k ** depth (1: flat k-means)")
    fit.add_argument("--sample-size", "--sample", type=int, default=d.sample_size,
                     help="clips drawn from the store to fit on (bounds the fit's memory)")
    fit.add_argument("--iterations", type=int, default=d.iterations, help="max Lloyd iterations per node")
    fit.add_argument("--points-per-centroid", type=int, default=d.points_per_centroid,
                     help="a node trains on at most k x this many of its points")
    fit.add_argument("--init-points-per-centroid", type=int, default=d.init_points_per_centroid,
                     help="k-means++ seeds from at most k x this many of them")
    fit.add_argument("--seedings", type=int, default=d.seedings,
                     help="k-means++ runs per node; the best starts the iterations")
    fit.add_argument("--spherical", action="store_true", help="L2-normalise features and centroids (cosine)")
    fit.add_argument("--seed", type=int, default=d.seed, help="seed of the sample and of every node's k-means")
    fit.add_argument("--strict", action="store_true", help="refuse NaN/Inf features instead of skipping those clips")
    fit.add_argument("--ids", default=None, metavar="FILE",
                     help="fit on these inputs' clips only (the training split: held-out clips never shape the "
                          "words): one id a line, or a .jsonl / .csv with video_id (or image_id)")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing vocabulary directory")
    fit.add_argument("--threads", type=int, default=None, help="faiss threads (default: all cores)")
    fit.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    enc = sub.add_parser("encode", formatter_class=_Formatter, help="token ids for every clip of a store",
                         description="Write one word id per clip, in the store's order, into "
                                     "STORE/tokens/VOCAB_NAME/ (or --out), shard by shard (one shard's ids in "
                                     "memory at a time). A rerun skips finished shards. "
                                     "Clips with NaN/Inf features get token -1 (exit status 1), or are "
                                     "refused with --strict.")
    enc.add_argument("store", help="feature store directory")
    enc.add_argument("--vocab", required=True, help="vocabulary directory (from `tokenize fit`)")
    enc.add_argument("-o", "--out", default=None, help="tokens directory (default: STORE/tokens/VOCAB_NAME)")
    enc.add_argument("--strict", action="store_true", help="refuse NaN/Inf features instead of giving token -1")
    enc.add_argument("--batch-size", type=int, default=ENCODE_BATCH, help="clips per tree-descent batch")
    enc.add_argument("--threads", type=int, default=None, help="faiss threads (default: all cores)")
    enc.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    info = sub.add_parser("info", formatter_class=_Formatter, help="summary of a vocabulary")
    info.add_argument("vocab", help="vocabulary directory")

    gal = sub.add_parser("gallery", formatter_class=_Formatter, help="PNG of what visual words look like",
                         description="For each chosen word (the most frequent by default), the middle frames of "
                                     "the store's clips nearest its centroid, read back from the source videos.")
    gal.add_argument("store", help="feature store directory (its sources must still be readable)")
    gal.add_argument("--vocab", required=True, help="vocabulary directory")
    gal.add_argument("-o", "--out", required=True, help="PNG file to write")
    gal.add_argument("--words", type=_word_list, default=None, help="comma-separated word ids to show")
    gal.add_argument("--num-words", type=int, default=g.num_words, help="how many of the most frequent words")
    gal.add_argument("--per-word", type=int, default=g.per_word, help="clips per word")
    gal.add_argument("--size", type=int, default=g.size, help="thumbnail size in pixels")
    gal.add_argument("--media-root", default=None, metavar="DIR|OLD=NEW",
                     help="where the sources are now: relative stored paths under DIR, or stored paths under OLD "
                          "found under NEW (the store keeps paths as extraction was given them)")
    gal.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _bars(quiet: bool):
    from tqdm import tqdm

    from videolm.tokenize.kmeans import Progress

    class Bars(Progress):
        bar = None

        def start(self, stage, total):
            self.close()
            self.bar = tqdm(total=total, desc=stage, disable=quiet, leave=False, file=sys.stderr)

        def advance(self, n=1):
            self.bar.update(n)

        def close(self):
            if self.bar is not None:
                self.bar.close()

    return Bars()


def run(args) -> int:
    """Exit status 0 when all went well; 1 when some clips had NaN/Inf
    features (encode) or some sources could not be read (gallery)."""
    from videolm.cliutil import EXIT_OK, EXIT_SOME_FAILED, CliError
    from videolm.tokenize.vocab import TokenizeError

    if getattr(args, "threads", None):
        import faiss

        faiss.omp_set_num_threads(args.threads)
    try:
        all_ok = {"fit": _fit, "encode": _encode, "info": _info, "gallery": _gallery}[args.tokenize_cmd](args)
        return EXIT_OK if all_ok else EXIT_SOME_FAILED
    except TokenizeError as err:
        raise CliError(str(err)) from None


def _fit(args) -> bool:
    import os
    import time

    from videolm.tokenize.kmeans import KMeansConfig
    from videolm.tokenize.vocab import TokenizeError, fit_vocabulary

    try:
        config = KMeansConfig(k=args.k, depth=args.depth, iterations=args.iterations,
                              points_per_centroid=args.points_per_centroid,
                              init_points_per_centroid=args.init_points_per_centroid, seedings=args.seedings,
                              sample_size=args.sample_size, spherical=args.spherical, seed=args.seed)
    except ValueError as err:  # a setting out of range
        raise TokenizeError(str(err)) from None
    if os.path.exists(args.out) and not args.overwrite and (not os.path.isdir(args.out) or os.listdir(args.out)):
        raise TokenizeError(f"{args.out}: already exists; choose another --out or pass --overwrite")
    parent = os.path.dirname(os.path.abspath(args.out))   # checked before the fit, not after it
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise TokenizeError(f"{args.out}: cannot be written ({parent} is not a writable directory)")
    _check_word_tables(config, args.store)
    started = time.perf_counter()
    bars = _bars(args.quiet)
    ids = read_ids(args.ids) if args.ids else None
    try:
        vocab = fit_vocabulary(args.store, config, strict=args.strict, progress=bars, ids=ids)
    finally:
        bars.close()
    vocab.save_pretrained(args.out, overwrite=args.overwrite)
    s = vocab.sample
    print(f"videolm tokenize fit: {vocab.num_words} words (k={vocab.k}, depth={vocab.depth}) from {s['points']} "
          f"of {vocab.source['clips']} clips in {time.perf_counter() - started:.1f} s -> {args.out}")
    if s["skipped_nonfinite"]:
        print(f"skipped {s['skipped_nonfinite']} sampled clips with NaN/Inf features in "
              f"{s['videos_with_nonfinite']} video(s)")
    return True


def read_ids(path: str) -> list[str]:
    """Ids from a text file (one a line, # comments), a .jsonl (video_id or
    image_id of each row) or a .csv (its video_id or image_id column)."""
    import csv
    import os

    from videolm.fileio import iter_jsonl, utf8_errors_as
    from videolm.tokenize.vocab import TokenizeError

    if not os.path.isfile(path):
        raise TokenizeError(f"--ids {path}: no such file")
    ids: list[str] = []
    with utf8_errors_as(TokenizeError, path):
        if path.endswith(".jsonl"):
            for line, row in iter_jsonl(path, TokenizeError, "ids file"):
                value = row.get("video_id", row.get("image_id")) if isinstance(row, dict) else None
                if value in (None, ""):
                    raise TokenizeError(f"{path}:{line}: no video_id (or image_id)")
                ids.append(str(value))
        elif path.endswith(".csv"):
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                column = next((c for c in ("video_id", "image_id") if c in (reader.fieldnames or [])), None)
                if column is None:
                    raise TokenizeError(f"{path}:1: no video_id (or image_id) column")
                ids = [row[column].strip() for row in reader if (row.get(column) or "").strip()]
        else:
            with open(path, encoding="utf-8") as f:
                ids = [s for s in (line.strip() for line in f) if s and not s.startswith("#")]
    if not ids:
        raise TokenizeError(f"--ids {path}: no ids in it")
    return list(dict.fromkeys(ids))


TABLE_BUDGET = 4 << 30   # bytes of centroid tables a fit may allocate before it is refused


def _check_word_tables(config, store_dir: str) -> None:
    """Every level's centroid table is k^level x dim float32 whatever the
    sample: a vocabulary far larger than its sample is refused before the fit
    (k=12, depth=6 at dim 1024 would be 12 GB)."""
    import json
    import os

    from videolm.tokenize.vocab import TokenizeError

    try:
        with open(os.path.join(store_dir, "meta.json")) as f:
            dim = int(json.load(f)["dim"])
    except (OSError, ValueError, KeyError, TypeError):
        return   # the fit names what is wrong with the store
    size = sum(config.k ** (level + 1) for level in range(config.depth)) * dim * 4
    if size > TABLE_BUDGET:
        raise TokenizeError(f"k={config.k}, depth={config.depth} at dim {dim} needs {size / 2**30:.1f} GiB of "
                            f"centroid tables (at most {TABLE_BUDGET / 2**30:.0f}); lower --k or --depth")


def _encode(args) -> bool:
    from videolm.tokenize.vocab import encode_store

    bars = _bars(args.quiet)
    try:
        result = encode_store(args.store, args.vocab, out=args.out, strict=args.strict,
                              batch_size=args.batch_size, progress=bars)
    finally:
        bars.close()
    print(f"videolm tokenize encode: {result.clips} clips in {result.shards_encoded} shard(s), "
          f"{result.shards_skipped} shard(s) already done, in {result.seconds:.1f} s -> {result.out}")
    if result.nonfinite:
        print(f"{sum(result.nonfinite.values())} clips in {len(result.nonfinite)} video(s) have NaN/Inf "
              "features: their token is -1")
        return False
    return True


def _info(args) -> bool:
    from videolm.tokenize.vocab import Vocabulary

    v = Vocabulary.from_pretrained(args.vocab)
    src, s, tree = v.source, v.sample, v.tree
    specials = ", ".join(f"{t}={i}" for t, i in v.special_ids.items())
    print(f"vocabulary  {args.vocab} (fingerprint {v.fingerprint()})")
    print(f"words       {v.num_words} = {v.k}^{v.depth}; ids 0..{v.num_words - 1}, then {specials} "
          f"(vocab size {v.vocab_size})")
    print(f"features    {v.dim}-dim {src.get('backbone')} (weights: {src.get('weights')}), "
          f"{'spherical' if tree.spherical else 'euclidean'}")
    print(f"fit on      {src.get('store')}: {src.get('videos')} inputs, {src.get('clips')} clips; sample "
          f"{s.get('points')} ({s.get('skipped_nonfinite', 0)} NaN/Inf skipped), seed {v.config.seed}")
    print("level  clusters  non-empty  size min/median/max  split further     inertia  per point")
    points = max(int(s.get("points") or tree.counts[0].sum()), 1)
    for level in range(1, v.depth + 1):
        counts = tree.counts[level - 1]  # (k**level,) training clips per cluster at this level
        used = counts[counts > 0]
        sizes = f"{used.min()}/{int(np.median(used))}/{used.max()}" if len(used) else "-"
        split = str(int((tree.children[level] == v.k).sum())) if level < v.depth else "-"
        inertia = float(tree.inertia[level - 1]) if tree.inertia[level - 1] is not None else float("nan")
        print(f"{level:>5}  {int(tree.children[level - 1].sum()):>8}  {len(used):>9}  {sizes:>19}  {split:>13}  "
              f"{inertia:>10.4g}  {inertia / points:>9.4g}")
    empty = int((tree.counts[-1] == 0).sum())
    print(f"empty words {empty} of {v.num_words} (no training clip reached them; "
          "each still has a centroid, see docs/tokenizer.md)")
    return True


def _gallery(args) -> bool:
    import os

    from videolm.tokenize.gallery import GalleryConfig, draw_gallery
    from videolm.tokenize.vocab import TokenizeError

    from videolm.features.media_root import MediaRoot

    folder = os.path.dirname(os.path.abspath(args.out))
    if os.path.isdir(args.out) or not os.path.isdir(folder):
        raise TokenizeError(f"-o {args.out}: " + ("a directory; give a file name" if os.path.isdir(args.out)
                                                  else f"no such directory {folder}"))

    try:
        config = GalleryConfig(words=args.words, num_words=args.num_words, per_word=args.per_word, size=args.size)
        media_root = MediaRoot(args.media_root)
    except ValueError as err:   # MediaRootError too
        raise TokenizeError(str(err)) from None
    bars = _bars(args.quiet)
    try:
        result = draw_gallery(args.store, args.vocab, args.out, config, progress=bars, media_root=media_root)
    finally:
        bars.close()
    shown = ", ".join(f"{w} ({c} clips)" for w, c in zip(result.words, result.counts))
    print(f"videolm tokenize gallery: words {shown} -> {args.out}")
    if result.missing:
        print(f"{len(result.missing)} source(s) could not be read (grey tiles): {', '.join(result.missing[:3])}; "
              + media_root.hint(result.missing))
        return False
    return True
