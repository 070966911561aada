"""A retrieval sheet (PNG): a few text queries, each with the middle frames of
its top K items, the correct one framed in green, so a person sees what the
model found. Read from an evaluation's ``similarity.npz``."""

from __future__ import annotations


import warnings

import numpy as np

from videolm.fileio import atomic_savefig


def middle_frame_of(store, media_id: str, size: int) -> np.ndarray:
    """(size, size, 3) uint8: the frame at the middle of the item (a still: itself)."""
    from videolm.tokenize.gallery import _decode

    row = store.entry(media_id)
    if row.get("kind") == "image":
        index = 0
    else:
        mid = (row["clip_start"][0] + row["clip_end"][-1]) / 2
        index = min(max(int(mid * row["fps"]), 0), max(int(row.get("num_frames") or 1) - 1, 0))
    return _decode(row, [index], size)[index]


def retrieval_sheet(similarity: str, store, out: str, direction: str = "t2v", row: str = "dual", queries=None,
                    n_queries: int = 6, k: int = 5, size: int = 96, captions: dict[str, str] | None = None,
                    seed: int = 0, title: str | None = None) -> str:
    """Draw ``n_queries`` queries (seeded choice, or the given query indices) of
    one direction with their top ``k``. ``captions``: query id -> its text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with np.load(similarity) as npz:
        scores = npz[f"{direction}/{row}"]
        query_ids = [str(q) for q in npz[f"{direction}/query_ids"]]
        gallery_ids = [str(g) for g in npz[f"{direction}/gallery_ids"]]
        indptr, indices = npz[f"{direction}/gt_indptr"], npz[f"{direction}/gt_indices"]
    if queries is None:
        queries = np.random.default_rng(seed).choice(len(query_ids), size=min(n_queries, len(query_ids)),
                                                     replace=False)
    fig, axes = plt.subplots(len(queries), k, figsize=(1.6 * k, 2.15 * len(queries)), squeeze=False)
    for r, q in enumerate(queries):
        correct = set(indices[indptr[q]:indptr[q + 1]].tolist())
        top = np.argsort(-scores[q], kind="stable")[:k]
        text = (captions or {}).get(query_ids[q], query_ids[q])
        for c, g in enumerate(top):
            ax = axes[r][c]
            media = gallery_ids[g].split("@")[0]
            ax.imshow(middle_frame_of(store, media, size))
            ax.set_xticks([])
            ax.set_yticks([])
            hit = int(g) in correct
            for spine in ax.spines.values():
                spine.set_edgecolor("limegreen" if hit else "lightgrey")
                spine.set_linewidth(4 if hit else 1)
            ax.set_title(f"{c + 1}. {media}" + (" ✓" if hit else ""), fontsize=6, color="green" if hit else "black")
        axes[r][0].text(0, 1.22, f"“{text}”", transform=axes[r][0].transAxes, fontsize=7, va="bottom",
                        fontweight="bold")
    fig.suptitle(title or f"{direction}: top {k} per query ({row}); the correct item framed green", fontsize=9)
    with warnings.catch_warnings():  # tiny thumbnails (tests) leave tight_layout no room; the PNG is still drawn
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout(h_pad=2.6)
    atomic_savefig(fig, out, dpi=110)
    plt.close(fig)
    return out
