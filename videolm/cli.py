"""The `videolm` command.

Exit status: 0 when everything asked for succeeded; 1 when some inputs failed
(the others are stored, the failures are in errors.jsonl); 2 for a usage or
configuration error (nothing was run); 130 when interrupted (what was
finished is kept; rerun to resume).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from videolm import __version__
from videolm.tokenize import cli as tokenize_cli
from videolm.eval import cli as eval_cli
from videolm.train import cli as train_cli

from videolm.cliutil import (EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED,  # noqa: F401
                             EXIT_USAGE, CliError)
from videolm.cliutil import Formatter as _Formatter
from videolm.errors import first_line

def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"need 0 <= i < n, got {text!r}")
    return i, n


def _add_extract(sub) -> None:
    # torch-free imports only: building the parser must not load torch (--version, --help)
    from videolm.features.config import BACKBONE_NAMES, TEMPORAL_MODES, ExtractConfig
    from videolm.video.sampling import PRESETS

    d = ExtractConfig()
    p = sub.add_parser(
        "extract", formatter_class=_Formatter, help="extract clip features into a feature store",
        description="Extract one feature vector per clip from videos and images into a feature store.\n"
                    "INPUTS: video/image files, directories (searched recursively), text lists (.txt), or\n"
                    "CSV/JSONL manifests with a 'path' and optional 'video_id' column.\n"
                    "A rerun into the same --out skips finished inputs.")
    own = "default: the preset's, else the backbone's own (docs/backbones.md)"
    p.add_argument("inputs", nargs="+", help="files, directories, lists or manifests")
    p.add_argument("-o", "--out", required=True, help="store directory to write (created or resumed)")
    p.add_argument("--backbone", default=d.backbone, choices=BACKBONE_NAMES, help="feature network")
    p.add_argument("--weights", default=d.weights,
                   help="an official name (e.g. KINETICS400_V1), a .safetensors/.pt file, or 'none' "
                        "(random init, seeded: for testing the pipeline only)")
    p.add_argument("--preset", default=d.preset, choices=sorted(PRESETS),
                   help="clip timing preset (default: the backbone's own frames x sampling rate)")
    p.add_argument("--window", dest="window_s", type=float, default=d.window_s, help=f"clip length in seconds ({own})")
    p.add_argument("--stride", dest="stride_s", type=float, default=d.stride_s,
                   help="seconds between clip starts (default: the window; smaller overlaps)")
    p.add_argument("--frames", type=int, default=d.frames, help=f"frames per clip ({own})")
    p.add_argument("--short-side", type=int, default=d.short_side, help=f"resize the short side to this ({own})")
    p.add_argument("--crop", type=int, default=d.crop, help=f"centre crop size ({own})")
    p.add_argument("--drop-short", action="store_true", help="drop videos shorter than one clip instead of padding")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="clips per backbone batch")
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader workers decoding in parallel")
    p.add_argument("--decode-threads", type=int, default=d.decode_threads, help="decoder threads per worker")
    p.add_argument("--worker-nice", type=int, default=d.worker_nice,
                   help="lower the decoding workers' CPU priority by this nice value")
    p.add_argument("--threads", type=int, default=None, help="torch threads for the backbone (default: torch's)")
    p.add_argument("--device", default=d.device,
                   help="cpu, cuda, cuda:1, ... ('cuda' under torchrun or Slurm: the rank's local GPU)")
    p.add_argument("--amp", action="store_true", help="float16 autocast on CUDA")
    p.add_argument("--dtype", default=d.dtype, choices=["float16", "float32"], help="stored feature dtype")
    p.add_argument("--reader", default=d.reader, choices=["auto", "decord", "pyav"],
                   help="video reader; auto tries decord, then PyAV")
    p.add_argument("--limit", type=int, default=d.limit,
                   help="process at most this many inputs in this run (default: all)")
    p.add_argument("--shard", type=_shard, default=d.shard,
                   help="i/n: take every n-th input starting at i "
                        "(default: from torchrun's RANK/WORLD_SIZE or Slurm's SLURM_PROCID/SLURM_NTASKS)")
    p.add_argument("--videos-per-shard", type=int, default=d.videos_per_shard, help="inputs per .npy shard")
    p.add_argument("--retry-failed", action="store_true", help="retry inputs that failed in an earlier run")
    p.add_argument("--no-output-check", dest="check_output", action="store_false",
                   help="store the features even if the first batch shows the network's output is degenerate "
                        "(all zero, or the same vector for different clips); by default such a run stops")
    p.add_argument("--seed", type=int, default=d.seed, help="seed for random-init weights")
    p.add_argument("--temporal", default=d.temporal, choices=list(TEMPORAL_MODES),
                   help="2-D backbones: 'mean' of the frames' vectors; 'mean+diff' / 'mean+flow': that mean "
                        "beside the vector of a motion image from the clip's first and last frames (their "
                        "difference, as TSN; or their normal flow, which carries direction) (docs/backbones.md)")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local: this machine (DataLoader workers decode, this process runs the backbone); "
                        "ray: a Ray cluster (decode tasks, backbone actors, this process writes the store; "
                        "pip install 'videolm[ray]'; docs/scaling.md)")
    p.add_argument("--ray-address", default=None, metavar="auto|HOST:PORT",
                   help="with --engine ray: the cluster to join (default: a local Ray started for the run)")
    p.add_argument("--ray-actors", type=int, default=1, metavar="N",
                   help="with --engine ray: backbone actors in the pool (on CUDA, one GPU each)")
    p.add_argument("--ray-gpus-per-actor", type=float, default=1.0, metavar="G",
                   help="with --engine ray --device cuda: GPUs per backbone actor (0.5: two actors per GPU)")
    p.add_argument("--ray-cpus", type=int, default=None, metavar="N",
                   help="with --engine ray and no --ray-address: CPUs of the local Ray (default: all cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _add_store(sub) -> None:
    p = sub.add_parser("store", formatter_class=_Formatter, help="inspect, merge, join, upgrade, import or export feature stores")
    ssub = p.add_subparsers(dest="store_cmd", metavar="{info,merge,join,upgrade,import,export}")
    ssub.required = True
    info = ssub.add_parser("info", formatter_class=_Formatter, help="summary of a store")
    info.add_argument("dir", help="store directory")
    merge = ssub.add_parser("merge", formatter_class=_Formatter,
                            help="join stores (e.g. the parts of a sharded extraction) into one")
    merge.add_argument("out", help="new store directory")
    merge.add_argument("parts", nargs="+", help="part stores, in order")
    merge.add_argument("--copy", action="store_true", help="copy shards instead of hard-linking them")
    join = ssub.add_parser("join", formatter_class=_Formatter,
                           help="put the features of stores over the same clips side by side (appearance + motion)")
    join.add_argument("out", help="new store directory")
    join.add_argument("parts", nargs="+", help="stores extracted over the same clips (same --window/--stride)")
    upgrade = ssub.add_parser("upgrade", formatter_class=_Formatter,
                              help="convert a format 1 store (index.jsonl) to format 2 (index/ arrays) in place",
                              description="Convert a store written by videolm before format 2 in place: the new "
                                          "store is built beside it (shards hard-linked) and swapped in by renames.")
    upgrade.add_argument("dir", help="store directory")
    imp = ssub.add_parser("import", formatter_class=_Formatter,
                          help="features computed elsewhere (one .npy per video) into a store",
                          description="Import precomputed clip features, one (clips, dim) .npy array per video "
                                      "(fairseq MMPT / VideoCLIP's <video_id>.npy, video_features' <video>_s3d.npy), "
                                      "into a feature store that pre-training, visual words and evaluation read like "
                                      "an extracted one. Clip i spans [i * stride, i * stride + window] seconds. A "
                                      "rerun resumes; a file that cannot be read is an errors.jsonl row.\n\n"
                                      "  videolm store import feats/howto100m_s3d s3d_npy/ --window 1 --name s3d_howto100m")
    imp.add_argument("out", help="new store directory (or one an earlier import began)")
    imp.add_argument("inputs", nargs="+", help=".npy files, or directories searched for *.npy")
    imp.add_argument("--window", type=float, default=None,
                     help="seconds each clip (feature vector) spans (an export's directory brings its own)")
    imp.add_argument("--stride", type=float, default=None, help="seconds between clip starts (default: --window)")
    imp.add_argument("--name", default="features", help="what computed them (recorded as backbone imported:NAME)")
    imp.add_argument("--weights", default="unknown", help="their weights or source, recorded in meta.json")
    imp.add_argument("--suffix", default="", help="left off each file name's id (video_features: _s3d, _i3d, ...)")
    imp.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="stored precision")
    imp.add_argument("--no-timestamps", action="store_true",
                     help="clips every --stride seconds even where video_features' _timestamps_ms.npy is beside a file")
    imp.add_argument("--media", default=None, metavar="DIR",
                     help="where the source videos or photos are (DIR/<id>.<ext>, or the one <id>.<ext> below DIR), "
                          "for galleries and retrieval examples")
    imp.add_argument("--videos-per-shard", type=int, default=256, help="inputs per .npy shard file")
    imp.add_argument("--retry-failed", action="store_true", help="read the files an earlier run could not use again")
    imp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    exp = ssub.add_parser("export", formatter_class=_Formatter,
                          help="a store as one <id>.npy per input, for other tools",
                          description="Write every stored input as OUT/<id>.npy, its (clips, dim) features, and "
                                      "OUT/clips.jsonl (id, file, kind, clip start and end seconds): the layout "
                                      "fairseq MMPT and other tools read, and store import reads back. A rerun "
                                      "into the same OUT skips the files written.")
    exp.add_argument("dir", help="store directory")
    exp.add_argument("out", help="new directory (or an earlier export of this store)")
    exp.add_argument("--dtype", default=None, choices=["float16", "float32"], help="default: the store's")
    exp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videolm", formatter_class=_Formatter,
                                     description="Video-language pre-training toolkit (VideoBERT / CBT).")
    parser.add_argument("--version", action="version", version=f"videolm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="cmd", metavar="{extract,store,tokenize,pretrain,plot,evaluate,search,zeroshot,demo}")
    sub.required = True
    _add_extract(sub)
    _add_store(sub)
    tokenize_cli.add_parser(sub)
    train_cli.add_parser(sub)
    eval_cli.add_parser(sub)
    demo = sub.add_parser("demo", formatter_class=_Formatter, help="the quickstart: the whole toolkit on the "
                          "embedded synthetic set", description="Generate the embedded synthetic video-caption set, "
                          "extract features, fit visual words, pre-train VideoBERT and CBT modes, evaluate them on "
                          "held-out compositions and write a report (docs/quickstart.md).")
    demo.add_argument("--out", default="demo_out/quickstart", help="working directory (data, features, runs)")
    demo.add_argument("--results", default="results/quickstart", help="where the report goes")
    demo.add_argument("--tiny", action="store_true", help="a tiny set and model: the same path in seconds")
    demo.add_argument("--compare-streams", action="store_true",
                      help="also compare single- and two-stream models on the set (a source checkout)")
    demo.add_argument("--sanity", metavar="DIR", help="the sanity set's folder (python -m videolm.demo DIR, run "
                      "before): the report's time goal adds its recorded seconds")
    return parser


class _TqdmLogHandler(logging.Handler):
    def emit(self, record):
        from tqdm import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def _setup_logging(verbose: bool) -> None:
    handler = _TqdmLogHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger("videolm")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def launcher_rank(env) -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when started by torchrun, or as one of
    several Slurm tasks (srun -n N); None otherwise."""
    if int(env.get("WORLD_SIZE", "1")) > 1:  # torchrun
        return int(env.get("RANK", "0")), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0"))
    if int(env.get("SLURM_NTASKS", "1")) > 1:  # srun -n N
        return int(env.get("SLURM_PROCID", "0")), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", "0"))
    return None


class _Bars:
    """Progress for extract (videolm.progress hooks): on a terminal, one tqdm
    bar per level (inputs, clips); when stderr is a log file or a CI pipe,
    no bars but one plain line per finished input."""

    def __init__(self, quiet: bool, errors_path: str):
        from tqdm import tqdm

        self.tqdm, self.quiet, self.errors_path = tqdm, quiet, errors_path
        self.tty = sys.stderr.isatty()
        self.bars: dict[str, object] = {}
        self.total = self.done = 0

    def start(self, stage, total=None):
        if stage == "inputs":
            self.total = total
        if self.tty and not self.quiet:
            unit = {"inputs": "input", "clips": "clip"}.get(stage, "step")
            self.bars[stage] = self.tqdm(total=total, desc=stage, unit=unit, position=len(self.bars))

    def advance(self, n=1, stage=None):
        bar = self.bars.get(stage)
        if bar is not None:
            bar.update(n)

    def finished(self, path, status, message=None):
        self.done += 1
        if not self.bars and not self.quiet:
            print(f"[{self.done}/{self.total}] {status}: {path}", file=sys.stderr, flush=True)
        if status == "failed":
            self.tqdm.write(f"error: {path}: {message}; recorded in {self.errors_path}", file=sys.stderr)
        elif message:
            self.tqdm.write(f"warning: {path}: {message}", file=sys.stderr)

    def close(self):
        for bar in self.bars.values():
            bar.close()


def _cmd_extract(args) -> int:
    # the settings and the inputs are checked before torch loads: a mistyped one is its line at once, not after
    # the 5-9 s that torch, torchvision and the backbones' import take on 2 cores
    from videolm.features.config import ExtractConfig
    from videolm.features.inputs import UsageError, collect_inputs

    out = args.out
    shard, device = args.shard, args.device
    ray_cfg = _ray_config(args)
    launched = launcher_rank(os.environ) if ray_cfg is None else None  # Ray spreads the work itself
    if shard is None and launched is not None:  # under torchrun / srun: each rank writes its own part
        rank, world, local = launched
        shard = (rank, world)
        out = os.path.join(out, f"part-{rank:05d}-of-{world:05d}")
        if device == "cuda":
            device = f"cuda:{local}"
        print(f"videolm extract: rank {rank} of {world}: inputs {rank}, {rank + world}, ... on {device} -> {out}",
              file=sys.stderr)
    try:
        cfg = ExtractConfig(**{k: getattr(args, k) for k in (
            "backbone", "weights", "preset", "window_s", "stride_s", "frames", "short_side", "crop", "drop_short",
            "batch_size", "workers", "decode_threads", "worker_nice", "amp", "dtype", "reader", "limit",
            "videos_per_shard", "retry_failed", "check_output", "seed", "temporal")}, shard=shard, device=device)
        items, input_errors = collect_inputs(args.inputs)
    except (ValueError, UsageError) as err:
        raise CliError(str(err)) from None
    from tqdm import tqdm

    from videolm.features.registry import BackboneError
    from videolm.features.runplan import clip_spec_for
    from videolm.features.store import StoreError

    try:
        clip_spec_for(cfg)  # sizes that cannot work (they depend on the backbone's own) before anything runs
    except ValueError as err:
        raise CliError(str(err)) from None
    if ray_cfg is None:  # the Ray driver never imports torch: its actors run the network (--threads is theirs)
        import torch

        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise CliError(f"--device {cfg.device}: no CUDA device is available on this machine (use --device cpu)")
        if args.threads:
            torch.set_num_threads(args.threads)
    errors_path = os.path.join(out, "errors.jsonl")
    for e in input_errors:
        tqdm.write(f"error: {e.where}: {e.reason}; recorded in {errors_path}", file=sys.stderr)

    bars = _Bars(args.quiet, errors_path)
    try:
        if ray_cfg is None:
            from videolm.features.extract import extract

            result = extract(items, out, cfg, input_errors, progress=bars)
        else:
            from videolm.features.ray_engine import RayEngineError, extract_ray

            try:
                result = extract_ray(items, out, cfg, ray_cfg, input_errors, progress=bars)
            except RayEngineError as err:
                raise CliError(str(err)) from None
    except (BackboneError, StoreError) as err:
        raise CliError(str(err)) from None
    finally:
        bars.close()
    failed = result.failed + len(input_errors)
    earlier = (f" ({result.skipped_failed} of them failed in an earlier run; --retry-failed tries them again)"
               if result.skipped_failed else "")
    print(f"videolm extract: {result.ok} ok, {failed} failed, {result.skipped} already done{earlier}; "
          f"{result.clips} clips in {result.seconds:.1f} s ({result.clips_per_s:.2f} clips/s) -> {out}")
    if launched is not None and args.shard is None:
        print(f"when every rank has finished: videolm store merge MERGED {args.out}/part-*")
    # 1 as long as the store holds a failed input of this run's list: a rerun does not turn it into success
    return EXIT_SOME_FAILED if failed or result.skipped_failed else EXIT_OK


def _ray_config(args):
    """The Ray engine's settings (None for --engine local); without Ray
    installed, the one line that says what to install."""
    if args.engine != "ray":
        for flag, value, default in (("--ray-address", args.ray_address, None), ("--ray-actors", args.ray_actors, 1),
                                     ("--ray-cpus", args.ray_cpus, None),
                                     ("--ray-gpus-per-actor", args.ray_gpus_per_actor, 1.0)):
            if value != default:
                raise CliError(f"{flag} needs --engine ray")
        return None
    from videolm.features.ray_engine import RayConfig, RayEngineError, import_ray

    try:
        import_ray()
        return RayConfig(address=args.ray_address, actors=args.ray_actors, gpus_per_actor=args.ray_gpus_per_actor,
                         num_cpus=args.ray_cpus, threads=args.threads)
    except (RayEngineError, ValueError) as err:
        raise CliError(str(err)) from None


def _cmd_store(args) -> int:
    import time

    from videolm.features.store import FeatureStore, StoreError, join_stores, merge_stores, upgrade_store

    try:
        if args.store_cmd == "upgrade":
            t0 = time.perf_counter()
            if not upgrade_store(args.dir):
                print(f"{args.dir}: already format 2; nothing to do")
                return EXIT_OK
            s = FeatureStore(args.dir).summary()
            print(f"upgraded {args.dir} to format 2: {s['videos'] + s['images']} inputs, {s['clips']} clips in "
                  f"{s['shards']} shard(s) ({time.perf_counter() - t0:.1f} s)")
            return EXIT_OK
        if args.store_cmd == "info":
            store = FeatureStore(args.dir)
            s = store.summary()
            spec = store.meta.get("clip_spec", {})
            print(f"store      {args.dir}")
            print(f"backbone   {s['backbone']} (weights: {s['weights']})")
            frames = (f"{spec.get('frames')} frames, {spec.get('crop')} px" if spec.get("frames") is not None
                      else "frames and size not recorded (imported features)")
            print(f"clip       {spec.get('window_s')} s window, stride {spec.get('stride_s') or spec.get('window_s')} s, "
                  f"{frames}")
            if str(store.meta.get("imported", {}).get("clip_times", "")).startswith("timestamps"):
                print("           clip times from video_features' _timestamps_ms.npy where one was beside a file")
            print(f"inputs     {s['videos']} videos, {s['images']} images in {s['shards']} shard(s)")
            print(f"clips      {s['clips']} x {s['dim']} ({s['dtype']})")
            print(f"failures   {s['failed']} (warnings: {s['warnings']}; see errors.jsonl)")
            if s.get("format_version", 1) < 2:
                print(f"format     1 (index.jsonl, parsed at every open): `videolm store upgrade {args.dir}`")
            return EXIT_OK
        if args.store_cmd == "import":
            return _store_import(args)
        if args.store_cmd == "export":
            return _store_export(args)
        if args.store_cmd == "join":
            store = join_stores(args.out, args.parts)
            print(f"joined {len(args.parts)} stores into {args.out}: {len(store)} inputs, {store.num_clips} clips x "
                  f"{store.dim} ({store.meta['backbone']})")
            return EXIT_OK
        t0 = time.perf_counter()
        store = merge_stores(args.out, args.parts, link=not args.copy)
        s = store.summary()
        print(f"merged {len(args.parts)} stores into {args.out}: {s['videos'] + s['images']} inputs, {s['clips']} clips "
              f"in {s['shards']} shard(s) ({time.perf_counter() - t0:.1f} s)")
        return EXIT_OK
    except StoreError as err:
        raise CliError(str(err)) from None


def _store_import(args) -> int:
    from videolm.features.importer import ImportUsageError, import_features

    if args.videos_per_shard < 1:
        raise CliError(f"--videos-per-shard must be >= 1, not {args.videos_per_shard}")
    bars = _Bars(args.quiet, os.path.join(args.out, "errors.jsonl"))
    try:
        result = import_features(args.inputs, args.out, args.window, args.stride, args.name, args.weights, args.dtype,
                                 args.suffix, args.media, args.videos_per_shard, args.retry_failed, bars,
                                 not args.no_timestamps)
    except ImportUsageError as err:
        raise CliError(str(err)) from None
    except OSError as err:   # the store cannot be written there (permissions, a full disk)
        raise CliError(f"{args.out}: cannot write the store ({first_line(err)})") from None
    finally:
        bars.close()
    earlier = (f" ({result.skipped_failed} of them failed in an earlier run; --retry-failed reads them again)"
               if result.skipped_failed else "")
    print(f"videolm store import: {result.ok} imported ({result.clips} clips), {result.failed} failed, "
          f"{result.skipped} already done{earlier}, in {result.seconds:.1f} s -> {args.out}")
    if result.media_found is not None:
        looked = result.media_looked
        print(f"--media {args.media}: a source for {result.media_found} of the {looked} files read now"
              + ("" if result.media_found == looked else " (the others' pictures are grey tiles)")
              + (f"; the {result.skipped} already done keep what their import recorded" if result.skipped else ""))
    # 1 as long as the store holds a failed file of this list, as for extract
    return EXIT_SOME_FAILED if result.failed or result.skipped_failed else EXIT_OK


def _store_export(args) -> int:
    from videolm.features.importer import ImportUsageError, export_store

    bars = _Bars(args.quiet, os.path.join(args.out, "errors.jsonl"))
    try:
        result = export_store(args.dir, args.out, args.dtype, bars)
    except ImportUsageError as err:
        raise CliError(str(err)) from None
    except OSError as err:   # OUT cannot be written (permissions, a full disk)
        raise CliError(f"{args.out}: cannot write the export ({first_line(err)})") from None
    finally:
        bars.close()
    print(f"videolm store export: {result.written} written, {result.skipped} already there ({result.clips} clips), "
          f"in {result.seconds:.1f} s -> {args.out} (clips.jsonl: the clip times)")
    return EXIT_OK


def _cmd_demo(args) -> int:
    from videolm.quickstart import run

    return run(args.out, args.results, args.tiny, args.compare_streams, args.sanity)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    commands = {"extract": _cmd_extract, "store": _cmd_store, "tokenize": tokenize_cli.run,
                "pretrain": train_cli.run_pretrain, "plot": train_cli.run_plot,
                "evaluate": eval_cli.run_evaluate, "search": eval_cli.run_search, "zeroshot": eval_cli.run_zeroshot,
                "demo": _cmd_demo}
    from videolm.features.store import StoreError

    try:
        return commands[args.cmd](args)
    except CliError as err:
        line = err.line()
        if line is not None:
            print(line, file=sys.stderr)
        else:  # a silent rank: torchrun stops the others when one exits, so give rank 0 time to print first
            import time

            time.sleep(2.0)
        return EXIT_USAGE
    except StoreError as err:  # a damaged store met mid-command (a shard cut short): its one line, not a traceback
        print(f"error: {first_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: finished work (inputs, checkpoints) is kept; rerun the same command to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader of stdout went away (`videolm store info S | head`): stop quietly, and point stdout at
        # /dev/null so that the interpreter's flush at exit does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
