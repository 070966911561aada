"""The pre-training losses: pure functions of tensors, no modules, no state.

Each takes what its head produced at the positions that count (gathered by
the caller) and returns a scalar. An empty input (no masked position in the
batch) gives 0 that is still part of the graph, so backward and DDP work the
same either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Masked LM / masked visual words: mean cross-entropy of (M, V) logits
    against the (M,) original ids."""
    if labels.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels)


def masked_feature_nce(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                       temperature: float = 0.1, normalize: bool = True) -> torch.Tensor:
    """CBT 'contrastive regression': score each masked prediction against
    every masked target in the batch; the true one is the positive.

    pred, target: (..., D), e.g. (B, T, D); mask: (...) bool, None = every row
    (pred and target already gathered to (M, D)). With M masked positions,
    ``score[i, j] = <p_i, t_j> / temperature`` and the loss is
    ``mean_i -log softmax_j(score[i])[i]``. ``normalize`` L2-normalises both
    sides first (cosine scores): raw backbone features have arbitrary norms,
    which would otherwise set the softmax's sharpness instead of the temperature."""
    if mask is not None:
        pred, target = pred[mask], target[mask]
    pred = pred.reshape(-1, pred.shape[-1]).float()  # (M, D)
    target = target.reshape(-1, target.shape[-1]).float()  # (M, D)
    if pred.shape[0] == 0:
        return pred.sum() * 0.0
    if normalize:
        pred, target = F.normalize(pred, dim=-1), F.normalize(target, dim=-1)
    scores = pred @ target.T / temperature  # (M, M)
    return F.cross_entropy(scores, torch.arange(len(scores), device=scores.device))


def alignment_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Text-video alignment: binary cross-entropy with logits, mean over the
    (N,) pairs; labels 1 = belong together, 0 = negative pair."""
    if logits.numel() == 0:
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


def contrastive_loss(text: torch.Tensor, video: torch.Tensor, scale: torch.Tensor | float,
                     group_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between (B, E) text and video embeddings, row i of
    each being a pair: ``logits = scale * text @ video.T``, cross-entropy over
    rows (text -> video) and over columns (video -> text), averaged. Entries
    off the diagonal whose rows share a ``group_ids`` value (two captions of
    one video) are false negatives and are left out of both softmaxes."""
    logits = scale * text.float() @ video.float().T  # (B, B)
    if group_ids is not None:
        same = group_ids[:, None] == group_ids[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    targets = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
