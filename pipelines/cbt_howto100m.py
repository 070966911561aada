"""CBT (Sun et al., 2019, "Learning Video Representations using Contrastive
Bidirectional Transformer") on HowTo100M-style cooking ASR, evaluated on YouCook2.

    python pipelines/cbt_howto100m.py --howto100m DATA/howto100m --youcook2 DATA/youcook2 \\
        --out runs/cbt_howto100m --bert DATA/bert-base-uncased

The same data and features as pipelines/videobert_howto100m.py (S3D, 1.5 s
clips), kept raw: no visual words. The paper's wiring (configs/cbt_paper_base.yaml):
a BERT-base text stack, a visual stack over the clip features, masked-feature
NCE on the visual stack alone, the masked LM on the text stack alone, and a
cross-modal NCE over every (text, video) pair of the global batch through the
cross-modal layer; `--config configs/cbt_base.yaml` trains CBT's objectives in
one single-stream model instead. Then YouCook2 text-video retrieval on the
validation segments (`--protocol youcook2`). (CBT's masked LM sees no video,
so there is no masked-template zero-shot here.)

Stages (each skips itself when its output exists; a rerun resumes):
data manifests and features (OUT/data, OUT/feats), pre-training
(OUT/runs/cbt), retrieval (OUT/results/youcook2_retrieval/), OUT/results.json.
Its model is a starting point for pipelines/msrvtt_finetune.py and
pipelines/coco_flickr.py (--init-from OUT/runs/cbt/model). docs/recipes.md.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _steps as S  # noqa: E402


def main(argv=None) -> str:
    p = S.cooking_arguments(__doc__)
    p.add_argument("--config", default=os.path.join(S.CONFIGS, "cbt_paper_base.yaml"))
    args = p.parse_args(argv)
    if args.tiny:
        args.rerank_k = 2
    data = S.cooking_data(args)
    if args.prepare_only:
        return None

    model = S.pretrain(args, args.config, os.path.join(args.out, "runs", "cbt"), {
        "model.mode": "cbt", "data.store": data["howto100m_store"],
        "data.sources": [S.source("asr", data["howto100m_asr"], data["howto100m_store"])]})

    out = os.path.join(args.out, "results", "youcook2_retrieval")
    report = S.evaluate(args, model, "youcook2", data["youcook2_store"], [data["youcook2_annotations"]], out)
    S.write_json(os.path.join(args.out, "results.json"), {"model": model, "youcook2_retrieval": S.read_results(out)})
    print(f"YouCook2 retrieval: {report}")
    return os.path.join(args.out, "results.json")


if __name__ == "__main__":
    S.run_recipe(main)
