"""`videolm evaluate`, `videolm search` and `videolm zeroshot`."""

from __future__ import annotations

import os
import sys

from videolm.cliutil import EXIT_OK, CliError
from videolm.cliutil import Formatter as _Formatter
from videolm.errors import first_line

EVALUATE = """\
Retrieval figures of a saved model on a protocol, in every direction it applies
to (t2v, v2t for videos; t2i, i2t for images): chance, dual encoder, and with
--rerank-k the alignment head's re-ranking, side by side. Writes OUT/metrics.json,
OUT/report.md, OUT/recall.png, OUT/similarity.npz (every score matrix) and
retrieval examples (OUT/examples_t2v.png, examples_t2i.png).
Never pick a checkpoint on a test split.

  videolm evaluate runs/cbt/model --protocol captions --store demo_out/store \\
      --annotations configs/data/sample_captions.jsonl --rerank-k 4 --out results/cbt
  videolm evaluate MODEL --protocol msrvtt-1ka --store msrvtt_store \\
      --annotations MSRVTT_JSFUSION_test.csv --out results/msrvtt"""

SEARCH = """\
The store's items ranked for a text query (or an image / video given by
example). The gallery's embeddings and index are cached and reused.

  videolm search runs/cbt/model demo_out/store "a rabbit in a meadow" -k 5
  videolm search runs/cbt/model demo_out/store --image photo.jpg"""

ZEROSHOT = """\
Zero-shot classification: by the dual encoder (class prompts; --classes FILE or
--kinetics400), or by VideoBERT's masked template (--masked "a [MASK] moves left"
with --truth FILE giving each video's true words, one per slot).

  videolm zeroshot MODEL --store STORE --labels labels.jsonl --classes classes.txt
  videolm zeroshot MODEL --store STORE --masked "a [MASK] [MASK]" --truth words.jsonl \\
      --words colours.txt --words shapes.txt"""


def add_parser(subparsers) -> None:
    from videolm.eval.metrics import TIES

    p = subparsers.add_parser("evaluate", formatter_class=_Formatter, help="retrieval evaluation of a model",
                              description=EVALUATE)
    p.add_argument("model", help="model directory (save_pretrained; e.g. RUN/model)")
    p.add_argument("--protocol", required=True,
                   help="msrvtt-1ka | msrvtt-full | youcook2 | coco-5k | flickr30k-1k | captions")
    p.add_argument("--store", required=True, help="feature store holding the protocol's videos / images")
    p.add_argument("--annotations", action="append", default=[],
                   help="the protocol's annotation file (captions: one or more manifests)")
    p.add_argument("--split", default=None, help="val | test (default: test; youcook2: val)")
    p.add_argument("--out", default=None, help="report directory (default: print only)")
    p.add_argument("--k", dest="ks", type=int, action="append", default=None, help="R@K values (default 1, 5, 10)")
    p.add_argument("--ties", default="pessimistic", choices=TIES, help="how tied scores rank")
    p.add_argument("--v2t-rule", default="best-caption", choices=["best-caption", "group-max"],
                   help="item->text with several captions: best own caption among all (LAVIS) or caption "
                        "sets scored by their best caption (CLIP4Clip)")
    p.add_argument("--rerank-k", type=int, default=0, help="re-rank each query's top k with the alignment head")
    p.add_argument("--rerank-score", default="align", choices=["align", "align+dual", "align+cosine"],
                   help="re-ranked score: the alignment logit; + the dual encoder's logit (cosine / tau); "
                        "or + the raw cosine (LAVIS/BLIP)")
    p.add_argument("--rerank-weight", type=float, default=1.0,
                   help="weight of the alignment logit in align+dual / align+cosine (choose it on a val split)")
    p.add_argument("--dsl", action="store_true", help="also report dual softmax (uses the test query set)")
    p.add_argument("--untrained", action="store_true", help="also report the same architecture untrained")
    p.add_argument("--seed", type=int, default=0, help="seed of the untrained model")
    p.add_argument("--allow-missing", action="store_true", help="evaluate without the items the store lacks")
    p.add_argument("--batch-size", type=int, default=64, help="inputs per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--cache", default=None, help="embedding cache directory (default: OUT/cache)")
    p.add_argument("--examples", type=int, default=6, metavar="N",
                   help="OUT/examples_t2v.png / examples_t2i.png: N random text queries with their top 5 (re-ranked "
                        "where --rerank-k is given), frames read from the sources; 0: none")
    p.add_argument("--media-root", default=None, metavar="DIR|OLD=NEW",
                   help="where the sources are now, for the examples' frames: relative stored paths under DIR, or "
                        "stored paths under OLD found under NEW")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    s = subparsers.add_parser("search", formatter_class=_Formatter, help="search a store with a model",
                              description=SEARCH)
    s.add_argument("model", help="model directory")
    s.add_argument("store", help="feature store to search")
    s.add_argument("query", nargs="?", default=None, help="text query")
    s.add_argument("--image", default=None, help="query by an example image")
    s.add_argument("--video", default=None, help="query by an example video")
    s.add_argument("-k", type=int, default=5, help="results to show")
    s.add_argument("--kind", default="all", choices=["all", "video", "image"], help="which items to search")
    s.add_argument("--rerank", type=int, nargs="?", const=16, default=0, metavar="K",
                   help="re-rank the top K (default 16) with the alignment head (text queries)")
    s.add_argument("--rerank-score", default="align", choices=["align", "align+dual", "align+cosine"],
                   help="re-ranked score (see evaluate --help)")
    s.add_argument("--index", default="flat", choices=["flat", "hnsw", "ivf"],
                   help="faiss index: exact, or approximate for very large galleries")
    s.add_argument("--cache", default=None,
                   help="cache directory (default: $VIDEOLM_CACHE or ~/.cache/videolm)")
    s.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    s.add_argument("--png", default=None, metavar="FILE",
                   help="also draw the hits (the middle frame of each one's clips) into this PNG")
    s.add_argument("--media-root", default=None, metavar="DIR|OLD=NEW",
                   help="where the sources are now, for --png (see evaluate --help)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    z = subparsers.add_parser("zeroshot", formatter_class=_Formatter, help="zero-shot classification",
                              description=ZEROSHOT)
    z.add_argument("model", help="model directory")
    z.add_argument("--store", required=True, help="feature store with the videos")
    z.add_argument("--labels", default=None, help="dual encoder: JSONL/CSV of video_id and label")
    z.add_argument("--classes", default=None, help="dual encoder: class names, one a line")
    z.add_argument("--kinetics400", action="store_true", help="dual encoder: the Kinetics-400 class names")
    z.add_argument("--template", action="append", default=None,
                   help="dual encoder: prompt template with {} (repeatable; averaged)")
    z.add_argument("--masked", default=None, help="masked template with [MASK] slots")
    z.add_argument("--truth", default=None, help="masked: JSONL/CSV of video_id and words (one per slot)")
    z.add_argument("--words", action="append", default=None,
                   help="masked: candidate words of a slot, one a line (repeat per slot)")
    z.add_argument("--out", default=None, help="write zeroshot.json here")
    z.add_argument("--device", default="cpu", help="cpu, cuda, ...")


def _bars(quiet: bool):
    from tqdm import tqdm

    bars = []

    def factory(what: str, total: int):
        if not quiet and not sys.stderr.isatty():   # a log file or CI: one plain line per stage, no bar
            print(f"{what}: {total} inputs", file=sys.stderr)
            return None
        bar = tqdm(total=total, desc=what, unit="input", disable=quiet, leave=False, file=sys.stderr)
        bars.append(bar)
        return bar.update

    return factory, bars


def _errors():
    from videolm.eval.embeddings import EvalError
    from videolm.eval.protocols import ProtocolError

    return EvalError, ProtocolError, ValueError


def _open_store(path: str):
    """The feature store, or its one line, before torch is imported."""
    from videolm.features.store import FeatureStore, StoreError

    try:
        return FeatureStore(path)
    except StoreError as err:
        raise CliError(str(err)) from None


def run_evaluate(args) -> int:
    from videolm.eval.config import EvalConfig
    from videolm.eval.errors import EvalError
    from videolm.eval.protocols import ProtocolError, load_protocol

    # the usual mistakes (settings, protocol, annotations, store) are one line before torch loads
    cfg = EvalConfig(protocol=args.protocol, annotations=args.annotations, split=args.split,
                     ks=tuple(args.ks) if args.ks else (1, 5, 10), ties=args.ties, v2t_rule=args.v2t_rule,
                     rerank_k=args.rerank_k, rerank_score=args.rerank_score, rerank_weight=args.rerank_weight,
                     dsl=args.dsl,
                     untrained=args.untrained, seed=args.seed, allow_missing=args.allow_missing,
                     batch_size=args.batch_size, device=args.device)
    from videolm.features.media_root import MediaRoot, MediaRootError

    try:
        cfg.validate()
        if args.examples < 0:
            raise EvalError(f"--examples must be >= 0, not {args.examples}")
        media_root = MediaRoot(args.media_root)
        protocol = load_protocol(args.protocol, args.annotations, args.split)
    except (EvalError, ProtocolError, MediaRootError) as err:
        raise CliError(str(err)) from None
    store = _open_store(args.store)
    from videolm.eval.evaluate import evaluate
    from videolm.eval.report import ROW_LABELS

    factory, bars = _bars(args.quiet)
    cache = args.cache or (os.path.join(args.out, "cache") if args.out else None)
    try:
        result = evaluate(args.model, store, cfg, args.out, cache, factory, protocol, args.examples, media_root)
    except _errors() as err:
        raise CliError(str(err)) from None
    finally:
        for bar in bars:
            bar.close()
    ks = cfg.ks
    print(f"videolm evaluate: {result.protocol.name} ({result.protocol.split}) on {args.store}"
          + (f"; {len(result.dropped)} items dropped (--allow-missing)" if result.dropped else ""))
    print(f"  {'direction':9s} {'row':28s} " + " ".join(f"{'R@' + str(k):>7s}" for k in ks) + f" {'MdR':>7s} {'MnR':>8s}")
    for name, d in result.directions.items():
        for row, m in d.metrics.items():
            print(f"  {name:9s} {ROW_LABELS.get(row, row)[:28]:28s} " + " ".join(f"{m.recall[k]:7.2f}" for k in ks)
                  + f" {m.median_rank:7.1f} {m.mean_rank:8.2f}")
    print(f"  ties {cfg.ties}, v2t rule {cfg.v2t_rule}"
          + (f", re-rank top {cfg.rerank_k} by {cfg.rerank_score}" if cfg.rerank_k else ""))
    if args.out:
        print(f"  report {os.path.join(args.out, 'report.md')}"
              + "".join(f"; examples {png}" for png in result.examples.values()))
    if result.examples_missing:
        print(f"  {len(result.examples_missing)} source(s) could not be read for the examples (grey tiles): "
              f"{', '.join(result.examples_missing[:3])}; {media_root.hint(result.examples_missing)}")
    return EXIT_OK


def default_cache() -> str:
    return os.environ.get("VIDEOLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "videolm")


def run_search(args) -> int:
    given = [x for x in (args.query, args.image, args.video) if x is not None]
    if len(given) != 1:
        raise CliError("give one query: text, --image PATH or --video PATH")
    if args.query is not None and not args.query.strip():
        raise CliError("empty query; give some text (or --image PATH / --video PATH)")
    if args.k < 1:
        raise CliError(f"-k must be at least 1, not {args.k}")
    if args.rerank < 0:
        raise CliError(f"--rerank must be at least 1 (or left out), not {args.rerank}")
    if args.png is not None:   # before the model loads: not after the hits are printed
        folder = os.path.dirname(os.path.abspath(args.png))
        if os.path.isdir(args.png) or not os.path.isdir(folder):
            raise CliError(f"--png {args.png}: " + ("a directory; give a file name" if os.path.isdir(args.png)
                                                    else f"no such directory {folder}"))
    from videolm.features.media_root import MediaRoot, MediaRootError

    try:
        media_root = MediaRoot(args.media_root)
    except MediaRootError as err:
        raise CliError(str(err)) from None
    store = _open_store(args.store)
    from videolm.eval.embeddings import Encoder
    from videolm.eval.index import IndexConfig
    from videolm.eval.search import open_gallery, search_example, search_text
    from videolm.features.store import StoreError

    factory, bars = _bars(args.quiet)
    try:
        encoder = Encoder.from_pretrained(args.model, args.device)
        gallery = open_gallery(encoder, store, args.kind, IndexConfig(kind=args.index), args.cache or default_cache(),
                               factory)
        if args.query is not None:
            hits = search_text(encoder, gallery, store, args.query, args.k, args.rerank, args.rerank_score)
        else:
            if args.rerank:
                raise CliError("--rerank applies to text queries")
            hits = search_example(encoder, gallery, store, args.image or args.video, args.k)
    except (StoreError, *_errors()) as err:
        raise CliError(str(err)) from None
    finally:
        for bar in bars:
            bar.close()
    what = args.query if args.query is not None else (args.image or args.video)
    print(f"{len(gallery.items)} items in {args.store} ({gallery.index.describe()['kind']} index"
          f"{', cached' if gallery.cached else ''}); query: {what}")
    print(f"{'rank':>4s}  {'id':30s} {'kind':5s} {'clips (s)':>13s} {'score':>7s}" + ("  align" if args.rerank else ""))
    for h in hits:
        align = f"  {h.align:6.3f}" if h.align is not None else ""
        print(f"{h.rank:4d}  {h.id:30s} {h.kind:5s} {h.start:6.2f}-{h.end:6.2f} {h.score:7.4f}{align}")
    if args.png:
        from videolm.eval.sheet import search_sheet

        query = f"“{args.query}”" if args.query is not None else f"like {os.path.basename(what)}"
        try:
            png, missing = search_sheet(hits, store, query, args.png, media_root=media_root)
        except OSError as err:   # the disk, permissions
            raise CliError(f"--png {args.png}: cannot write it ({first_line(err)})") from None
        print(f"-> {png}")
        if missing:
            print(f"{len(missing)} source(s) could not be read (grey tiles): {', '.join(missing[:3])}; "
                  f"{media_root.hint(missing)}")
    return EXIT_OK


def run_zeroshot(args) -> int:
    if (args.labels is None) == (args.masked is None):
        raise CliError("give --labels (dual encoder) or --masked TEMPLATE (masked LM), not both or neither")
    store = _open_store(args.store)
    from videolm.eval.embeddings import Encoder
    from videolm.eval.zeroshot import (DEFAULT_TEMPLATES, kinetics400_classes, read_labels, read_lines,
                                       zeroshot_dual, zeroshot_masked)
    from videolm.features.store import StoreError
    from videolm.fileio import atomic_write_json

    try:
        encoder = Encoder.from_pretrained(args.model, args.device)
        if args.labels:
            if (args.classes is None) == (not args.kinetics400):
                raise CliError("give the classes: --classes FILE or --kinetics400")
            classes = kinetics400_classes() if args.kinetics400 else read_lines(args.classes)
            result = zeroshot_dual(encoder, store, read_labels(args.labels, "label"), classes,
                                   tuple(args.template) if args.template else DEFAULT_TEMPLATES).as_dict()
            print(f"zero-shot (dual encoder): top-1 {result['top1']:.2f} %, top-5 {result['top5']:.2f} %, "
                  f"balanced top-1 {result['balanced_top1']:.2f} % (chance {result['chance_top1']:.2f} %) "
                  f"over {result['videos']} videos")
        else:
            if args.truth is None:
                raise CliError("--masked needs --truth FILE (each video's true words)")
            truth = read_labels(args.truth, "words")
            candidates = [read_lines(p) for p in args.words] if args.words else None
            result = zeroshot_masked(encoder, store, args.masked, truth, candidates).as_dict()
            for slot in result["slots"]:
                print(f"slot {slot['slot']}: top-1 {slot['top1']:.2f} %, top-5 {slot['top5']:.2f} % "
                      f"(chance {slot['chance_top1']:.2f} % of {slot['candidates']} candidates)")
    except (StoreError, *_errors()) as err:
        raise CliError(str(err)) from None
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        atomic_write_json(os.path.join(args.out, "zeroshot.json"), {"model": args.model, "store": args.store,
                                                                     **result})
        print(f"  {os.path.join(args.out, 'zeroshot.json')}")
    return EXIT_OK
