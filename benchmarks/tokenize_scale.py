"""Visual words at scale: peak memory of `tokenize fit` and `tokenize encode`
on simulated stores of 10^6 and 10^7 clips.

The goal: the fit's peak memory is bounded by its sample (``--sample-size``),
not by the store, so the peak on 10^7 clips is at most 1.2x the peak on 10^6,
and the words are the same as an in-memory fit on the same sample.

Each store is written through ``StoreWriter`` (as extraction writes one):
``--clips-per-video`` clips per video (HowTo100M: 136 M clips of 1.22 M
videos, about 110), ``--dim``-dim float16 features around 64 random centres.
Stores are kept in ``--work`` and reused by a later run. Each measurement
runs in a fresh subprocess, which reports:

- ``open``: resident memory the store's open adds to the interpreter;
- ``peak``: the process's peak resident memory over its whole life (VmHWM:
  what a scheduler's memory limit sees: interpreter, store, fit);
- ``own``: the fit's (or encode's) own peak, above the resident memory after
  the store was opened (the kernel's peak counter is reset after the open).

Then the same sample is gathered with plain numpy from the shard files and
fit in memory, and the two vocabularies' arrays are compared.

    python benchmarks/tokenize_scale.py [--clips 1000000,10000000] [--work /tmp/tokenize_scale]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from videolm.features.store import FeatureStore, Finished, StoreWriter  # noqa: E402

CENTRES = 64


def build_store(root: str, clips: int, per_video: int, dim: int, seed: int = 0) -> float:
    """A store of ``clips`` clips written by StoreWriter; seconds taken (0 if it was there)."""
    if os.path.isfile(os.path.join(root, "meta.json")) and not os.path.isdir(os.path.join(root, ".partial")):
        return 0.0
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, dim), dtype=np.float32)
    meta = {"backbone": "synthetic", "weights": "none", "dim": dim, "dtype": "float16",
            "clip_spec": {"window_s": 1.5, "stride_s": 1.5}, "videolm_version": "benchmark"}
    ids = [f"sim{i:08d}" for i in range(clips // per_video)]
    start = [1.5 * i for i in range(per_video)]
    end = [s + 1.5 for s in start]
    row = {"kind": "video", "fps": 20.0, "duration": 1.5 * per_video, "clip_start": start, "clip_end": end}
    writer = StoreWriter(root, meta, videos_per_shard=512)
    try:
        writer.plan(ids)
        for video_id in ids:
            x = centres[rng.integers(CENTRES, size=per_video)]
            x += 0.3 * rng.standard_normal((per_video, dim), dtype=np.float32)
            writer.add(Finished(video_id, f"/simulated/{video_id}.mp4", x.astype(np.float16), dict(row)))
        writer.finalize()
    finally:
        writer.close()
    return time.perf_counter() - started


# ------------------------------------------------------------------ measured in a fresh process


def status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def reset_peak() -> bool:
    """Set the kernel's peak resident counter (VmHWM) to the current resident set (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(args) -> None:
    """One measurement: open the store, then fit (saving the vocabulary) or encode; print one JSON line."""
    from videolm.tokenize.kmeans import KMeansConfig
    from videolm.tokenize.vocab import encode_store, fit_vocabulary

    base = status_kb("VmRSS")
    store = FeatureStore(args.store)
    opened, before = status_kb("VmRSS"), status_kb("VmHWM")  # before: the peak of the imports and the open
    reset = reset_peak()
    started = time.perf_counter()
    if args.child == "fit":
        config = KMeansConfig(k=args.k, depth=args.depth, sample_size=args.sample_size, seed=0)
        vocab = fit_vocabulary(store, config)
        vocab.save_pretrained(args.out, overwrite=True)
        extra = {"points": vocab.sample["points"], "fingerprint": vocab.fingerprint()}
    else:
        result = encode_store(store, args.vocab, out=args.out)
        extra = {"encoded": result.clips}
    seconds = time.perf_counter() - started
    during = status_kb("VmHWM")  # since the reset: the job's own peak, plus what was resident before it
    # not getrusage's ru_maxrss: it starts from the parent's peak at the fork that made this process
    whole = max(before, during)
    print(json.dumps({"videos": len(store), "clips": store.num_clips, "seconds": seconds, "base_mb": base / 1024,
                      "open_mb": (opened - base) / 1024, "own_mb": (during - opened) / 1024 if reset else None,
                      "peak_mb": whole / 1024, **extra}))


def measure(what: str, store: str, args, **paths) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", what, "--store", store, "--k", str(args.k),
           "--depth", str(args.depth), "--sample-size", str(args.sample_size)]
    for key, value in paths.items():
        cmd += [f"--{key}", value]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{what} on {store} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def in_memory_fit_matches(store: str, vocab_dir: str, args) -> bool:
    """Gather the fit's sample with plain numpy from the shard files (in name order) and fit in memory."""
    from videolm.tokenize.kmeans import HierarchicalKMeans, KMeansConfig
    from videolm.tokenize.vocab import Vocabulary, sample_store

    config = KMeansConfig(k=args.k, depth=args.depth, sample_size=args.sample_size, seed=0)
    rows = sample_store(FeatureStore(store), config.sample_size, config.seed).rows  # (n,) clip numbers
    parts, first = [], 0
    for path in sorted(glob.glob(os.path.join(store, "shards", "*.npy"))):
        shard = np.load(path, mmap_mode="r")
        mine = rows[(rows >= first) & (rows < first + len(shard))] - first
        parts.append(np.asarray(shard[mine], np.float32))
        first += len(shard)
    tree = HierarchicalKMeans.fit(np.concatenate(parts), config)
    ours = Vocabulary.from_pretrained(vocab_dir).tree.state_dict()
    return all(np.array_equal(ours[name], array) for name, array in tree.state_dict().items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", default="1000000,10000000", help="store sizes, comma-separated")
    parser.add_argument("--clips-per-video", type=int, default=100)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--sample-size", type=int, default=200_000)
    parser.add_argument("--k", type=int, default=12)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="/tmp/tokenize_scale", help="where the stores are built and kept")
    parser.add_argument("--no-encode", action="store_true", help="measure the fit only")
    parser.add_argument("--child", choices=("fit", "encode"), help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--vocab", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(args.threads)  # the in-memory reference fit below runs here, on as many threads
    threadpool_limits(args.threads)
    sizes = [int(float(s)) for s in args.clips.split(",")]
    os.makedirs(args.work, exist_ok=True)
    print(f"videolm tokenizer at scale: k={args.k}, depth={args.depth}, sample {args.sample_size} clips, "
          f"{args.dim}-dim float16, {args.clips_per_video} clips per video, threads={args.threads}, "
          f"numpy {np.__version__}")
    results = {}
    for clips in sizes:
        root = os.path.join(args.work, f"store_{clips}_{args.clips_per_video}")
        built = build_store(root, clips, args.clips_per_video, args.dim)
        print(f"\n{clips:,} clips ({clips // args.clips_per_video:,} videos): store "
              + (f"built by StoreWriter in {built:.0f} s" if built else "reused") + f" ({root})", flush=True)
        vocab_dir, tokens_dir = root + ".vocab", root + ".tokens"
        fit = measure("fit", root, args, out=vocab_dir)
        same = in_memory_fit_matches(root, vocab_dir, args)
        print(f"  fit     {fit['seconds']:6.1f} s on {fit['points']:,} clips: peak {fit['peak_mb']:6.0f} MB resident "
              f"(interpreter {fit['base_mb']:.0f} MB, store open +{fit['open_mb']:.0f} MB, fit's own peak "
              f"+{fit['own_mb']:.0f} MB); same arrays as an in-memory fit on the same sample: {same}", flush=True)
        results[clips] = {"fit": fit, "same": same}
        if not args.no_encode:
            shutil.rmtree(tokens_dir, ignore_errors=True)
            enc = measure("encode", root, args, vocab=vocab_dir, out=tokens_dir)
            print(f"  encode  {enc['seconds']:6.1f} s, {enc['encoded']:,} clips: peak {enc['peak_mb']:6.0f} MB "
                  f"resident (store open +{enc['open_mb']:.0f} MB, encode's own peak +{enc['own_mb']:.0f} MB)",
                  flush=True)
            results[clips]["encode"] = enc
            shutil.rmtree(tokens_dir, ignore_errors=True)

    if len(sizes) >= 2:
        small, large = results[min(sizes)], results[max(sizes)]
        print(f"\n{max(sizes):,} vs {min(sizes):,} clips (goal <= 1.2x for the fit):")
        for job in ("fit", "encode"):
            if job not in small:
                continue
            a, b = small[job], large[job]
            print(f"  {job:6}  peak {b['peak_mb'] / a['peak_mb']:.2f}x ({a['peak_mb']:.0f} -> {b['peak_mb']:.0f} MB), "
                  f"own peak {b['own_mb'] / max(a['own_mb'], 1e-9):.2f}x ({a['own_mb']:.0f} -> {b['own_mb']:.0f} MB), "
                  f"store open {a['open_mb']:.0f} -> {b['open_mb']:.0f} MB")


if __name__ == "__main__":
    main()
