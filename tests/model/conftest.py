"""Tiny model configs (2 layers, hidden 32) and hand-built batches for both modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videolm.data.batch import IGNORE, Batch
from videolm.model.config import ModelConfig

TEXT_VOCAB, CLS, SEP, MASK = 50, 1, 2, 3
VISUAL_WORDS = 9  # k=3, depth=2; [PAD] = 9, [MASK] = 10
FEATURE_DIM = 12


@pytest.fixture(autouse=True)
def one_thread(one_torch_thread):
    """Every model test on one torch thread (tests/conftest.py's one_torch_thread)."""


def tiny_config(mode: str, **overrides) -> ModelConfig:
    values = dict(mode=mode, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=64,
                  text_vocab_size=TEXT_VOCAB, pad_token_id=0, cls_token_id=CLS, sep_token_id=SEP,
                  mask_token_id=MASK, embed_dim=16, dropout=0.0, attention_dropout=0.0)
    if mode == "videobert":
        values.update(visual_vocab_size=VISUAL_WORDS + 2, visual_pad_id=VISUAL_WORDS, visual_mask_id=VISUAL_WORDS + 1)
    else:
        values.update(feature_dim=FEATURE_DIM)
    values.update(overrides)
    return ModelConfig(**values)


def make_batch(mode: str, text_lens=(5, 7, 4, 6), visual_lens=(3, 4, 2, 4), groups=(0, 0, 1, 2), seed: int = 0,
               mask_visual: bool = True) -> Batch:
    """Right-padded rows ``[CLS] w.. [SEP]`` + visual side, one masked word per
    text (position 1) and one masked visual position per row (position 0)."""
    g = torch.Generator().manual_seed(seed)
    B, Tt, Tv = len(text_lens), max(text_lens), max(visual_lens)
    ids = torch.zeros((B, Tt), dtype=torch.long)
    text_attention = torch.zeros((B, Tt), dtype=torch.bool)
    labels = torch.full((B, Tt), IGNORE)
    visual_attention = torch.zeros((B, Tv), dtype=torch.bool)
    visual_masked = torch.zeros((B, Tv), dtype=torch.bool)
    for i, (n, m) in enumerate(zip(text_lens, visual_lens)):
        ids[i, :n] = torch.randint(4, TEXT_VOCAB, (n,), generator=g)
        ids[i, 0], ids[i, n - 1] = CLS, SEP
        text_attention[i, :n] = True
        labels[i, 1] = ids[i, 1]
        ids[i, 1] = MASK
        visual_attention[i, :m] = True
        if m > 0:
            visual_masked[i, 0] = mask_visual
    batch = Batch(ids, text_attention, labels, visual_attention, visual_masked, torch.tensor(groups))
    if mode == "videobert":
        words = torch.randint(0, VISUAL_WORDS, (B, Tv), generator=g)
        batch.visual_labels = torch.where(visual_masked, words, torch.full_like(words, IGNORE))
        words = torch.where(visual_masked, torch.full_like(words, VISUAL_WORDS + 1), words)
        batch.visual_ids = torch.where(visual_attention, words, torch.full_like(words, VISUAL_WORDS))
    else:
        feats = torch.randn((B, Tv, FEATURE_DIM), generator=g)
        batch.visual_feats = feats * visual_attention[..., None]
    return batch


@pytest.fixture
def tiny_vocabulary():
    """A real visual vocabulary (k=3, depth=2: 9 words) fit on random features."""
    from videolm.tokenize.kmeans import HierarchicalKMeans, KMeansConfig
    from videolm.tokenize.vocab import Vocabulary

    config = KMeansConfig(k=3, depth=2, seed=0)
    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    return Vocabulary(HierarchicalKMeans.fit(x, config), config)


def one_line(err) -> bool:
    return "\n" not in str(err.value) and len(str(err.value)) > 0
