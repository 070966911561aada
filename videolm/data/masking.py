"""BERT-style masking of the text and visual sides, as pure functions of an
rng (the caller seeds it per example, so masking is reproducible).

**How many.** Of ``n`` maskable positions, ``k = floor(prob * n + u)``
(``u`` uniform in [0, 1)) are chosen uniformly without replacement: the
expected rate is exactly ``prob``. Text always masks at least one token when
it has one (BERT needs a target per sequence), which raises the rate only
for texts shorter than ``1 / prob`` tokens (7 at 15 %). The visual side has
no such floor: an image (one clip) is masked with probability ``prob``.

**What with.** A chosen text position becomes ``[MASK]`` with probability
0.8, a random ordinary token (never a special one) with 0.1 and stays as it
is with 0.1; its label is the original id. VideoBERT visual words the same
way (a random *word*, never ``[PAD]``/``[MASK]``). CBT features are not
replaced here: the positions are returned and the model swaps in its mask
embedding. ``[CLS]``, ``[SEP]``, padding and any special id inside the text
are never chosen.
"""

from __future__ import annotations

import numpy as np

from videolm.data.batch import IGNORE

MASK_FRACTION = 0.8    # of chosen positions: replaced by [MASK]
RANDOM_FRACTION = 0.1  # replaced by a random token; the rest stay unchanged


def choose_positions(rng: np.random.Generator, candidates: np.ndarray, prob: float,
                     at_least_one: bool = False) -> np.ndarray:
    """A sorted random subset of ``candidates`` of size floor(prob * n + u)."""
    n = len(candidates)
    k = int(np.floor(prob * n + rng.random()))
    if at_least_one and n > 0 and prob > 0:
        k = max(k, 1)
    k = min(k, n)
    return np.sort(rng.choice(candidates, size=k, replace=False)) if k else candidates[:0]


def random_ids(rng: np.random.Generator, size: int, high: int, exclude=()) -> np.ndarray:
    """``size`` ids uniform in [0, high) that are not in ``exclude``."""
    ids = rng.integers(0, high, size=size)
    if len(exclude):
        bad = np.isin(ids, exclude)
        while bad.any():  # redraw the few that hit a special id
            ids[bad] = rng.integers(0, high, size=int(bad.sum()))
            bad = np.isin(ids, exclude)
    return ids


def replace_bert(ids: np.ndarray, positions: np.ndarray, rng: np.random.Generator, mask_id: int,
                 vocab_size: int, exclude=()) -> tuple[np.ndarray, np.ndarray]:
    """80/10/10 at ``positions``: (masked input ids, labels with IGNORE elsewhere)."""
    inputs = ids.copy()
    labels = np.full_like(ids, IGNORE)
    labels[positions] = ids[positions]
    r = rng.random(len(positions))
    inputs[positions[r < MASK_FRACTION]] = mask_id
    swap = positions[(r >= MASK_FRACTION) & (r < MASK_FRACTION + RANDOM_FRACTION)]
    inputs[swap] = random_ids(rng, len(swap), vocab_size, exclude)
    return inputs, labels


def mask_text(ids: np.ndarray, rng: np.random.Generator, prob: float, mask_id: int, vocab_size: int,
              special_ids) -> tuple[np.ndarray, np.ndarray]:
    """ids: (T,) int64 ``[CLS] ... [SEP]``. Returns (inputs, labels), both (T,)."""
    special = np.asarray(sorted(special_ids), dtype=ids.dtype)
    interior = np.arange(1, len(ids) - 1)
    candidates = interior[~np.isin(ids[interior], special)]
    positions = choose_positions(rng, candidates, prob, at_least_one=True)
    return replace_bert(ids, positions, rng, mask_id, vocab_size, special)


def mask_visual_words(ids: np.ndarray, rng: np.random.Generator, prob: float, mask_id: int,
                      num_words: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """VideoBERT: ids (V,) visual words. Returns (inputs, labels, masked (V,) bool)."""
    positions = choose_positions(rng, np.arange(len(ids)), prob)
    inputs, labels = replace_bert(ids, positions, rng, mask_id, num_words)
    masked = np.zeros(len(ids), bool)
    masked[positions] = True
    return inputs, labels, masked


def mask_visual_positions(length: int, rng: np.random.Generator, prob: float) -> np.ndarray:
    """CBT: (V,) bool, True where the model replaces the clip by its mask embedding."""
    masked = np.zeros(length, bool)
    masked[choose_positions(rng, np.arange(length), prob)] = True
    return masked
