"""MSR-VTT text-video retrieval: fine-tune a pre-trained model on the 9k training
split, evaluate on 1k-A.

    python pipelines/msrvtt_finetune.py --msrvtt DATA/msrvtt --init-from runs/cbt_howto100m/runs/cbt/model \\
        --out runs/msrvtt

The training split is the usual "9k" (JSFusion / CLIP4Clip): all 10k videos
less the 1,000 1k-A test videos (or exactly MSRVTT_train.9k.csv when it is
there), every sentence of each video. ``--holdout`` of those videos (a seeded
draw) are held out for validation during fine-tuning, which keeps RUN/best/;
the 1k-A test split is evaluated once, at the end, and never picks anything.
Fine-tuning settings (configs/msrvtt_finetune.yaml): model.init_from, the
dual-encoder InfoNCE and the alignment head, no masked objectives. The
features must come from the backbone and weights the pre-trained model saw
(checked). Stages skip themselves when their output exists: manifests
(OUT/data), features (OUT/feats/msrvtt), fine-tuning (OUT/runs/msrvtt),
1k-A retrieval (OUT/results/msrvtt_1ka/), OUT/results.json. docs/recipes.md.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _steps as S  # noqa: E402


def main(argv=None) -> str:
    from videolm.datasets import convert
    from videolm.fileio import read_jsonl

    p = S.arguments(__doc__)
    p.add_argument("--msrvtt", required=True, help="MSR-VTT root: videos/all/, *_videodatainfo.json, "
                                                   "MSRVTT_JSFUSION_test.csv (docs/recipes.md)")
    p.add_argument("--init-from", required=True, help="the pre-trained model directory (RUN/model)")
    p.add_argument("--holdout", type=int, default=500, help="training videos held out for validation")
    p.add_argument("--config", default=os.path.join(S.CONFIGS, "msrvtt_finetune.yaml"))
    args = p.parse_args(argv)
    if args.tiny:
        args.holdout, args.rerank_k = 2, 2
    if args.holdout < 1:   # validation picks the best step; it must not be the test split
        p.error(f"--holdout must be >= 1 (training videos held out for validation), not {args.holdout}")
    S.check_model("--init-from", args.init_from)
    root, data = args.msrvtt, os.path.join(args.out, "data")
    test_csv = os.path.join(root, "MSRVTT_JSFUSION_test.csv")
    train, val, inputs = (os.path.join(data, f"msrvtt_9k_{n}.jsonl") for n in ("train", "val", "inputs"))

    if not S.done(val):
        ids_csv = os.path.join(root, "MSRVTT_train.9k.csv")
        convert.msrvtt_captions([os.path.join(root, f"{n}_videodatainfo.json") for n in ("train_val", "test")], train,
                                exclude=test_csv, ids=ids_csv if os.path.exists(ids_csv) else None,
                                holdout=args.holdout, holdout_out=val)
    if not S.done(inputs):
        wanted = {r["video_id"] for path in (train, val) for r in read_jsonl(path)} | convert.csv_ids(test_csv)
        convert.media_inputs(os.path.join(root, "videos"), inputs, wanted, videos_only=True)
    if args.prepare_only:
        return None
    store = S.extract(args, inputs, os.path.join(args.out, "feats", "msrvtt"))

    model = S.pretrain(args, args.config, os.path.join(args.out, "runs", "msrvtt"), {
        **S.init_overrides(args, args.init_from, store), "data.store": store,
        "data.sources": [S.source("caption", train, store)], "eval.annotations": [val],
        **({"eval.every": 2, "eval.rerank_k": 2} if args.tiny else {})}, finetune=True)

    out = os.path.join(args.out, "results", "msrvtt_1ka")
    report = S.evaluate(args, model, "msrvtt-1ka", store, [test_csv], out)
    S.write_json(os.path.join(args.out, "results.json"), {"model": model, "msrvtt_1ka": S.read_results(out)})
    print(f"MSR-VTT 1k-A: {report}")
    return os.path.join(args.out, "results.json")


if __name__ == "__main__":
    S.run_recipe(main)
