"""`videolm search`: the store's items ranked for a text, image or video query.

The gallery is every item of the store (or only its videos / images). Its
embeddings and faiss index are computed once and cached under
``CACHE/search-<key>/`` (``embeddings.npz``, ``index.faiss``, ``index.json``),
the key hashing the model, the store and the input settings, so later
queries only embed the query. ``--rerank`` re-scores the top candidates with
the alignment head (text queries).

Query by example (``--image`` / ``--video``) extracts the file's clip
features with the store's own backbone, weights and clip settings (from its
meta.json) into a temporary store, then embeds it with the dual encoder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np

from videolm.eval.embeddings import Embedded, Encoder, EvalError, cache_key, embed
from videolm.eval.index import IndexConfig, SearchIndex, build_index, load_index
from videolm.eval.protocols import Item

log = logging.getLogger(__name__)

GALLERY_KINDS = ("all", "video", "image")


@dataclass
class Hit:
    rank: int
    id: str
    kind: str
    start: float
    end: float
    score: float                   # dual-encoder cosine
    align: float | None = None     # alignment logit, when re-ranked


@dataclass
class Gallery:
    items: list[Item]
    embedded: Embedded             # its model inputs are built only when re-ranking asks for them
    index: SearchIndex
    cache_dir: str | None
    cached: bool

    @property
    def embeddings(self) -> np.ndarray:
        return self.embedded.visual

    @property
    def visual_inputs(self) -> list[np.ndarray]:
        return self.embedded.visual_inputs


def store_items(store, kind: str = "all") -> list[Item]:
    if kind not in GALLERY_KINDS:
        raise EvalError(f"--kind must be one of {', '.join(GALLERY_KINDS)}, not {kind!r}")
    items = []
    for row in store.rows:
        item_kind = "image" if row.get("kind") == "image" else "video"
        if row["num_clips"] > 0 and kind in ("all", item_kind):
            items.append(Item(row["video_id"], row["video_id"], item_kind))
    if not items:
        raise EvalError(f"{store.root}: no {'' if kind == 'all' else kind + ' '}items with features")
    return items


def open_gallery(encoder: Encoder, store, kind: str = "all", index_config: IndexConfig | None = None,
                 cache_root: str | None = None, progress=None) -> Gallery:
    """The store's items with their embeddings and index, from the cache when there."""
    encoder.check_store(store)
    items = store_items(store, kind)
    index_config = (index_config or IndexConfig()).validate()
    cache_dir = None
    if cache_root:
        key = hashlib.sha256((cache_key(encoder, store, items, []) + json.dumps(index_config.__dict__,
                                                                                 sort_keys=True)).encode())
        cache_dir = os.path.join(cache_root, f"search-{key.hexdigest()[:20]}")
    embedded = embed(encoder, store, items, [], cache_dir, progress)
    index = load_index(cache_dir) if cache_dir and embedded.cached else None
    cached = index is not None
    if index is None or index.size != len(items):
        index = build_index(embedded.visual, index_config)
        if cache_dir:
            index.save(cache_dir)
    return Gallery(items, embedded, index, cache_dir, cached and embedded.cached)


def _hits(gallery: Gallery, store, scores: np.ndarray, ids: np.ndarray, align=None) -> list[Hit]:
    out = []
    for rank, (score, i) in enumerate(zip(scores, ids), 1):
        if i < 0:
            continue
        item = gallery.items[int(i)]
        times = store.clip_times(item.media_id)
        out.append(Hit(rank, item.id, item.kind, float(times[0, 0]), float(times[-1, 1]), float(score),
                       None if align is None else float(align[rank - 1])))
    return out


def search_text(encoder: Encoder, gallery: Gallery, store, query: str, k: int = 5, rerank_k: int = 0,
                rerank_score: str = "align") -> list[Hit]:
    if not query or not query.strip():
        raise EvalError("empty query; give some text (or --image PATH / --video PATH)")
    text = encoder.text_inputs([query])
    q = encoder.embed_texts(text)
    depth = max(k, rerank_k)
    scores, ids = gallery.index.search(q, depth)
    scores, ids = scores[0], ids[0]
    if not rerank_k:
        return _hits(gallery, store, scores[:k], ids[:k])
    cand = ids[:rerank_k][ids[:rerank_k] >= 0]
    pairs = np.stack([np.zeros(len(cand), np.int64), cand], 1)
    align = encoder.alignment_scores(text, gallery.visual_inputs, pairs)
    weight = {"align": 0.0, "align+dual": encoder.dual_scale(), "align+cosine": 1.0}[rerank_score]
    new = align + weight * scores[:len(cand)]
    order = np.argsort(-new, kind="stable")
    re_ids = np.concatenate([cand[order], ids[len(cand):]])[:k]
    re_scores = np.concatenate([scores[:len(cand)][order], scores[len(cand):]])[:k]
    re_align = np.concatenate([align[order], np.full(max(0, len(ids) - len(cand)), np.nan)])[:k]
    return [h if not np.isnan(h.align) else Hit(h.rank, h.id, h.kind, h.start, h.end, h.score)
            for h in _hits(gallery, store, re_scores, re_ids, re_align)]


def example_features(path: str, store) -> np.ndarray:
    """(clips, D) features of one image or video, extracted as the store's were."""
    from videolm.features.extract import ExtractConfig, extract
    from videolm.features.inputs import collect_inputs
    from videolm.features.store import FeatureStore

    if not os.path.isfile(path):
        raise EvalError(f"{path}: no such file")
    meta, spec = store.meta, store.meta.get("clip_spec", {})
    if "imported" in meta or "joined" in meta:
        how = "imported (videolm store import)" if "imported" in meta else "joined from several stores"
        raise EvalError(f"{store.root}: its features were {how}, backbone {meta.get('backbone')}; a query by "
                        f"example needs one network videolm can run as the store's was: query by text, or search "
                        f"a store that videolm extract wrote")
    cfg = ExtractConfig(backbone=meta["backbone"], weights=meta.get("weights", "none"),
                        window_s=spec.get("window_s"), stride_s=spec.get("stride_s"), frames=spec.get("frames"),
                        short_side=spec.get("short_side"), crop=spec.get("crop"),
                        drop_short=bool(spec.get("drop_short", False)), dtype=meta.get("dtype", "float16"),
                        temporal=meta.get("temporal", "mean"), workers=0)
    tmp = tempfile.mkdtemp(prefix="videolm-query-")
    try:
        items, _ = collect_inputs([path])
        result = extract(items, os.path.join(tmp, "store"), cfg)
        if not result.ok:
            reason = result.errors[0]["reason"] if result.errors else "no features"
            raise EvalError(f"{path}: cannot extract features ({reason})")
        query_store = FeatureStore(os.path.join(tmp, "store"))
        for what in ("dim", "temporal", "clip_spec"):   # a setting the store records that this could not repeat
            if query_store.meta.get(what) != meta.get(what):
                raise EvalError(f"{path}: its features cannot be extracted as {store.root}'s were ({what} "
                                f"{query_store.meta.get(what)} against the store's {meta.get(what)})")
        return np.asarray(query_store.features(query_store.ids()[0]), dtype=np.float32)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def search_example(encoder: Encoder, gallery: Gallery, store, path: str, k: int = 5) -> list[Hit]:
    feats = example_features(path, store)
    clips = np.arange(len(feats))
    from videolm.eval.embeddings import uniform_clips

    visual = encoder.visual_input(feats[uniform_clips(clips, encoder.settings.max_visual_len)])
    q = encoder.embed_visuals([visual])
    scores, ids = gallery.index.search(q, k)
    return _hits(gallery, store, scores[0], ids[0])
