"""Linear probes of the quickstart's clip features: what each half of the
``--temporal mean+flow`` vector lets a logistic regression read, trained on
the synthetic set's training split and scored on its held-out test split
(colour x shape pairs never seen in training).

    python benchmarks/feature_probe.py demo_out/quickstart

Per caption video: its clips' vectors averaged ("mean") or laid side by side
("sequence"); per half of the vector: appearance (the frames' mean) and motion
(the normal-flow image's vector). Prints accuracy per attribute and chance.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import numpy as np

ATTRIBUTES = ("shape", "colour", "size", "background", "direction", "speed")


def probe(x_train, y_train, x_test, y_test) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scale = StandardScaler().fit(x_train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs may stop at max_iter on the wide sequence inputs
        clf = LogisticRegression(max_iter=300, C=0.1).fit(scale.transform(x_train), y_train)
    return 100.0 * clf.score(scale.transform(x_test), y_test)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("quickstart", help="a finished quickstart directory (demo_out/quickstart)")
    args = p.parse_args(argv)
    from videolm.features.store import FeatureStore

    store_dir = os.path.join(args.quickstart, "features", "mobilenet_v2")
    attributes = os.path.join(args.quickstart, "data", "attributes.jsonl")
    if not os.path.isfile(attributes) or not os.path.isdir(store_dir):
        print(f"error: {args.quickstart}: not a finished quickstart (no data/attributes.jsonl or features)",
              file=sys.stderr)
        return 2
    store = FeatureStore(store_dir)
    with open(attributes) as f:
        rows = [r for r in map(json.loads, f) if r["kind"] == "video" and r["split"] in ("train", "test")]
    clips = {len(store.features(r["id"])) for r in rows}
    if len(clips) != 1:
        print(f"error: {store_dir}: caption videos with different clip counts {sorted(clips)}", file=sys.stderr)
        return 2
    feats = np.stack([np.asarray(store.features(r["id"]), np.float32) for r in rows])  # (N, clips, D)
    half = feats.shape[2] // 2 if store.meta.get("temporal") in ("mean+diff", "mean+flow") else feats.shape[2]
    parts = {"appearance (frames' mean)": feats[:, :, :half]}
    if half < feats.shape[2]:
        parts[f"motion ({store.meta['temporal'].split('+')[1]} image)"] = feats[:, :, half:]
        parts["both"] = feats
    train = np.array([r["split"] == "train" for r in rows])
    print(f"{store_dir}: {train.sum()} training / {(~train).sum()} held-out test videos, {feats.shape[1]} clips "
          f"of {feats.shape[2]} dims ({store.meta.get('temporal', 'mean')})")
    print(f"| features | videos as | {' | '.join(ATTRIBUTES)} |")
    print("|---|---|" + "---|" * len(ATTRIBUTES))
    for name, x in parts.items():
        for how, v in (("mean of clips", x.mean(1)), ("clip sequence", x.reshape(len(x), -1))):
            accs = []
            for attribute in ATTRIBUTES:
                y = np.array([r[attribute] for r in rows])
                accs.append(probe(v[train], y[train], v[~train], y[~train]))
            print(f"| {name} | {how} | " + " | ".join(f"{a:.0f} %" for a in accs) + " |", flush=True)
    chance = [100.0 / len({r[a] for r in rows}) for a in ATTRIBUTES]
    print("| chance | | " + " | ".join(f"{c:.1f} %" for c in chance) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
