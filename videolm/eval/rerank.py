"""Re-ranking: the top ``k`` candidates of each query (LAVIS's ``k_test``)
re-scored by the model's alignment head in batched joint passes.

The new score of a candidate is the alignment logit alone (``align``, as
ALBEF) or the logit plus the dual-encoder cosine (``align+dual``, as BLIP in
LAVIS, which sums ITM and ITC). Items outside the top k keep their
dual-encoder order below every re-scored candidate, so R@K for K > k is the
dual encoder's. A query's candidates are its k best by dual score (ties: the
lower gallery index first, as ``argsort`` with a stable sort gives).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

SCORES = ("align", "align+dual")


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) gallery indices of each row's k highest scores, best first (stable on ties)."""
    k = min(k, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def rerank(dual: np.ndarray, k: int, score_pairs: Callable[[np.ndarray], np.ndarray],
           how: str = "align") -> np.ndarray:
    """(Q, N) re-ranked scores. ``score_pairs((P, 2) [query, item]) -> (P,)`` alignment logits."""
    if how not in SCORES:
        raise ValueError(f"re-rank score must be one of {', '.join(SCORES)}, not {how!r}")
    dual = np.asarray(dual, dtype=np.float32)
    Q, N = dual.shape
    cand = top_k(dual, k)                                            # (Q, k)
    pairs = np.stack([np.repeat(np.arange(Q), cand.shape[1]), cand.ravel()], 1)
    new = np.asarray(score_pairs(pairs), dtype=np.float64).reshape(Q, -1)   # (Q, k)
    if how == "align+dual":
        new = new + dual[np.arange(Q)[:, None], cand]
    # everything else below every re-scored candidate, in dual order
    out = dual.astype(np.float64)
    shift = out.max(1, keepdims=True) - new.min(1, keepdims=True) + 1.0   # (Q, 1)
    out = out - shift
    out[np.arange(Q)[:, None], cand] = new
    return out
