"""The pre-training losses: pure functions of tensors, no modules, no state.

Each takes what its head produced at the positions that count (gathered by
the caller) and returns a scalar: the mean over its items, or with
``reduction="sum"`` their sum (``"none"``: one value per item). The model
divides sums by a count over the global batch, so that N ranks compute what
one process over the whole batch computes. An empty input (no masked
position in the batch) gives 0 that is still part of the graph, so backward
and DDP work the same either way.

Similarity logits (InfoNCE, masked-feature NCE) are computed in float32
with autocast switched off: under bf16 autocast a ``.float()`` cast alone
does nothing (the matmul casts its inputs back to bf16), and logits at a
scale of up to 100 need more than bf16's 8 bits of mantissa.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DUPLICATE_TOLERANCE = 1e-5  # relative squared distance under which two targets count as one


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return values.sum()
    if reduction == "mean":
        return values.mean() if values.numel() else values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be mean, sum or none, not {reduction!r}")


def masked_token_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Masked LM / masked visual words: cross-entropy of (M, V) logits
    against the (M,) original ids."""
    if labels.numel() == 0:
        return logits.sum() * 0.0
    return _reduce(F.cross_entropy(logits.float(), labels, reduction="none"), reduction)


def masked_feature_nce(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                       temperature: float = 0.1, normalize: bool = True, reduction: str = "mean",
                       negatives: torch.Tensor | None = None) -> torch.Tensor:
    """CBT 'contrastive regression': score each masked prediction against
    every masked target in the batch; the true one is the positive.

    pred, target: (..., D), e.g. (B, T, D); mask: (...) bool, None = every row
    (pred and target already gathered to (M, D)). negatives: (N, D) more
    candidate targets (other ranks' masked clips), scored alongside. With the
    candidates ``c = target ++ negatives``, ``score[i, j] = <p_i, c_j> /
    temperature`` and the loss of row i is ``-log softmax_j(score[i])[i]``.
    ``normalize`` L2-normalises both sides first (cosine scores): raw backbone
    features have arbitrary norms, which would otherwise set the softmax's
    sharpness instead of the temperature.

    A candidate identical to row i's own target (the same clip masked in two
    rows of one video, or two identical clips) is not a negative of row i: it
    is left out of row i's softmax, as InfoNCE leaves out same-group entries.
    Identical means a squared distance under ``DUPLICATE_TOLERANCE`` times the
    squared norms, after the normalisation the scores use."""
    if mask is not None:
        pred, target = pred[mask], target[mask]
    with torch.autocast(pred.device.type, enabled=False):
        pred = pred.reshape(-1, pred.shape[-1]).float()  # (M, D)
        target = target.reshape(-1, target.shape[-1]).float()  # (M, D)
        if pred.shape[0] == 0:
            return pred.sum() * 0.0
        candidates = target if negatives is None else torch.cat([target, negatives.float()])  # (M + N, D)
        if normalize:
            pred, target, candidates = (F.normalize(x, dim=-1) for x in (pred, target, candidates))
        scores = pred @ candidates.T / temperature  # (M, M + N)
        # duplicates of each row's own target among the candidates (never the positive itself)
        t2 = target.pow(2).sum(1)  # (M,)
        c2 = candidates.pow(2).sum(1)  # (M + N,)
        dist2 = t2[:, None] + c2[None, :] - 2 * target @ candidates.T  # (M, M + N)
        duplicate = dist2 <= DUPLICATE_TOLERANCE * (t2[:, None] + c2[None, :])
        duplicate[:, :len(target)].fill_diagonal_(False)
        scores = scores.masked_fill(duplicate, float("-inf"))
        rows = torch.arange(len(scores), device=scores.device)
        return _reduce(F.cross_entropy(scores, rows, reduction="none"), reduction)


def alignment_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Text-video alignment: binary cross-entropy with logits over the (N,)
    pairs; labels 1 = belong together, 0 = negative pair."""
    if logits.numel() == 0:
        return logits.sum() * 0.0
    values = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
    return _reduce(values, reduction)


def listwise_alignment_loss(logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Listwise alignment (LCE): cross-entropy of the positive in column 0 of
    each (R, 1 + n) row against its candidates; -inf marks a missing candidate,
    and a row with none takes no part."""
    has = torch.isfinite(logits[:, 1:]).any(1)  # (R,) rows with a candidate (none when n = 0)
    if not has.any():
        return logits.sum() * 0.0
    x = logits[has].float()
    values = torch.logsumexp(x, dim=1) - x[:, 0]  # (R',) -log softmax of the positive
    return _reduce(values, reduction)


def contrastive_loss(text: torch.Tensor, video: torch.Tensor, scale: torch.Tensor | float,
                     group_ids: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between (B, E) text and video embeddings, row i of
    each being a pair: ``logits = scale * text @ video.T``, then ``info_nce``."""
    with torch.autocast(text.device.type, enabled=False):
        scale = scale.float() if isinstance(scale, torch.Tensor) else scale
        return info_nce(scale * text.float() @ video.float().T, group_ids, valid)


def info_nce(logits: torch.Tensor, group_ids: torch.Tensor | None = None,
             valid: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over a (B, B) text-by-video score matrix whose
    diagonal holds the pairs: cross-entropy over rows (text -> video) and over
    columns (video -> text), averaged. Entries off the diagonal whose rows
    share a ``group_ids`` value (two captions of one video) are false
    negatives and are left out of both softmaxes. (The dual encoder's scores
    are scaled cosines; CBT's cross-modal NCE scores each pair with the
    cross-modal layers.)

    valid: (B,) bool, the rows that take part (rows without a visual side are
    False): an invalid row is no one's negative and adds nothing; the mean is
    over the valid rows (0, in the graph, when there is none)."""
    with torch.autocast(logits.device.type, enabled=False):
        logits = logits.float()  # (B, B)
        B = len(logits)
        eye = torch.eye(B, dtype=torch.bool, device=logits.device)
        allowed = ~eye
        if group_ids is not None:
            allowed &= group_ids[:, None] != group_ids[None, :]
        if valid is not None:
            allowed &= valid[:, None] & valid[None, :]
        logits = logits.masked_fill(~(allowed | eye), float("-inf"))  # an invalid row keeps only its diagonal: loss 0
        targets = torch.arange(B, device=logits.device)
        per_row = (F.cross_entropy(logits, targets, reduction="none")
                   + F.cross_entropy(logits.T, targets, reduction="none")) / 2  # (B,)
        if valid is None:
            return per_row.mean()
        weight = valid.float()
        return (per_row * weight).sum() / weight.sum().clamp(min=1.0)
