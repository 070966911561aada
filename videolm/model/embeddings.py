"""Visual inputs into the transformer's hidden size, one module per mode.

VideoBERT mode: a visual word is an id into its own embedding table, like a
text token (optionally initialised from the vocabulary's centroids).
CBT mode: a clip feature goes through a linear projection and a LayerNorm;
masked clips are replaced by a learned mask embedding, so the model never
sees the feature it has to predict.

The text side needs no module of its own: it is BERT's word embedding table
(``JointTransformer.word_embeddings``), so a BERT checkpoint loads into it. The
two-stream model's visual stack (videolm.model.two_stream) uses these same modules.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from videolm.model.config import ModelConfig
from videolm.model.errors import ModelError


class VisualWordEmbeddings(nn.Module):
    """VideoBERT: visual-word id -> vector. Ids ``0 .. words-1`` are words,
    then ``[PAD]`` and ``[MASK]`` (see videolm.tokenize.vocab)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.table = nn.Embedding(config.visual_vocab_size, config.hidden_size)

    def forward(self, ids: torch.Tensor, masked: torch.Tensor | None = None) -> torch.Tensor:
        # ids: (B, Tv) long; masking is already in the ids ([MASK] id), so `masked` is unused
        if ids.dtype not in (torch.int32, torch.int64):
            raise ModelError(f"VideoBERT mode takes visual-word ids (integers), not {ids.dtype} features; "
                             "use model.mode=cbt for raw features")
        # The range check reads the ids on the host: free for CPU tensors, a
        # device sync per step for CUDA ones, so there it is left to the data
        # side (the collator checks every batch it builds, on the CPU).
        if ids.numel() and ids.device.type == "cpu":
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.table.num_embeddings:
                raise ModelError(f"visual-word id {lo if lo < 0 else hi} is outside the visual vocabulary "
                                 f"(model.visual_vocab_size={self.table.num_embeddings})")
        return self.table(ids)  # (B, Tv, H)

    @torch.no_grad()
    def init_from_centroids(self, centroids: np.ndarray | torch.Tensor, target_std: float) -> None:
        """Rows ``0 .. n-1`` from the (n, dim) word centroids: centre them,
        project onto their top ``min(hidden, dim)`` principal components (PCA,
        no learned parameters; columns past that are 0), and scale so the
        rows' std is ``target_std`` (the text embeddings') and both modalities
        enter the transformer at the same scale. Nearby centroids get nearby
        embeddings. The special tokens' rows keep their random init."""
        c = torch.as_tensor(np.asarray(centroids), dtype=torch.float64)  # (n, dim)
        n, hidden = c.shape[0] if c.ndim == 2 else 0, self.table.embedding_dim
        if c.ndim != 2 or n == 0:
            raise ModelError(f"word centroids must be an (n, dim) array, not shape {tuple(c.shape)}")
        if n > self.table.num_embeddings:
            raise ModelError(f"{n} word centroids but model.visual_vocab_size={self.table.num_embeddings}; "
                             "set it to the vocabulary's vocab_size")
        if not torch.isfinite(c).all():
            raise ModelError("word centroids hold NaN/Inf; refit the vocabulary")
        c = c - c.mean(0)
        _, _, vh = torch.linalg.svd(c, full_matrices=False)  # rows of vh: principal directions
        k = min(hidden, vh.shape[0])
        vh = vh[:k]
        vh = vh * torch.sign(vh[torch.arange(k), vh.abs().argmax(1)])[:, None]  # fixed signs: same result every run
        projected = c @ vh.T  # (n, k), centred
        rms = float(projected.pow(2).sum(1).mean().sqrt()) / hidden ** 0.5  # std over the (n, hidden) rows
        if rms > 0:
            projected = projected * (target_std / rms)
        self.table.weight[:n] = 0.0
        self.table.weight[:n, :k] = projected.to(self.table.weight.dtype)


class FeatureEmbeddings(nn.Module):
    """CBT: clip feature -> Linear -> LayerNorm; masked clips -> mask embedding."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.feature_dim = config.feature_dim
        self.projection = nn.Linear(config.feature_dim, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mask_embedding = nn.Parameter(torch.zeros(config.hidden_size))

    def forward(self, feats: torch.Tensor, masked: torch.Tensor | None = None) -> torch.Tensor:
        # feats: (B, Tv, D) float; masked: (B, Tv) bool
        if not feats.is_floating_point() or feats.ndim != 3 or feats.shape[-1] != self.feature_dim:
            what = f"{feats.shape[-1]}-dim" if feats.ndim == 3 else f"shape {tuple(feats.shape)}"
            raise ModelError(f"visual features are {what} ({feats.dtype}) but the model expects (B, T, "
                             f"{self.feature_dim}) floats (model.feature_dim={self.feature_dim})")
        x = self.norm(self.projection(feats.to(self.projection.weight.dtype)))  # (B, Tv, H)
        if masked is not None:
            x = torch.where(masked[..., None], self.mask_embedding.to(x.dtype), x)
        return x
