"""COCO 5k and Flickr30k 1k image-text retrieval on the Karpathy splits.

    python pipelines/coco_flickr.py --coco DATA/coco --flickr30k DATA/flickr30k --out runs/coco_flickr \\
        [--init-from runs/cbt_howto100m/runs/cbt/model]

For each data set given: the Karpathy json to an image-caption manifest of
the train split (COCO: train + restval) and the images' extraction lists;
the stills' features (an image is a single-frame clip: one feature); training
with configs/coco_flickr.yaml, fine-tuned from a video-text model
(``--init-from``; features from its backbone and weights) or from a BERT
text side (``--bert``), validated on the Karpathy val split (RUN/best/); then
the test split: ``--protocol coco-5k`` / ``flickr30k-1k``, text->image and
image->text, dual encoder and re-ranked. Stages skip themselves when their
output exists: OUT/data, OUT/feats/NAME, OUT/runs/NAME, OUT/results/NAME/,
OUT/results.json. Data layout: docs/recipes.md.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _steps as S  # noqa: E402

DATASETS = {  # name -> (Karpathy file, protocol, training splits)
    "coco": ("dataset_coco.json", "coco-5k", ("train", "restval")),
    "flickr30k": ("dataset_flickr30k.json", "flickr30k-1k", ("train",)),
}


def run(args, name: str, root: str) -> dict:
    from videolm.datasets import convert

    karpathy, protocol, splits = DATASETS[name]
    karpathy, data = os.path.join(root, karpathy), os.path.join(args.out, "data")
    train, train_inputs, held, held_inputs = (os.path.join(data, f"{name}_{n}.jsonl") for n in
                                              ("train_images", "train_inputs", "valtest_images", "valtest_inputs"))
    if not S.done(held_inputs):
        images = os.path.join(root, "images")
        convert.karpathy_images(karpathy, train, splits, images, train_inputs)
        convert.karpathy_images(karpathy, held, ("val", "test"), images, held_inputs)
    if args.prepare_only:
        return {}
    store = S.extract(args, [train_inputs, held_inputs], os.path.join(args.out, "feats", name))

    start = S.init_overrides(args, args.init_from, store) if args.init_from else {"model.mode": args.mode}
    model = S.pretrain(args, args.config, os.path.join(args.out, "runs", name), {
        **start, "data.store": store, "data.sources": [S.source("image", train, store)],
        "eval.protocol": protocol, "eval.annotations": [karpathy], "eval.split": "val",
        **({"eval.every": 2, "eval.rerank_k": 2} if args.tiny else {})}, finetune=bool(args.init_from))

    out = os.path.join(args.out, "results", name)
    print(f"{protocol}: {S.evaluate(args, model, protocol, store, [karpathy], out)}")
    return {"model": model, protocol: S.read_results(out)}


def main(argv=None) -> str:
    p = S.arguments(__doc__)
    p.add_argument("--coco", help="COCO root: dataset_coco.json, images/{train2014,val2014}/ (docs/recipes.md)")
    p.add_argument("--flickr30k", help="Flickr30k root: dataset_flickr30k.json, images/ (docs/recipes.md)")
    p.add_argument("--init-from", default=None, help="fine-tune this pre-trained model (RUN/model)")
    p.add_argument("--mode", default="cbt", choices=["cbt", "videobert"], help="without --init-from")
    p.add_argument("--config", default=os.path.join(S.CONFIGS, "coco_flickr.yaml"))
    args = p.parse_args(argv)
    if not (args.coco or args.flickr30k):
        p.error("give --coco ROOT, --flickr30k ROOT or both")
    if args.tiny:
        args.rerank_k = 2
    if args.mode == "videobert" and not args.init_from:
        p.error("--mode videobert needs a visual vocabulary: start from a VideoBERT model with --init-from")
    if args.init_from:
        S.check_model("--init-from", args.init_from)
    results = {name: run(args, name, root) for name, root in (("coco", args.coco), ("flickr30k", args.flickr30k))
               if root}
    return None if args.prepare_only else S.write_json(os.path.join(args.out, "results.json"), results)


if __name__ == "__main__":
    S.run_recipe(main)
