"""Single-stream vs two-stream at matched depth and matched parameters: the claim behind VideoBERT-style fusion, measured.

    python pipelines/compare_streams.py --store S --vocab V --train caption:train_captions.jsonl \
        --train image:train_images.jsonl --eval test_captions.jsonl --eval test_images.jsonl \
        --attributes attributes.jsonl --out runs/compare_streams

Every architecture trains on the same data, steps and batch, in both modes
(VideoBERT words, CBT features), with ``--seeds`` seeds each:

- ``single``: one joint stack of ``depth`` layers;
- ``two``: text and visual stacks of ``depth - 2`` layers and one cross layer
  (co-attention + own layer: 2 layers deep), so a token passes ``depth``
  layers in both (**matched depth**, against ``single``);
- ``single_wide``: a joint stack with as many layers as ``two`` holds in all
  (``2 * (depth - 2) + 4``): **matched parameters**, against ``two``.

FLOPs are not matched (``single_wide`` spends about twice ``two``'s per
example); the report counts them. The dual-encoder figures of ``two`` come
from its unimodal stacks alone (``depth - 2`` layers each: the cross layers
are what re-ranking reads), as in ViLBERT / LXMERT, so at matched depth its
dual encoder is shallower than ``single``'s: that is part of what the
comparison measures, not an accident of it. VideoBERT mode uses the
quickstart's visual table (initialised from the centroids, frozen). The
spread is the sample standard deviation over seeds (ddof 1); "beyond
spread" (the seeds' ranges do not overlap) is a description, not a test:
with 3 seeds a side, the smallest two-sided permutation p is 0.1.

Each run is evaluated by ``videolm.eval.evaluate`` (every direction the
protocol holds; dual encoder and re-ranked) and, with ``--attributes``,
dual-encoder zero-shot accuracy on each attribute. The report (report.md,
results.json, compare_streams.png) gives parameters, training tokens/s,
FLOPs per training example, R@1/5/10, MdR, MnR as mean +- std over seeds,
and per cell which side won and whether the seeds' ranges overlap. Stages
skip themselves when their output exists.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from videolm.fileio import atomic_savefig, atomic_write_bytes, atomic_write_json

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _steps as S  # noqa: E402

ARCHS = {  # name -> model overrides, from the depth
    "single": lambda d: {"model.arch": "single_stream", "model.num_layers": d},
    "two": lambda d: {"model.arch": "two_stream", "model.text_layers": d - 2, "model.visual_layers": d - 2,
                      "model.cross_layers": 1},
    "single_wide": lambda d: {"model.arch": "single_stream", "model.num_layers": 2 * (d - 2) + 4},
}
SETTINGS = {"matched depth": ("single", "two"), "matched parameters": ("single_wide", "two")}
PRESETS = {  # the shipped setting and the tests' tiny one
    # on the demo set, 300 x 16 at hidden 64 left every arm at chance and 200 x 64 nearly so;
    # hidden 128, depth 3, 300 x 64 learns (one CBT single-stream run: t2v R@1 2.2 %, 5.7x chance, in 71 s)
    "shipped": dict(depth=3, hidden=128, steps=300, batch=64, seeds=3),
    "tiny": dict(depth=3, hidden=16, steps=4, batch=4, seeds=3),
}
FIGURES = ("R@1", "R@5", "R@10", "MdR", "MnR")


def train(args, mode: str, arch: str, seed: int) -> str:
    """One pre-training run; pretrain itself leaves a finished run alone."""
    from videolm.train.config import load_config
    from videolm.train.loop import pretrain

    out = os.path.join(args.out, "runs", f"{mode}_{arch}_s{seed}")
    if os.path.exists(os.path.join(out, "model", "model.safetensors")):
        return os.path.join(out, "model")
    os.makedirs(out, exist_ok=True)
    data = os.path.join(out, "data.yaml")
    atomic_write_bytes(data, ("data:\n  sources:\n" + "".join(f"    - {{kind: {k}, manifest: {m}}}\n"
                                                              for k, m in args.train)).encode())
    values = {"model.mode": mode, "model.hidden_size": args.hidden, "model.num_heads": 2,
              "model.intermediate_size": 2 * args.hidden, "model.embed_dim": args.hidden, "model.dropout": 0.0,
              "model.attention_dropout": 0.0, "data.store": args.store, "data.max_text_len": args.max_text_len,
              "data.max_visual_len": args.max_visual_len, "data.epoch_size": args.epoch_size, "train.out": out,
              "train.steps": args.steps, "train.batch_size": args.batch, "train.lr": 3e-3, "train.seed": seed,
              "train.warmup_steps": max(1, args.steps // 15), "train.log_every": max(1, args.steps // 10),
              "train.save_every": 10 ** 9, **ARCHS[arch](args.depth)}
    if mode == "videobert":   # the quickstart's table: from the centroids, frozen (a learned one stayed at chance)
        values.update({"data.vocab": args.vocab, "model.init_visual_from_centroids": True,
                       "model.freeze_visual_table": True})
    return pretrain(load_config(data, [f"{k}={v}" for k, v in values.items()])).model_dir


def measure(args, mode: str, model_dir: str) -> dict:
    """Parameters, median training tokens/s (metrics.jsonl), FLOPs per training example (one step, counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from videolm.data.corpus import build_pretrain_dataset
    from videolm.model.pretraining import VideoLMForPretraining
    from videolm.text.tokenizer import load_tokenizer
    from videolm.train.config import load_config

    run = os.path.dirname(model_dir)
    with open(os.path.join(run, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if '"tokens_per_s"' in line]
    cfg = load_config(os.path.join(run, "data.yaml"), [f"data.store={args.store}", f"data.epoch_size={args.batch}"]
                      + ([f"data.vocab={args.vocab}"] if mode == "videobert" else []))
    model = VideoLMForPretraining.from_pretrained(model_dir).train()
    dataset = build_pretrain_dataset(cfg.data, mode, load_tokenizer(model_dir), seed=0)
    batch = dataset.collate([dataset[i] for i in range(args.batch)])
    with FlopCounterMode(display=False) as counter:
        model(batch, generator=torch.Generator().manual_seed(0)).loss.backward()
    return {"params": sum(p.numel() for p in model.parameters()), "parts": model.parameter_counts(),
            "tokens_per_s": float(np.median([r["tokens_per_s"] for r in rows[1:] or rows])),
            "flops_per_example": counter.get_total_flops() / args.batch}


def evaluate_run(args, mode: str, model_dir: str) -> dict:
    from videolm.eval.embeddings import Encoder
    from videolm.eval.evaluate import EvalConfig, evaluate
    from videolm.eval.zeroshot import zeroshot_dual
    from videolm.features.store import FeatureStore

    path = os.path.join(os.path.dirname(model_dir), "compare.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    result = {"retrieval": evaluate(model_dir, args.store, EvalConfig(annotations=args.eval, rerank_k=args.rerank_k))
              .table(), **measure(args, mode, model_dir), "zeroshot": {}}
    if args.attributes:
        store = FeatureStore(args.store)
        with open(args.attributes) as f:
            rows = [r for r in map(json.loads, f) if r.get("split", args.split) == args.split and r["id"] in store]
        encoder = Encoder.from_pretrained(model_dir)
        for name in args.attribute:
            labels = {r["id"]: str(r[name]) for r in rows if name in r}
            if labels:
                result["zeroshot"][name] = zeroshot_dual(encoder, store, labels, sorted(set(labels.values()))).top1
    atomic_write_json(path, result)   # a run killed while writing it leaves none, not a truncated one
    return result


def figures(result: dict) -> dict[str, float]:
    """Flat figure name -> value: 't2v dual R@1', ..., 'zeroshot colour', 'params', ..."""
    flat = {f"{d} {row} {k}": m[k] for d, rows in result["retrieval"].items() for row, m in rows.items()
            if row in ("chance", "dual", "reranked") for k in FIGURES}
    flat.update({f"zeroshot {name}": v for name, v in result["zeroshot"].items()})
    flat.update({k: result[k] for k in ("params", "tokens_per_s", "flops_per_example")})
    return flat


def report(args, results: dict, seconds: float) -> str:
    """report.md + results.json + compare_streams.png; returns report.md's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = {(mode, arch): [figures(r) for r in runs] for (mode, arch), runs in results.items()}
    lines = ["# Single- vs two-stream at matched depth and matched parameters\n",
             f"{args.steps} steps x batch {args.batch}, hidden {args.hidden}, depth {args.depth}, "
             f"{args.seeds} seeds per cell; mean +- std over seeds. Wall time {seconds / 60:.1f} min.\n",
             "Higher is better except MdR / MnR. +- is the sample std over seeds (ddof 1). 'beyond spread': the "
             "two arms' seed ranges do not overlap (a description, not a test: with 3 seeds a side the smallest "
             "two-sided permutation p is 0.1). FLOPs are not matched.\n"]
    summary = {}
    for setting, (a, b) in SETTINGS.items():
        for mode in args.modes:
            A, B = cells[(mode, a)], cells[(mode, b)]
            lines += [f"\n## {mode}, {setting}: `{a}` vs `{b}`\n",
                      f"| figure | {a} | {b} | {b} - {a} | winner | beyond spread |", "|---|---|---|---|---|---|"]
            for key in A[0]:
                x, y = np.array([r[key] for r in A]), np.array([r[key] for r in B])
                lower = key.endswith(("MdR", "MnR", "params", "flops_per_example"))
                win = "tie" if x.mean() == y.mean() else (a if (x.mean() < y.mean()) == lower else b)
                beyond = x.max() < y.min() or y.max() < x.min()
                sx, sy = (v.std(ddof=1) if len(v) > 1 else 0.0 for v in (x, y))
                lines.append(f"| {key} | {x.mean():.4g} +- {sx:.2g} | {y.mean():.4g} +- {sy:.2g} | "
                             f"{y.mean() - x.mean():+.4g} | {win} | {'yes' if beyond else 'no'} |")
                summary[f"{mode} / {setting} / {key}"] = {"winner": win, "beyond_spread": bool(beyond),
                                                          a: x.tolist(), b: y.tolist()}
    atomic_write_json(os.path.join(args.out, "results.json"),
                      json.loads(json.dumps({"settings": vars(args) | {"train": args.train}, "seconds": seconds,
                                             "comparison": summary}, default=str)))
    keys = [k for k in cells[(args.modes[0], "single")][0] if k.endswith("R@1") and "chance" not in k]
    fig, axes = plt.subplots(1, len(args.modes), figsize=(5 * len(args.modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], args.modes):
        for i, arch in enumerate(ARCHS):
            vals = np.array([[r[k] for k in keys] for r in cells[(mode, arch)]])  # (seeds, figures)
            ax.bar(np.arange(len(keys)) + 0.27 * (i - 1), vals.mean(0), 0.27,
                   yerr=vals.std(0, ddof=1) if len(vals) > 1 else None, label=arch)
        ax.set_xticks(np.arange(len(keys)), [k.replace(" R@1", "") for k in keys], rotation=60, fontsize=7)
        ax.set_title(f"{mode}: R@1 (mean +- sample std over seeds)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, os.path.join(args.out, "compare_streams.png"), dpi=120)
    lines.append("\n![R@1 per direction](compare_streams.png)\n")
    path = os.path.join(args.out, "report.md")
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


def _source(text: str) -> tuple[str, str]:
    kind, sep, manifest = text.partition(":")
    if not sep or kind not in ("caption", "asr", "image") or not manifest:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KIND:MANIFEST with KIND caption, asr or image")
    return kind, manifest


def main(argv=None) -> str:
    """One line and exit 2 for a user's mistake the library names (a missing
    manifest or vocabulary, a bad store), as the recipes do."""
    return S.run_recipe(lambda: _main(argv), log=False)


def _main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True)
    p.add_argument("--vocab", required=True, help="the visual vocabulary the store's tokens were encoded with")
    p.add_argument("--train", action="append", required=True, type=_source,
                   help="KIND:MANIFEST, a pre-training source (repeat)")
    p.add_argument("--eval", action="append", required=True, help="a caption manifest of the test split (repeat)")
    p.add_argument("--attributes", help="attributes.jsonl (id, split, one column per attribute)")
    p.add_argument("--attribute", action="append", default=None, help="attributes to classify (default colour, shape)")
    p.add_argument("--split", default="test")
    p.add_argument("--out", default="runs/compare_streams")
    p.add_argument("--preset", choices=sorted(PRESETS), default="shipped")
    p.add_argument("--modes", nargs="+", default=["videobert", "cbt"])
    p.add_argument("--rerank-k", type=int, default=10)
    p.add_argument("--max-text-len", type=int, default=24)
    p.add_argument("--max-visual-len", type=int, default=8)
    p.add_argument("--epoch-size", type=int, default=256)
    args = p.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        setattr(args, key, value)
    args.attribute = args.attribute or ["colour", "shape"]
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    results = {(mode, arch): [evaluate_run(args, mode, train(args, mode, arch, seed)) for seed in range(args.seeds)]
               for mode in args.modes for arch in ARCHS}
    path = report(args, results, time.perf_counter() - start)
    print(path)
    return path


if __name__ == "__main__":
    main()
