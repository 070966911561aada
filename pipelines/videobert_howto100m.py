"""VideoBERT (Sun et al., 2019) on HowTo100M-style cooking ASR, evaluated on YouCook2.

    python pipelines/videobert_howto100m.py --howto100m DATA/howto100m --youcook2 DATA/youcook2 \\
        --out runs/videobert_howto100m --bert DATA/bert-base-uncased

The paper's settings (configs/videobert_base.yaml): S3D clip features of 1.5 s
windows (the `videobert` extraction preset), hierarchical k-means visual words
k=12, depth 4 (20,736 words), BERT-base initialised from BERT, ASR segments
concatenated to a random length, random temporal subsampling of the words.
Then YouCook2 zero-shot verb / noun classification by the masked template
"now let me show you how to [MASK] the [MASK]" (the masked-LM head fills both
slots given the segment's visual words; candidates from configs/data/youcook2_{verbs,nouns}.txt)
and YouCook2 text-video retrieval on the validation segments (`--protocol youcook2`).

Stages (each skips itself when its output exists; a rerun resumes):
data manifests and features (OUT/data, OUT/feats), vocabulary (OUT/vocab),
visual words, pre-training (OUT/runs/videobert), zero-shot
(OUT/results/youcook2_zeroshot.json), retrieval (OUT/results/youcook2_retrieval/),
OUT/results.json. Data layout and multi-GPU commands: docs/recipes.md.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _steps as S  # noqa: E402

TEMPLATE = "now let me show you how to [MASK] the [MASK]"


def zeroshot(args, model: str, store: str, truth_path: str, out: str) -> dict:
    """Top-1 / top-5 per slot (verb, noun) over the YouCook2 validation segments."""
    from videolm.eval.embeddings import Encoder
    from videolm.eval.zeroshot import zeroshot_masked
    from videolm.features.store import FeatureStore
    from videolm.fileio import read_jsonl

    if not S.done(out):
        rows = read_jsonl(truth_path)
        truth = {r["id"]: r["words"] for r in rows}
        spans = {r["id"]: (r["video_id"], r["start"], r["end"]) for r in rows}
        result = zeroshot_masked(Encoder.from_pretrained(model, args.device), FeatureStore(store), TEMPLATE, truth,
                                 S.youcook2_word_lists(), spans)
        S.write_json(out, {"model": model, "template": TEMPLATE, "segments": len(rows),
                                "slots": dict(zip(("verb", "noun"), result.slots))})
    with open(out) as f:
        return json.load(f)


def main(argv=None) -> str:
    p = S.cooking_arguments(__doc__)
    p.add_argument("--config", default=os.path.join(S.CONFIGS, "videobert_base.yaml"))
    p.add_argument("--k", type=int, default=12, help="visual words: branching factor")
    p.add_argument("--depth", type=int, default=4, help="visual words: levels (k ** depth words)")
    p.add_argument("--spherical", action="store_true",
                   help="visual words by cosine k-means (the paper's is Euclidean; the quickstart's features "
                        "gave VideoBERT mode much better words this way: docs/tokenizer.md)")
    args = p.parse_args(argv)
    if args.tiny:
        args.k, args.depth, args.rerank_k = 2, 2, 2
    data = S.cooking_data(args)
    if args.prepare_only:
        return None

    vocab = os.path.join(args.out, "vocab")
    if not S.done(os.path.join(vocab, "meta.json")):
        S.cli("tokenize", "fit", data["howto100m_store"], "-o", vocab, "--k", args.k, "--depth", args.depth,
              *(["--spherical"] if args.spherical else []), "-q")
    S.encode(data["howto100m_store"], vocab)

    model = S.pretrain(args, args.config, os.path.join(args.out, "runs", "videobert"), {
        "model.mode": "videobert", "data.store": data["howto100m_store"], "data.vocab": vocab,
        "data.sources": [S.source("asr", data["howto100m_asr"], data["howto100m_store"])]})

    results = os.path.join(args.out, "results")
    zs = zeroshot(args, model, data["youcook2_store"], data["youcook2_zeroshot"],
                  os.path.join(results, "youcook2_zeroshot.json"))
    out = os.path.join(results, "youcook2_retrieval")
    report = S.evaluate(args, model, "youcook2", data["youcook2_store"], [data["youcook2_annotations"]], out)
    S.write_json(os.path.join(args.out, "results.json"),
                 {"model": model, "youcook2_zeroshot": zs["slots"], "youcook2_retrieval": S.read_results(out)})
    for slot, r in zs["slots"].items():
        print(f"YouCook2 zero-shot {slot}: top-1 {r['top1']:.1f} %, top-5 {r['top5']:.1f} % "
              f"(chance {r['chance_top1']:.1f} / {r['chance_top5']:.1f} %)")
    print(f"YouCook2 retrieval: {report}")
    return os.path.join(args.out, "results.json")


if __name__ == "__main__":
    S.run_recipe(main)
