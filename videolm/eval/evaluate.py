"""`videolm evaluate`: a protocol's retrieval figures for a saved model, in all
the directions it applies to, with the conventions written beside them.

For each kind of gallery item the protocol holds (videos, images):

- ``t2v`` / ``t2i``: every caption is a query; its item is the one correct answer;
- ``v2t`` / ``i2t``: every item is a query against **all captions**; with
  ``best-caption`` (default; LAVIS / ALBEF / the COCO literature) its rank is
  that of its best-ranked own caption among all captions; with ``group-max``
  (CLIP4Clip / X-Pool) each item's caption set scores as its best caption and
  the N sets are ranked.

Rows per direction: ``chance`` (computed), ``dual`` (cosine of the dual
encoder's embeddings), ``reranked`` (top k re-scored by the alignment head,
when ``rerank_k > 0``), ``dual+dsl`` (only when asked: it uses the whole test
query set), and ``untrained_*`` (the same architecture freshly initialised,
when asked). ``paired`` in metrics.json compares the re-ranked (and DSL) row
with the dual encoder query by query at each R@K: queries gained, queries
lost, and the exact McNemar p-value of that split (a drop of a point or two
on a few hundred queries is often a split of ten against twenty).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from videolm import __version__
from videolm.eval.embeddings import Embedded, Encoder, EvalError, embed
from videolm.eval.metrics import (GroundTruth, Metrics, chance_metrics, dual_softmax, group_max, paired_recall_change,
                                  retrieval_metrics)
from videolm.eval.protocols import Protocol, load_protocol, resolve
from videolm.eval.config import EvalConfig
from videolm.eval.rerank import rerank, rerank_groups

log = logging.getLogger(__name__)

DIRECTIONS = {"video": ("t2v", "v2t"), "image": ("t2i", "i2t")}
PAIRED_ROWS = ("reranked", "dual+dsl")  # rows that re-score the dual encoder: compared with it query by query


@dataclass
class Direction:
    """One direction's score matrices and figures."""

    name: str                          # t2v, v2t, t2i, i2t
    query_ids: list[str]
    gallery_ids: list[str]
    gt: GroundTruth
    scores: dict[str, np.ndarray]      # row name -> (Q, N) score matrix
    metrics: dict[str, Metrics]        # row name -> figures (incl. chance)


@dataclass
class EvalResult:
    protocol: Protocol
    directions: dict[str, Direction]
    dropped: list[str]
    counts: dict
    config: EvalConfig
    model: str
    store: str
    embeddings_cached: bool = False
    examples: dict[str, str] = field(default_factory=dict)   # direction -> retrieval examples PNG (write_report)
    examples_missing: list[str] = field(default_factory=list)  # sources the examples could not read

    def table(self) -> dict:
        return {name: {row: m.as_dict() for row, m in d.metrics.items()} for name, d in self.directions.items()}

    def paired(self) -> dict:
        """Each row that re-scores the dual encoder (re-ranked, DSL) against it, query by query:
        direction -> row -> "R@K" -> gained, lost, queries, exact McNemar p. Empty with ``mean`` ties."""
        if self.config.ties == "mean":
            return {}
        out = {}
        for name, d in self.directions.items():
            base = d.metrics.get("dual")
            if base is None or base.ranks is None:
                continue
            rows = {row: {f"R@{k}": paired_recall_change(base.ranks, m.ranks, k).as_dict() for k in self.config.ks}
                    for row, m in d.metrics.items() if row in PAIRED_ROWS and m.ranks is not None}
            if rows:
                out[name] = rows
        return out


ProgressFactory = Callable[[str, int], Callable[[int], None]]


def _directions_of(kind: str, items, embedded: Embedded, encoder: Encoder, cfg: EvalConfig, prefix: str,
                   progress: ProgressFactory | None) -> dict[str, Direction]:
    t_name, v_name = DIRECTIONS[kind]
    caption_item = np.array([i for i, item in enumerate(items) for _ in item.captions], dtype=np.int64)
    caption_ids = [f"{item.id}#{j}" for item in items for j in range(len(item.captions))]
    item_ids = [item.id for item in items]
    n_items = len(items)
    sim = embedded.text @ embedded.visual.T                               # (C, N) cosine

    t2v_gt = GroundTruth.single(caption_item)
    v2t_gt = t2v_gt.transpose(n_items) if cfg.v2t_rule == "best-caption" else GroundTruth.single(np.arange(n_items))

    def v2t_view(matrix_vt: np.ndarray) -> np.ndarray:
        return group_max(matrix_vt, caption_item, n_items) if cfg.v2t_rule == "group-max" else matrix_vt

    t_scores = {f"{prefix}dual": sim}
    v_scores = {f"{prefix}dual": v2t_view(sim.T)}
    if cfg.dsl and not prefix:
        t_scores["dual+dsl"] = dual_softmax(sim, cfg.dsl_temperature)
        v_scores["dual+dsl"] = v2t_view(dual_softmax(sim.T, cfg.dsl_temperature))
    if cfg.rerank_k:
        texts, visuals = embedded.text_inputs, embedded.visual_inputs
        scored: dict[int, float] = {}  # caption * n_items + item -> logit: both directions share their pairs

        def score(pairs: np.ndarray, what: str) -> np.ndarray:   # pairs: [caption, item]
            keys = pairs[:, 0] * n_items + pairs[:, 1]
            todo = np.unique(keys[[k not in scored for k in keys.tolist()]]) if len(keys) else keys
            bar = progress(f"re-rank {what}", len(todo)) if progress else None
            new = encoder.alignment_scores(texts, visuals, np.stack([todo // n_items, todo % n_items], 1), bar,
                                           cfg.rerank_batch)
            scored.update(zip(todo.tolist(), new.tolist()))
            return np.array([scored[k] for k in keys.tolist()], dtype=np.float32)

        def score_t2v(pairs):   # [caption, item]
            return score(pairs, t_name)

        def score_v2t(pairs):   # [item, caption]
            return score(pairs[:, ::-1], v_name)

        scale = encoder.dual_scale()
        t_scores[f"{prefix}reranked"] = rerank(sim, cfg.rerank_k, score_t2v, cfg.rerank_score, scale,
                                                   cfg.rerank_weight)
        if cfg.v2t_rule == "group-max":   # the top k videos' caption sets, not the top k captions
            v_scores[f"{prefix}reranked"] = rerank_groups(sim.T, caption_item, n_items, cfg.rerank_k, score_v2t,
                                                          cfg.rerank_score, scale, cfg.rerank_weight)
        else:
            v_scores[f"{prefix}reranked"] = rerank(sim.T, cfg.rerank_k, score_v2t, cfg.rerank_score, scale,
                                                   cfg.rerank_weight)

    def figures(scores, gt, n):
        out = {} if prefix else {"chance": chance_metrics(gt, n, cfg.ks)}
        out.update({row: retrieval_metrics(s, gt, cfg.ks, cfg.ties) for row, s in scores.items()})
        return out

    v_gallery = item_ids if cfg.v2t_rule == "group-max" else caption_ids
    return {
        t_name: Direction(t_name, caption_ids, item_ids, t2v_gt, t_scores, figures(t_scores, t2v_gt, n_items)),
        v_name: Direction(v_name, item_ids, v_gallery, v2t_gt, v_scores,
                          figures(v_scores, v2t_gt, len(v_gallery))),
    }


def evaluate_encoder(encoder: Encoder, protocol: Protocol, store, cfg: EvalConfig, cache_dir: str | None = None,
                     progress: ProgressFactory | None = None, untrained: Encoder | None = None) -> EvalResult:
    """Every direction of the protocol for one (already loaded) model."""
    cfg.validate()
    encoder.check_store(store)
    resolved = resolve(protocol, store, cfg.allow_missing)
    directions: dict[str, Direction] = {}
    counts = {"items_in_protocol": len(protocol.items), "dropped": len(resolved.dropped)}
    cached = True
    for kind in ("video", "image"):
        items = [i for i in resolved.items if i.kind == kind]
        if not items:
            continue
        texts = [c for item in items for c in item.captions]
        counts[kind] = {"items": len(items), "captions": len(texts)}
        embedded = embed(encoder, store, items, texts, cache_dir, progress)
        cached &= embedded.cached
        found = _directions_of(kind, items, embedded, encoder, cfg, "", progress)
        if untrained is not None:
            floor = embed(untrained, store, items, texts, cache_dir, progress)
            for name, d in _directions_of(kind, items, floor, untrained, cfg, "untrained_", progress).items():
                found[name].scores.update(d.scores)
                found[name].metrics.update(d.metrics)
        directions.update(found)
    return EvalResult(protocol, directions, resolved.dropped, counts, cfg, encoder.name, store.root, cached)


def evaluate(model_dir: str, store_dir: "str | FeatureStore", cfg: EvalConfig, out_dir: str | None = None,
             cache_dir: str | None = None, progress: ProgressFactory | None = None,
             protocol: Protocol | None = None, examples: int = 6, media_root=None) -> EvalResult:
    """Load, check, evaluate, and (with ``out_dir``) write the report. ``protocol``:
    cfg's protocol already loaded (the CLI loads it before torch, to report a bad
    annotation file at once), so that its files are not parsed twice; ``store_dir``
    may be an open ``FeatureStore`` for the same reason. ``examples``: random
    text queries per retrieval examples PNG (0: none), their frames read from
    the sources found through ``media_root`` (``videolm.features.media_root``)."""
    from videolm.eval.report import write_report
    from videolm.features.store import FeatureStore, StoreError

    cfg.validate()
    if protocol is None:
        protocol = load_protocol(cfg.protocol, cfg.annotations, cfg.split)
    try:
        store = store_dir if isinstance(store_dir, FeatureStore) else FeatureStore(store_dir)
    except StoreError as err:
        raise EvalError(str(err)) from None
    encoder = Encoder.from_pretrained(model_dir, cfg.device, batch_size=cfg.batch_size)
    untrained = (Encoder.from_pretrained(model_dir, cfg.device, untrained_seed=cfg.seed, batch_size=cfg.batch_size)
                 if cfg.untrained else None)
    result = evaluate_encoder(encoder, protocol, store, cfg, cache_dir, progress, untrained)
    if out_dir:
        write_report(result, out_dir, store, examples, media_root)
    return result


def summary(result: EvalResult) -> dict:
    """metrics.json's content."""
    p = result.protocol
    return {
        "videolm_version": __version__, "model": result.model, "store": result.store,
        "protocol": {"name": p.name, "split": p.split, "annotations": p.annotations, "note": p.note},
        "counts": result.counts, "dropped_ids": result.dropped[:50],
        "conventions": result.config.conventions(), "config": asdict(result.config),
        "results": result.table(), "paired": result.paired(),
    }
