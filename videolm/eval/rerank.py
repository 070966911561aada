"""Re-ranking: the top ``k`` candidates of each query (LAVIS's ``k_test``)
re-scored by the model's alignment head in batched joint passes.

The new score of a candidate is the alignment logit alone (``align``, as
ALBEF), the logit plus the dual encoder's logit, its cosine times the learned
contrastive scale 1/τ (``align+dual``: both terms are the log-odds-like
quantities their losses trained, so neither drowns the other), or the logit
plus the raw cosine (``align+cosine``, BLIP in LAVIS, which sums the ITM
logit and the ITC cosine; with a cosine in [-1, 1] the alignment logit
decides nearly alone). In the sums the logit can be weighted
(``--rerank-weight``, e.g. chosen on a validation split). Items outside the top k keep their
dual-encoder order below every re-scored candidate, so R@K for K > k is the
dual encoder's. A query's candidates are its k best by dual score (ties: the
lower gallery index first, as ``argsort`` with a stable sort gives).

Where a gallery item is a group of columns (video->text under ``group-max``,
a video's caption set scored as its best caption), the candidates are each
query's k best *groups*, each re-scored through the caption that gave it
its dual score (``rerank_groups``): k pairs per query, as for single items.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

SCORES = ("align", "align+dual", "align+cosine")


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) gallery indices of each row's k highest scores, best first (stable on ties)."""
    k = min(k, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def rerank(dual: np.ndarray, k: int, score_pairs: Callable[[np.ndarray], np.ndarray],
           how: str = "align", dual_scale: float = 1.0, weight: float = 1.0) -> np.ndarray:
    """(Q, N) re-ranked scores. ``score_pairs((P, 2) [query, item]) -> (P,)`` alignment logits;
    ``dual_scale``: the model's contrastive scale 1/τ (for ``align+dual``); ``weight``: the
    alignment logit's weight in the sums (``align`` alone: any weight > 0 gives the same order)."""
    if how not in SCORES:
        raise ValueError(f"re-rank score must be one of {', '.join(SCORES)}, not {how!r}")
    dual = np.asarray(dual, dtype=np.float32)
    Q, N = dual.shape
    cand = top_k(dual, k)                                            # (Q, k)
    pairs = np.stack([np.repeat(np.arange(Q), cand.shape[1]), cand.ravel()], 1)
    new = weight * np.asarray(score_pairs(pairs), dtype=np.float64).reshape(Q, -1)   # (Q, k)
    if how != "align":
        new = new + (dual_scale if how == "align+dual" else 1.0) * dual[np.arange(Q)[:, None], cand]
    # everything else below every re-scored candidate, in dual order
    out = dual.astype(np.float64)
    shift = out.max(1, keepdims=True) - new.min(1, keepdims=True) + 1.0   # (Q, 1)
    out = out - shift
    out[np.arange(Q)[:, None], cand] = new
    return out


def rerank_groups(dual: np.ndarray, group_of: np.ndarray, num_groups: int, k: int,
                  score_pairs: Callable[[np.ndarray], np.ndarray], how: str = "align", dual_scale: float = 1.0,
                  weight: float = 1.0) -> np.ndarray:
    """(Q, G) re-ranked scores of groups of the (Q, M) ``dual`` columns (column j
    is in group ``group_of[j]``): ``rerank`` of the groups' max scores, a
    group's pair being [query, its best column]; ``score_pairs`` gets
    [query, column] pairs, as for ``rerank`` of the columns."""
    from videolm.eval.metrics import group_argmax

    dual = np.asarray(dual)
    best = group_argmax(dual, group_of, num_groups)                       # (Q, G) the column behind each group
    grouped = np.take_along_axis(dual, best, axis=1)                      # its score: the group's max

    def via_best(pairs: np.ndarray) -> np.ndarray:                        # [query, group] -> [query, column]
        return score_pairs(np.stack([pairs[:, 0], best[pairs[:, 0], pairs[:, 1]]], 1))

    return rerank(grouped, k, via_best, how, dual_scale, weight)
