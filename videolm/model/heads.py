"""Heads: small modules on top of the transformer's hidden states.

Every head takes hidden states that the caller has already gathered (only
the masked positions, only the [CLS] column), so no work is spent on
positions no loss looks at. The token decoders are tied: the weight is the
embedding table itself, passed in at call time, so the head owns only its
transform and bias and the tie survives any save/load.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from videolm.model.config import ModelConfig
from videolm.model.transformer import ACTIVATION_FNS


class PredictionTransform(nn.Module):
    """BERT's dense -> activation -> LayerNorm before a decoder."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACTIVATION_FNS[config.hidden_act]
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(hidden)))


class MaskedTokenHead(nn.Module):
    """Masked-token prediction with a decoder tied to an embedding table.

    Used twice: masked LM (tied to the text word table, as BERT) and, in
    VideoBERT mode, masked visual words (tied to the visual word table). The
    visual tie follows VideoBERT, which treats visual words as more entries of
    one vocabulary; it also saves a (vocab x hidden) matrix (16 M parameters
    at 20,736 words) and lets the centroid initialisation shape the output
    side too."""

    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        self.transform = PredictionTransform(config)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        # hidden: (M, H) at masked positions only; table: (V, H) -> logits (M, V)
        return F.linear(self.transform(hidden), table, self.bias)


class FeatureHead(nn.Module):
    """CBT: hidden state at a masked clip -> predicted feature (feature_dim)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.transform = PredictionTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.feature_dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden))  # (M, H) -> (M, D)


class AlignmentHead(nn.Module):
    """Joint [CLS] -> one logit: do this text and these clips belong together?
    BERT's pooler (dense + tanh) then a linear classifier, as its next-sentence head."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, 1)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.tanh(self.pooler(cls))).squeeze(-1)  # (B, H) -> (B,)


class ProjectionHead(nn.Module):
    """Unimodal [CLS] -> L2-normalised embedding for dual-encoder retrieval."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.projection = nn.Linear(config.hidden_size, config.embed_dim)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(cls), dim=-1)  # (B, H) -> (B, E)
