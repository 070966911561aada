"""The files of an evaluation: metrics.json, report.md, recall.png, similarity.npz
(and the retrieval examples, examples_t2v.png / examples_t2i.png).

``similarity.npz`` holds, per direction, the query ids, gallery ids, the
ground truth (CSR ``indptr``/``indices``) and every score matrix (dual
encoder, re-ranked, ...), so anyone can recompute every figure with their
own code. Keys: ``{direction}/query_ids``, ``{direction}/gallery_ids``,
``{direction}/gt_indptr``, ``{direction}/gt_indices``, ``{direction}/{row}``.
"""

from __future__ import annotations

import os

import numpy as np

from videolm.eval.metrics import rank_stats, recall_at
from videolm.fileio import atomic_save_npz, atomic_savefig, atomic_write_bytes, atomic_write_json

ROW_LABELS = {"chance": "chance", "dual": "dual encoder", "dual+dsl": "dual encoder + DSL (uses the test queries)",
              "reranked": "re-ranked", "untrained_dual": "untrained, dual encoder",
              "untrained_reranked": "untrained, re-ranked"}


def _fmt(value: float) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown(result) -> str:
    from videolm.eval.evaluate import summary

    s = summary(result)
    c = s["conventions"]
    p = s["protocol"]
    lines = [f"# Retrieval: {p['name']} ({p['split']})", "",
             f"- model: `{s['model']}`", f"- store: `{s['store']}`",
             f"- annotations: {', '.join(f'`{a}`' for a in p['annotations'])}", f"- protocol: {p['note']}"]
    for kind in ("video", "image"):
        if kind in s["counts"]:
            lines.append(f"- {kind}s: {s['counts'][kind]['items']} items, {s['counts'][kind]['captions']} captions")
    if s["counts"]["dropped"]:
        lines.append(f"- **dropped**: {s['counts']['dropped']} of {s['counts']['items_in_protocol']} items had no "
                     "features (--allow-missing); the figures are not comparable with the full protocol")
    rr = c["rerank"]
    lines += [f"- ties: {c['ties']}; video/image->text rule: {c['v2t_rule']}; "
              f"re-rank: {'top %d by %s' % (rr['k'], rr['score']) if rr else 'off'}; "
              f"DSL: {'on, as its own row' if c['dsl'] else 'off'}", ""]
    ks = c["ks"]
    header = "| direction | row | " + " | ".join(f"R@{k}" for k in ks) + " | MdR | MnR | queries | gallery |"
    lines += [header, "|" + "---|" * (len(ks) + 6)]
    for name, rows in s["results"].items():
        for row, m in rows.items():
            cells = [_fmt(m[f"R@{k}"]) for k in ks] + [_fmt(m["MdR"]), _fmt(m["MnR"]), str(m["queries"]),
                                                     str(m["gallery"])]
            lines.append(f"| {name} | {ROW_LABELS.get(row, row)} | " + " | ".join(cells) + " |")
    lines += ["", "R@K in percent; MdR / MnR 1-based; `similarity.npz` holds every score matrix.", ""]
    if result.examples:
        lines += ["## Retrieval examples", ""]
        lines += [f"![{name}]({os.path.basename(png)})" for name, png in result.examples.items()]
        if result.examples_missing:
            lines += ["", f"{len(result.examples_missing)} source(s) could not be read (grey tiles), e.g. "
                          f"`{result.examples_missing[0]}`"]
        lines.append("")
    if s["paired"]:
        lines += ["## Against the dual encoder, query by query", "",
                  "Queries each row gets within the top K that the dual encoder misses (gained) and the other way "
                  "round (lost); p: exact two-sided McNemar test of that split (a small p: the change is unlikely "
                  "to be chance).", "",
                  "| direction | row | K | dual | row's | gained | lost | p |", "|---|---|---|---|---|---|---|---|"]
        for name, rows in s["paired"].items():
            for row, by_k in rows.items():
                for key, c in by_k.items():
                    lines.append(f"| {name} | {ROW_LABELS.get(row, row)} | {key[2:]} | "
                                 f"{_fmt(s['results'][name]['dual'][key])} | {_fmt(s['results'][name][row][key])} | "
                                 f"{c['gained']} | {c['lost']} | {c['p']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def plot_recall(result, path: str, max_k: int = 50) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.directions)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        d = result.directions[name]
        n = len(d.gallery_ids)
        ks = np.unique(np.clip(np.round(np.geomspace(1, min(max_k, n), 24)).astype(int), 1, n))
        chance = d.metrics["chance"]
        from videolm.eval.metrics import chance_metrics

        curve = chance_metrics(d.gt, n, ks).recall
        ax.plot(ks, [curve[int(k)] for k in ks], "k--", label="chance", linewidth=1)
        for row, scores in d.scores.items():
            stats = rank_stats(scores, d.gt)
            ax.plot(ks, [recall_at(stats, int(k), result.config.ties) for k in ks], label=ROW_LABELS.get(row, row))
        ax.set_xscale("log")
        ax.set_ylim(0, 100)
        ax.set_xlabel("K")
        ax.set_ylabel("R@K (%)")
        ax.set_title(f"{name}: {chance.queries} queries, {n} candidates", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)
    return path


def write_report(result, out_dir: str, store=None, examples: int = 0, media_root=None) -> dict[str, str]:
    """The files above; with ``examples`` > 0 (and the open ``store``) also
    examples_{t2v,t2i}.png, that many random text queries each (``videolm.eval.sheet``)."""
    from videolm.eval.evaluate import summary

    os.makedirs(out_dir, exist_ok=True)
    if examples and store is not None:
        from videolm.eval.sheet import write_examples

        result.examples, result.examples_missing = write_examples(result, store, out_dir, examples,
                                                                  media_root=media_root)
    arrays = {}
    for name, d in result.directions.items():
        arrays[f"{name}/query_ids"] = np.array(d.query_ids)
        arrays[f"{name}/gallery_ids"] = np.array(d.gallery_ids)
        arrays[f"{name}/gt_indptr"] = d.gt.indptr
        arrays[f"{name}/gt_indices"] = d.gt.indices
        for row, scores in d.scores.items():
            arrays[f"{name}/{row}"] = np.asarray(scores)  # float32 dual, float64 re-ranked: as scored
    paths = {"metrics": os.path.join(out_dir, "metrics.json"), "report": os.path.join(out_dir, "report.md"),
             "recall": os.path.join(out_dir, "recall.png"), "similarity": os.path.join(out_dir, "similarity.npz")}
    atomic_save_npz(paths["similarity"], **arrays)
    plot_recall(result, paths["recall"])
    atomic_write_bytes(paths["report"], markdown(result).encode())
    atomic_write_json(paths["metrics"], summary(result))
    return {**paths, **{f"examples_{name}": png for name, png in result.examples.items()}}
