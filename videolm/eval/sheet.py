"""Retrieval examples (PNG): a few text queries, each with the middle frames of
its top K items, the correct one framed in green, so a person sees what the
model found. ``write_examples`` draws them from an evaluation's result
(`videolm evaluate --out`: OUT/examples_t2v.png, examples_t2i.png);
``retrieval_sheet`` from a written ``similarity.npz`` (the quickstart)."""

from __future__ import annotations

import os
import warnings

import numpy as np

from videolm.features.media_root import MediaRoot, NoSource
from videolm.fileio import atomic_savefig

TEXT_DIRECTIONS = ("t2v", "t2i")   # text queries: the directions a sheet shows


def middle_frame_of(store, media_id: str, size: int, media_root: MediaRoot | None = None,
                    span: tuple[float, float] | None = None) -> np.ndarray:
    """(size, size, 3) uint8: the frame at the middle of the item (a timed
    segment: of its span; a still: itself), read from its source found
    through ``media_root``. Raises DecodeError when the source cannot be
    read, NoSource when an imported store records none."""
    from videolm.tokenize.gallery import _decode, source_row

    row = source_row(store.entry(media_id), media_root or MediaRoot())
    if row.get("kind") == "image":
        index = 0
    else:
        mid = (span[0] + span[1]) / 2 if span is not None else (row["clip_start"][0] + row["clip_end"][-1]) / 2
        index = min(max(int(mid * row["fps"]), 0), max(int(row.get("num_frames") or 1) - 1, 0))
    return _decode(row, [index], size)[index]


def _frame_or_missing(store, media_id: str, size: int, media_root: MediaRoot | None,
                      span: tuple[float, float] | None, missing: list[str]) -> np.ndarray | None:
    """``middle_frame_of``, or None (a grey tile) with the source's path added
    to ``missing`` once when it cannot be read."""
    from videolm.video.decode import DecodeError

    try:
        return middle_frame_of(store, media_id, size, media_root, span)
    except (DecodeError, OSError, NoSource):
        path = (media_root or MediaRoot()).shown(store.entry(media_id))
        if path not in missing:
            missing.append(path)
        return None


def _draw(queries: list[tuple[str, list[tuple[np.ndarray | None, str, bool]]]], k: int, title: str,
          out: str, size: int, numbered: bool = True) -> str:
    """One row per query: its text above, then (frame, label, correct) tiles,
    each label after its place in the row unless ``numbered`` is False; a
    frame of None is a grey tile (a source that could not be read)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = max(len(tiles) for _, tiles in queries)    # a gallery smaller than k: as many columns as it has items
    fig, axes = plt.subplots(len(queries), k, figsize=(1.6 * max(k, 4), 2.15 * len(queries)), squeeze=False)
    for r, (text, tiles) in enumerate(queries):
        for c in range(k):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(tiles):
                ax.axis("off")
                continue
            frame, label, hit = tiles[c]
            if frame is None:
                ax.imshow(np.full((size, size, 3), 200, np.uint8))
                ax.text(0.5, 0.5, "source\nnot found", transform=ax.transAxes, ha="center", va="center", fontsize=6)
            else:
                ax.imshow(frame)
            for spine in ax.spines.values():
                spine.set_edgecolor("limegreen" if hit else "lightgrey")
                spine.set_linewidth(4 if hit else 1)
            ax.set_title((f"{c + 1}. " if numbered else "") + label + (" ✓" if hit else ""), fontsize=6, color="green" if hit else "black")
        if not text:   # a continued row (search's hits past the first row)
            continue
        query = axes[r][0].text(0, 1.22, text, transform=axes[r][0].transAxes, fontsize=7, va="bottom",
                                fontweight="bold")
        query.set_in_layout(False)   # a caption wider than its row's first tile must not shrink the tiles
    fig.suptitle(title, fontsize=9)
    with warnings.catch_warnings():  # tiny thumbnails (tests) leave tight_layout no room; the PNG is still drawn
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout(h_pad=5.0, rect=(0, 0, 1, 1 - 0.45 / (2.15 * len(queries))))  # room for the first query
    atomic_savefig(fig, out, dpi=110)
    plt.close(fig)
    return out


def _chosen(n_queries: int, total: int, seed: int, queries=None) -> np.ndarray:
    if queries is not None:
        return np.asarray(queries)
    return np.random.default_rng(seed).choice(total, size=min(n_queries, total), replace=False)


def retrieval_sheet(similarity: str, store, out: str, direction: str = "t2v", row: str = "dual", queries=None,
                    n_queries: int = 6, k: int = 5, size: int = 96, captions: dict[str, str] | None = None,
                    seed: int = 0, title: str | None = None) -> str:
    """Draw ``n_queries`` queries (seeded choice, or the given query indices) of
    one direction with their top ``k``, from a written similarity.npz whose
    gallery ids are store ids (optionally ``id@start-end``). ``captions``:
    query id -> its text."""
    with np.load(similarity) as npz:
        scores = npz[f"{direction}/{row}"]
        k = min(k, scores.shape[1])
        query_ids = [str(q) for q in npz[f"{direction}/query_ids"]]
        gallery_ids = [str(g) for g in npz[f"{direction}/gallery_ids"]]
        indptr, indices = npz[f"{direction}/gt_indptr"], npz[f"{direction}/gt_indices"]
    drawn = []
    for q in _chosen(n_queries, len(query_ids), seed, queries):
        correct = set(indices[indptr[q]:indptr[q + 1]].tolist())
        top = np.argsort(-scores[q], kind="stable")[:k]
        tiles = [(middle_frame_of(store, gallery_ids[g].split("@")[0], size), gallery_ids[g].split("@")[0],
                  int(g) in correct) for g in top]
        drawn.append((f"“{(captions or {}).get(query_ids[q], query_ids[q])}”", tiles))
    return _draw(drawn, k, title or f"{direction}: top {k} per query ({row}); the correct item framed green",
                 out, size)


def examples_sheet(direction, items: dict, store, out: str, row: str, n_queries: int = 6, k: int = 5,
                   size: int = 96, media_root: MediaRoot | None = None, seed: int = 0,
                   title: str | None = None) -> tuple[str, list[str]]:
    """One text->item direction of an evaluation (``videolm.eval.evaluate.Direction``)
    drawn from its ``row`` scores: ``n_queries`` seeded queries, their captions,
    and the middle frames of their top ``k`` items (``items``: item id ->
    protocol Item). Returns the PNG and the source paths that could not be
    read (grey tiles)."""
    scores = np.asarray(direction.scores[row])
    k = min(k, scores.shape[1])   # a gallery smaller than k: its title says what is drawn
    frames: dict[str, np.ndarray | None] = {}
    missing: list[str] = []
    drawn = []
    for q in _chosen(n_queries, len(direction.query_ids), seed):
        item_id, _, j = direction.query_ids[q].rpartition("#")
        text = items[item_id].captions[int(j)] if item_id in items else direction.query_ids[q]
        correct = set(direction.gt.indices[direction.gt.indptr[q]:direction.gt.indptr[q + 1]].tolist())
        tiles = []
        for g in np.argsort(-scores[q], kind="stable")[:k]:
            item = items[direction.gallery_ids[g]]
            if item.id not in frames:
                frames[item.id] = _frame_or_missing(store, item.media_id, size, media_root, item.span, missing)
            tiles.append((frames[item.id], item.id, int(g) in correct))
        drawn.append((f"“{text}”", tiles))
    label = "re-ranked" if row.endswith("reranked") else "dual encoder"
    title = title or (f"{direction.name}: {len(drawn)} random queries, top {k} ({label}); the correct item "
                      f"framed green")
    return _draw(drawn, k, title, out, size), missing


def write_examples(result, store, out_dir: str, n_queries: int = 6, k: int = 5,
                   media_root: MediaRoot | None = None, seed: int = 0) -> tuple[dict[str, str], list[str]]:
    """OUT/examples_{t2v,t2i}.png for each text->item direction the evaluation
    has, from its re-ranked scores where it has them (else the dual encoder's).
    Returns direction -> PNG, and the sources that could not be read."""
    items = {item.id: item for item in result.protocol.items}
    pngs, missing = {}, []
    for name in TEXT_DIRECTIONS:
        d = result.directions.get(name)
        if d is None or not d.query_ids:
            continue
        row = "reranked" if "reranked" in d.scores else "dual"
        pngs[name], lost = examples_sheet(d, items, store, os.path.join(out_dir, f"examples_{name}.png"), row,
                                          n_queries, k, media_root=media_root, seed=seed)
        missing += [p for p in lost if p not in missing]
    return pngs, missing


def search_sheet(hits, store, query: str, out: str, size: int = 96, per_row: int = 5,
                 media_root: MediaRoot | None = None) -> tuple[str, list[str]]:
    """`videolm search --png`: the hits in rank order, ``per_row`` to a row,
    each the middle frame of its clips' span, labelled with rank, id and
    score. Returns the PNG and the sources that could not be read."""
    tiles, missing = [], []
    for h in hits:
        frame = _frame_or_missing(store, h.id, size, media_root, (h.start, h.end), missing)
        score = f"{h.score:.3f}" + (f", align {h.align:.2f}" if h.align is not None else "")
        tiles.append((frame, f"{h.rank}. {h.id}\n{score}", False))
    rows = [(query if i == 0 else "", tiles[i:i + per_row]) for i in range(0, len(tiles), per_row)]
    title = f"search: top {len(hits)} of {os.path.basename(os.path.normpath(store.root))}"
    return _draw(rows, per_row, title, out, size, numbered=False), missing
