"""The quickstart's report: RESULTS/report.md, results.json and PNGs, from the
stages' outputs (evaluation metrics.json and similarity.npz, metrics.jsonl of
each run, the zero-shot figures). The goals of the demo are checked here,
against the figures measured, whichever way they fall."""

from __future__ import annotations

import json
import os

from videolm.demo import SECONDS_FILE
from videolm.fileio import atomic_write_bytes, atomic_write_json

GOAL_BEST, GOAL_OTHER, GOAL_EVERY = 50.0, 10.0, 10.0  # x chance R@1


def _rows(mode: str, metrics: dict) -> list[dict]:
    out = []
    for direction, rows in metrics["results"].items():
        for row, m in rows.items():
            if row == "chance":
                model, rerank = "chance", False
            elif row.startswith("untrained_"):
                model, rerank = f"untrained ({mode})", row.endswith("reranked")
            elif row in ("dual", "reranked"):
                model, rerank = mode, row == "reranked"
            else:
                continue
            out.append({"model": model, "rerank": rerank, "direction": direction, "R1": m["R@1"], "R5": m["R@5"],
                        "R10": m["R@10"], "MdR": m["MdR"], "MnR": m["MnR"], "n_queries": m["queries"],
                        "n_gallery": m["gallery"]})
    return out


def _split(c: dict | None) -> str:
    """' (g queries gained, l lost of Q; exact McNemar p = P)' for one re-ranked R@1 split, or ''."""
    if not c:
        return ""
    return f" ({c['gained']} queries gained, {c['lost']} lost of {c['queries']}; exact McNemar p = {c['p']:.2f})"


def _png_sheet(q, mode: str, eval_dir: str, store: str, data: dict) -> str:
    from videolm.eval.sheet import retrieval_sheet
    from videolm.features.store import FeatureStore

    captions = {}
    with open(data["manifests"]["test_captions"]) as f:
        for line in f:
            row = json.loads(line)
            for j, c in enumerate(row["captions"]):
                captions[f"{row['video_id']}#{j}"] = c if isinstance(c, str) else c["text"]
    out = os.path.join(q.results, f"retrieval_{mode}.png")
    return retrieval_sheet(os.path.join(eval_dir, "similarity.npz"), FeatureStore(store), out, "t2v", "dual",
                           n_queries=6, k=5, captions=captions,
                           title=f"{mode}: held-out text queries, top 5 test videos (dual encoder); correct framed green")


def _time_goal(stages: float, sanity: str | None) -> dict:
    """make demo's time after set-up: the quickstart's stages (a skipped
    stage counts the seconds of the run that made it) plus the sanity set's
    recorded seconds, measured by python -m videolm.demo on its fresh run."""
    goal = "make demo under 10 minutes after set-up (2 cores)"
    recorded = None
    if sanity is not None:
        try:
            with open(os.path.join(sanity, SECONDS_FILE)) as f:
                recorded = float(json.load(f)["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            recorded = None
    if recorded is None:
        where = "--sanity not given" if sanity is None else f"no {os.path.join(sanity, SECONDS_FILE)}"
        return {"goal": goal, "met": stages < 600,
                "measured": f"{stages:.0f} s in the quickstart's stages; the sanity set not counted ({where})"}
    total = stages + recorded
    return {"goal": goal, "met": total < 600,
            "measured": f"{total:.0f} s: {stages:.0f} s in the quickstart's stages + {recorded:.0f} s the sanity set"}


def write_report(q, data, store, vocab, runs, results, zeroshot, extra) -> str:
    from videolm.quickstart import LABELS, MODES, copy

    os.makedirs(q.results, exist_ok=True)
    metrics = {}
    for mode in MODES:
        with open(os.path.join(results[mode], "metrics.json")) as f:
            metrics[mode] = json.load(f)
    rows, seen = [], set()
    for mode in MODES:
        for r in _rows(mode, metrics[mode]):
            key = (r["model"], r["rerank"], r["direction"])
            if r["model"] == "chance" and key in seen:
                continue
            seen.add(key)
            rows.append(r)
    chance = {r["direction"]: r["R1"] for r in rows if r["model"] == "chance"}
    for r in rows:
        r["x_chance_R1"] = round(r["R1"] / chance[r["direction"]], 2) if chance[r["direction"]] else None

    # the goals
    def r1(model, direction, rerank=False):
        return next(r["R1"] for r in rows if r["model"] == model and r["direction"] == direction
                    and r["rerank"] == rerank)

    t2v = {mode: r1(mode, "t2v") / chance["t2v"] for mode in MODES}
    best, other = max(MODES, key=t2v.get), min(MODES, key=t2v.get)
    every = {(mode, d, rr): r1(mode, d, rr) / chance[d] for mode in MODES for d in chance for rr in (False, True)}
    # each mode's re-ranked R@1 against its dual encoder, query by query (metrics.json's paired block)
    rerank_paired = {mode: {d: v["reranked"]["R@1"] for d, v in metrics[mode].get("paired", {}).items()
                            if "reranked" in v} for mode in MODES}
    rerank_drops = [(mode, d, r1(mode, d), r1(mode, d, True)) for mode in MODES for d in chance
                    if r1(mode, d, True) < r1(mode, d)]
    # above chance as a test, not a point estimate: one-sided exact binomial, P(at least these hits | chance)
    zs_p = {(mode, key): _above_chance_p(v) for mode in MODES for key, v in zeroshot[mode].items()}
    below = [(mode, key, v) for mode in MODES for key, v in zeroshot[mode].items() if not zs_p[(mode, key)] < 0.05]
    demo_seconds = sum(v for k, v in q.times.items() if k != "compare_streams")  # an optional stage
    goals = [
        {"goal": f"better mode ({best}) >= {GOAL_BEST:.0f}x chance R@1 on held-out text->video",
         "measured": f"{t2v[best]:.1f}x", "met": t2v[best] >= GOAL_BEST},
        {"goal": f"other mode ({other}) >= {GOAL_OTHER:.0f}x", "measured": f"{t2v[other]:.1f}x",
         "met": t2v[other] >= GOAL_OTHER},
        {"goal": f"every direction of both modes >= {GOAL_EVERY:.0f}x chance (dual and re-ranked)",
         "measured": f"lowest {min(every.values()):.1f}x ({min(every, key=every.get)})",
         "met": min(every.values()) >= GOAL_EVERY},
        {"goal": "re-ranking never lowers R@1", "measured": "; ".join(
            f"{m} {d}: {a:.1f} -> {b:.1f}{_split(rerank_paired[m].get(d))}" for m, d, a, b in rerank_drops) or "never lower",
         "met": not rerank_drops},
        {"goal": "zero-shot above chance for every attribute (one-sided binomial p < 0.05)", "measured": "; ".join(
            f"{m} {k}: {v['top1']:.1f} % (chance {v['chance']:.1f} %, p = {zs_p[(m, k)]:.2f})" for m, k, v in below)
         or f"all above (largest p {max(zs_p.values(), default=float('nan')):.3f})",
         "met": not below},
        _time_goal(demo_seconds, q.sanity),
    ]

    # PNGs
    pngs = {"words": os.path.join(q.results, "words.png")}
    if not os.path.isfile(pngs["words"]):  # a rerun into another RESULTS: the words stage was skipped
        q.draw_words(store, vocab, ok=(0, 1))
    for mode in MODES:
        pngs[f"loss_{mode}"] = copy(os.path.join(runs[mode], "loss.png"), os.path.join(q.results, f"loss_{mode}.png"))
        pngs[f"recall_{mode}"] = copy(os.path.join(results[mode], "recall.png"),
                                      os.path.join(q.results, f"recall_{mode}.png"))
        pngs[f"retrieval_{mode}"] = _png_sheet(q, mode, results[mode], store, data)

    headline = [f"{LABELS[mode]}: text->video R@1 {r1(mode, 't2v'):.1f} % ({t2v[mode]:.0f}x chance "
                f"{chance['t2v']:.2f} %), re-ranked {r1(mode, 't2v', True):.1f} %" for mode in MODES]
    headline += [f"goal {'met' if g['met'] else 'NOT met'}: {g['goal']} ({g['measured']})" for g in goals]
    summary = {
        "rows": rows, "chance_R1": chance, "zeroshot": zeroshot, "goals": goals, "headline": headline,
        "seconds": {k: round(v, 1) for k, v in q.times.items()}, "cores": os.cpu_count(),
        "conventions": metrics[MODES[0]]["conventions"], "pngs": pngs,
        "counts": metrics[MODES[0]]["counts"], "tiny": q.tiny,
        "rerank_paired": rerank_paired,
    }
    atomic_write_json(os.path.join(q.results, "results.json"), summary)

    lines = ["# Quickstart: what the toolkit learned", "",
             "The embedded synthetic set (videolm.datasets.synthetic): test videos and stills show colour x "
             "shape pairs that never occur in training. Every figure below is measured on that test split by "
             "`videolm evaluate` (ties pessimistic, text->item queries are every caption, item->text is the best "
             "own caption among all captions, re-ranking re-scores each query's top "
             f"{metrics[MODES[0]]['conventions']['rerank']['k']} by "
             f"`{metrics[MODES[0]]['conventions']['rerank']['score']}`).", "",
             f"Machine: {os.cpu_count()} cores. Counts: {json.dumps(summary['counts'])}.", "", "## Goals", "",
             "| goal | measured | met |", "|---|---|---|"]
    lines += [f"| {g['goal']} | {g['measured']} | {'yes' if g['met'] else '**no**'} |" for g in goals]
    lines += ["", "## Retrieval (R@K in %, MdR / MnR 1-based)", "",
              "| model | re-ranked | direction | R@1 | x chance | R@5 | R@10 | MdR | MnR | queries | gallery |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {"chance": 0}
    for r in sorted(rows, key=lambda r: (r["direction"], order.get(r["model"], 1 if "untrained" in r["model"] else 2),
                                         r["model"], r["rerank"])):
        lines.append(f"| {r['model']} | {'yes' if r['rerank'] else 'no'} | {r['direction']} | {r['R1']:.2f} | "
                     f"{r['x_chance_R1']} | {r['R5']:.2f} | {r['R10']:.2f} | {r['MdR']:.1f} | {r['MnR']:.2f} | "
                     f"{r['n_queries']} | {r['n_gallery']} |")
    if any(summary["rerank_paired"].values()):
        lines += ["", "## Re-ranking against the dual encoder, query by query (R@1)", "",
                  "Queries the re-ranker puts first that the dual encoder did not (gained), and the other way round "
                  "(lost); p: exact two-sided McNemar test of that split, the chance of one at least this uneven if "
                  "re-ranking changed nothing.", "",
                  "| mode | direction | dual | re-ranked | gained | lost | p |", "|---|---|---|---|---|---|---|"]
        for mode in MODES:
            for d, c in summary["rerank_paired"][mode].items():
                lines.append(f"| {mode} | {d} | {r1(mode, d):.2f} | {r1(mode, d, True):.2f} | {c['gained']} | "
                             f"{c['lost']} | {c['p']:.3f} |")
    lines += ["", "## Zero-shot attributes (masked template, test split)", "",
              "The item's full caption with one attribute word replaced by [MASK]; the masked-LM head predicts it "
              "from the video (or still), among that attribute's values.", "",
              "| attribute | " + " | ".join(LABELS[m] for m in MODES) + " | chance |", "|---|---|---|---|"]
    for key in zeroshot[MODES[0]]:
        lines.append(f"| {key} | " + " | ".join(f"{zeroshot[m][key]['top1']:.1f} %" for m in MODES)
                     + f" | {zeroshot[MODES[0]][key]['chance']:.1f} % |")
    lines += ["", "## Time per stage (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in q.times.items()]
    if extra:
        lines += ["", "## Single stream vs two streams (pipelines/compare_streams.py)", ""]
        with open(extra) as f:
            body = f.read().split("\n", 1)[-1]          # its own report, less its title
        lines += [body.replace("\n# ", "\n### ").replace("\n## ", "\n### ")]
    lines += ["", "## Pictures", ""]
    lines += [f"- `{os.path.basename(p)}`" for p in pngs.values()]
    lines.append("")
    path = os.path.join(q.results, "report.md")
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


def _above_chance_p(v: dict) -> float:
    """One-sided exact binomial p of a zero-shot top-1 (``top1`` %, over
    ``n`` items) against its chance (``chance`` %): the probability that a
    guesser at chance gets at least as many right. Items are treated as
    independent (one prediction per video or image)."""
    from scipy.stats import binom

    n = int(v.get("n") or 0)
    if n == 0:
        return float("nan")
    hits = int(round(v["top1"] / 100.0 * n))
    return float(binom.sf(hits - 1, n, v["chance"] / 100.0))

