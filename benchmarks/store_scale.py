"""The feature store at scale: format 2 (index/ of memory-mapped .npy
columns) against format 1, today's reference (index.jsonl parsed into
Python dicts at every open), side by side in one run.

Every store is built through a StoreWriter (synthetic results: 10 clips per
video, dim 8, float16, rows shaped like extract's). The reference is the
store module (and the pre-training corpus module) of commit REFERENCE,
loaded from git, so it runs exactly as it shipped. Printed:

- write time (fsync on in both), at equal size, and format 2's at scale;
- open time, one-id lookup time and resident memory after open above the
  interpreter (a fresh process each);
- `videolm store info` time and peak memory (a fresh process);
- a pre-training DataLoader (CBT mode, 2 workers, fork as the trainer
  starts them) over a caption manifest of 10^5 of the store's videos:
  resident and private memory of the main process and of each worker;
- merge of 100 part stores (and of 10, for linearity).

The format 1 stores that are only read (the 10^5-video store, merged from
100 parts by today's merge, and its parts) are written with fsync turned
off: that changes no byte and saves minutes; format 1's write time is
measured with fsync on, at --v1-write-videos.

    python benchmarks/store_scale.py [--videos 1000000] [--v1-videos 100000] [--parts 100]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REFERENCE = "12618a6"  # the last commit with store format 1
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIPS = 10
DIM = 8
META = {"backbone": "synthetic", "weights": "none", "clip_spec": {"window_s": 1.5, "stride_s": None, "frames": 16},
        "dim": DIM, "dtype": "float16", "videolm_version": "bench"}
BLOCK = np.random.default_rng(0).normal(size=(4096, DIM)).astype(np.float16)


def reference_source(path: str, out_dir: str) -> str:
    """The file ``path`` as of REFERENCE, written under ``out_dir``."""
    text = subprocess.run(["git", "-C", REPO, "show", f"{REFERENCE}:{path}"], check=True, capture_output=True,
                          text=True).stdout
    out = os.path.join(out_dir, os.path.basename(path).replace(".py", "_v1.py"))
    with open(out, "w") as f:
        f.write(text)
    return out


def load_module(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def no_fsync(*modules):
    """fsync as a no-op in these modules (for stores that are only read)."""
    import videolm.fileio as fileio

    class _Os:
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def fsync(fd):
            return None

    saved = [(m, m.os) for m in (fileio, *modules)]
    for m, _ in saved:
        m.os = _Os()
    try:
        yield
    finally:
        for m, real in saved:
            m.os = real


def build(store_module, root: str, videos: int, first: int = 0, videos_per_shard: int = 2000) -> float:
    """Write ``videos`` synthetic results (ids vid{first..}) through the module's StoreWriter; seconds."""
    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    with store_module.StoreWriter(root, dict(META), videos_per_shard) as writer:
        ids = [f"vid{i:08d}" for i in range(first, first + videos)]
        writer.plan(ids)
        for i, video_id in enumerate(ids, first):
            start = [1.5 * j for j in range(CLIPS)]
            row = {"kind": "video", "reader": "decord", "fps": 25.0, "num_frames": 375, "duration": 15.0,
                   "width": 320, "height": 240, "size": 10**6 + i, "mtime_ns": 1_700_000_000_000_000_000 + i,
                   "clip_start": start, "clip_end": [s + 1.5 for s in start]}
            o = (i * 7) % (len(BLOCK) - CLIPS)
            writer.add(store_module.Finished(video_id, f"/data/videos/{video_id}.mp4", BLOCK[o : o + CLIPS], row))
        writer.finalize()
    return time.perf_counter() - t


PROBE = r"""
import json, os, random, resource, sys, time
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
import numpy as np
if {reference!r}:
    import importlib.util
    spec = importlib.util.spec_from_file_location("store_v1", {ref_path!r})
    store_module = importlib.util.module_from_spec(spec); sys.modules["store_v1"] = store_module
    spec.loader.exec_module(store_module)
else:
    import videolm.features.store as store_module
base = rss()
t = time.perf_counter()
store = store_module.FeatureStore({root!r})
open_s = time.perf_counter() - t
after = rss()
n = len(store)
ids = ["vid%08d" % i for i in random.Random(0).sample(range(n), 1000)]
t = time.perf_counter()
for v in ids:
    store.entry(v)
lookup_s = (time.perf_counter() - t) / len(ids)
t = time.perf_counter()
for v in ids:
    store.features(v); store.clip_times(v)
read_s = (time.perf_counter() - t) / len(ids)
print(json.dumps({{"open_s": open_s, "rss_base_mb": base, "rss_open_mb": after - base, "lookup_s": lookup_s,
                  "read_s": read_s, "videos": n, "clips": store.num_clips}}))
"""

INFO = r"""
import sys, time
t = time.perf_counter()
if {reference!r}:  # today's store module behind the same command (names it lacks, for other importers)
    import importlib.util
    import videolm.features.store as current
    spec = importlib.util.spec_from_file_location("videolm.features.store", {ref_path!r})
    m = importlib.util.module_from_spec(spec); sys.modules["videolm.features.store"] = m; spec.loader.exec_module(m)
    for name, value in vars(current).items():
        if not hasattr(m, name):
            setattr(m, name, value)
import videolm.cli
videolm.cli.main(["store", "info", {root!r}])
peak = [int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print("WALL", time.perf_counter() - t, peak)  # VmHWM: this process's peak (ru_maxrss survives exec)
"""

LOADER = r"""
import json, os, sys, time
import numpy as np, torch
def mem(pid):
    out = {{}}
    for line in open(f"/proc/{{pid}}/smaps_rollup"):
        parts = line.split()
        if parts[0] in ("Rss:", "Pss:", "Private_Clean:", "Private_Dirty:"):
            out[parts[0][:-1]] = int(parts[1]) / 1024
    return {{"rss": out["Rss"], "pss": out["Pss"], "private": out["Private_Clean"] + out["Private_Dirty"]}}
if {reference!r}:  # today's store and corpus modules (the store lends other importers the names it lacks)
    import importlib.util
    import videolm.features.store as current
    for name, path in (("videolm.features.store", {ref_path!r}), ("corpus_v1", {ref_corpus!r})):
        spec = importlib.util.spec_from_file_location(name, path)
        m = importlib.util.module_from_spec(spec); sys.modules[name] = m; spec.loader.exec_module(m)
        if name == "videolm.features.store":
            for key, value in vars(current).items():
                if not hasattr(m, key):
                    setattr(m, key, value)
    corpus = sys.modules["corpus_v1"]
else:
    import videolm.data.corpus as corpus
from videolm.data.config import DataConfig, SourceConfig
from videolm.text.tokenizer import load_tokenizer
cfg = DataConfig(store={root!r}, sources=[SourceConfig("caption", {manifest!r})])
tokenizer = load_tokenizer(cfg.tokenizer)
before = mem(os.getpid())
t = time.perf_counter()
dataset = corpus.build_pretrain_dataset(cfg, "cbt", tokenizer, seed=0)
build_s = time.perf_counter() - t
main = mem(os.getpid())
keys = [(0, int(i)) for i in np.random.default_rng(0).permutation(len(dataset))[: {batches} * 32]]
loader = torch.utils.data.DataLoader(dataset, batch_size=32, sampler=keys, collate_fn=dataset.collate, num_workers=2)
it = iter(loader)
t = time.perf_counter()
for _ in range({batches}):
    next(it)
iter_s = time.perf_counter() - t
workers = [mem(w.pid) for w in it._workers]
print(json.dumps({{"build_s": build_s, "iter_s": iter_s, "main_before": before, "main": main, "workers": workers}}))
del it
"""


def run_python(code: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"probe failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def probe(root: str, reference: bool, ref_path: str) -> dict:
    out = json.loads(run_python(PROBE.format(root=root, reference=reference, ref_path=ref_path)).splitlines()[-1])
    info = [line for line in run_python(INFO.format(root=root, reference=reference, ref_path=ref_path)).splitlines()
            if line.startswith("WALL")][-1].split()
    out.update(info_s=float(info[1]), info_peak_mb=float(info[2]))
    return out


def loader_memory(root: str, manifest: str, reference: bool, ref_path: str, ref_corpus: str, batches: int) -> dict:
    code = LOADER.format(root=root, manifest=manifest, reference=reference, ref_path=ref_path, ref_corpus=ref_corpus,
                         batches=batches)
    return json.loads(run_python(code).splitlines()[-1])


def write_manifest(path: str, videos: int, count: int) -> str:
    rng = np.random.default_rng(1)
    with open(path, "w") as f:
        for i in np.sort(rng.choice(videos, size=min(count, videos), replace=False)):
            f.write(json.dumps({"video_id": f"vid{i:08d}", "caption": f"someone shows step {i % 97} of a recipe"}) + "\n")
    return path


def merge_parts(store_module, work: str, name: str, parts: int, part_videos: int, sync: bool) -> tuple[list[str], float]:
    roots, t = [], time.perf_counter()
    for p in range(parts):
        root = os.path.join(work, f"{name}-part{p:03d}")
        if sync:
            build(store_module, root, part_videos, first=p * part_videos)
        else:
            with no_fsync(store_module):
                build(store_module, root, part_videos, first=p * part_videos)
        roots.append(root)
    return roots, time.perf_counter() - t


def timed_merge(store_module, out: str, parts: list[str]) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    store_module.merge_stores(out, parts)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=1_000_000, help="format 2 store at scale (10 clips each)")
    parser.add_argument("--v1-videos", type=int, default=100_000, help="the equal-size comparison (both formats)")
    parser.add_argument("--v1-write-videos", type=int, default=5_000, help="format 1 write time measured at this size")
    parser.add_argument("--parts", type=int, default=100, help="part stores merged")
    parser.add_argument("--batches", type=int, default=40, help="DataLoader batches of 32 before measuring")
    parser.add_argument("--dir", default=None, help="working directory (default: a temporary one, removed)")
    args = parser.parse_args()

    sys.path.insert(0, REPO)
    import videolm.features.store as v2

    work = args.dir or tempfile.mkdtemp(prefix="store_scale_")
    os.makedirs(work, exist_ok=True)
    ref_path = reference_source("videolm/features/store.py", work)
    ref_corpus = reference_source("videolm/data/corpus.py", work)
    v1 = load_module("store_v1", ref_path)
    part_videos = args.v1_videos // args.parts
    small, big = args.v1_videos, args.videos
    print(f"format 1 = {REFERENCE}'s store (index.jsonl), format 2 = this tree's (index/); {CLIPS} clips per video, "
          f"dim {DIM} float16; work dir {work}", flush=True)
    try:
        # writing
        w1 = build(v1, os.path.join(work, "w1"), args.v1_write_videos)
        w2 = build(v2, os.path.join(work, "w2"), args.v1_write_videos)
        shutil.rmtree(os.path.join(work, "w1"))
        shutil.rmtree(os.path.join(work, "w2"))
        print(f"write {args.v1_write_videos} videos / {args.v1_write_videos * CLIPS} clips: format 1 {w1:.1f} s, "
              f"format 2 {w2:.2f} s: {w1 / w2:.0f}x faster", flush=True)
        w2_small = build(v2, os.path.join(work, "v2-small"), small)
        print(f"write {small} videos / {small * CLIPS} clips, format 2: {w2_small:.1f} s", flush=True)
        w2_big = build(v2, os.path.join(work, "v2-big"), big)
        print(f"write {big} videos / {big * CLIPS} clips, format 2: {w2_big:.1f} s "
              f"({w2_big / big * 1e6:.0f} us per video)", flush=True)

        # merge (the format 1 merge's output is the format 1 store of the equal-size comparison)
        parts1, _ = merge_parts(v1, work, "v1", args.parts, part_videos, sync=False)
        m1 = timed_merge(v1, os.path.join(work, "v1-small"), parts1)
        for p in parts1:
            shutil.rmtree(p)
        parts2, _ = merge_parts(v2, work, "v2", args.parts, part_videos, sync=True)
        m2 = timed_merge(v2, os.path.join(work, "v2-merged"), parts2)
        m2_tenth = timed_merge(v2, os.path.join(work, "v2-merged10"), parts2[: max(1, args.parts // 10)])
        a = os.stat(os.path.join(parts2[1], "shards", "00000.npy"))
        b = os.stat(os.path.join(work, "v2-merged", "shards", "00001.npy"))
        merged = v2.FeatureStore(os.path.join(work, "v2-merged"))
        lost = len(merged) != args.parts * part_videos or merged.num_clips != args.parts * part_videos * CLIPS
        print(f"merge {args.parts} parts of {part_videos} videos ({args.parts * part_videos} videos, "
              f"{args.parts * part_videos * CLIPS} clips): format 1 {m1:.1f} s, format 2 {m2:.2f} s: "
              f"{m1 / m2:.0f}x faster; {max(1, args.parts // 10)} parts: {m2_tenth:.2f} s "
              f"({m2 / m2_tenth:.1f}x for {args.parts / max(1, args.parts // 10):.0f}x the parts); "
              f"shards hard-linked: {a.st_ino == b.st_ino}; inputs lost: {'yes' if lost else 'none'}", flush=True)
        shutil.rmtree(os.path.join(work, "v2-merged10"))
        for p in parts2:
            shutil.rmtree(p)

        # reading
        rows = {}
        for label, root, ref in (("format 1", "v1-small", True), ("format 2", "v2-small", False),
                                 ("format 2", "v2-big", False)):
            r = probe(os.path.join(work, root), ref, ref_path)
            rows[root] = r
            print(f"{label} {r['videos']:>8} videos / {r['clips']:>9} clips: open {r['open_s']:.3f} s, "
                  f"lookup {r['lookup_s'] * 1e3:.3f} ms (features + times {r['read_s'] * 1e3:.3f} ms), "
                  f"RSS after open +{r['rss_open_mb']:.0f} MB (interpreter {r['rss_base_mb']:.0f} MB), "
                  f"`store info` {r['info_s']:.2f} s, peak {r['info_peak_mb']:.0f} MB", flush=True)
        s1, s2, b2 = rows["v1-small"], rows["v2-small"], rows["v2-big"]
        print(f"at {small} videos, format 1 / format 2: open {s1['open_s'] / s2['open_s']:.0f}x, "
              f"lookup {s1['lookup_s'] / s2['lookup_s']:.2f}x, RSS after open "
              f"{s1['rss_open_mb'] / max(s2['rss_open_mb'], 0.1):.0f}x, store info {s1['info_s'] / s2['info_s']:.1f}x; "
              f"format 2 at {big} vs {small} videos: open {b2['open_s'] / s2['open_s']:.2f}x, "
              f"RSS after open +{b2['rss_open_mb']:.1f} vs +{s2['rss_open_mb']:.1f} MB", flush=True)

        # pre-training data loader
        manifest = write_manifest(os.path.join(work, "captions.jsonl"), small, 100_000)
        for label, root, ref in (("format 1", "v1-small", True), ("format 2", "v2-small", False),
                                 ("format 2", "v2-big", False)):
            r = loader_memory(os.path.join(work, root), manifest, ref, ref_path, ref_corpus, args.batches)
            ws = r["workers"]
            print(f"pre-training loader, {label}, store of {rows[root]['videos']} videos, manifest of 10^5: "
                  f"dataset built in {r['build_s']:.1f} s, main process +{r['main']['rss'] - r['main_before']['rss']:.0f}"
                  f" MB RSS; each of {len(ws)} workers after {args.batches} batches: RSS "
                  f"{np.mean([w['rss'] for w in ws]):.0f} MB, private {np.mean([w['private'] for w in ws]):.0f} MB, "
                  f"PSS {np.mean([w['pss'] for w in ws]):.0f} MB", flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
