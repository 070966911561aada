"""One example (numpy, unpadded) and the collator that pads a list of them
into the ``Batch`` the model takes (videolm/data/batch.py).

Padding is on the right: text with the tokenizer's pad id, VideoBERT visual
words with the vocabulary's ``[PAD]``, CBT features with zeros; labels are
``IGNORE`` and the attention masks False on padding. The visual side is at
least one position wide even when every example has no clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from videolm.data.batch import IGNORE, Batch
from videolm.data.errors import DataError


@dataclass
class Example:
    text_ids: np.ndarray                    # (t,) int64 [CLS] text [SEP], masked
    text_labels: np.ndarray                 # (t,) int64 original id where masked, IGNORE elsewhere
    visual_masked: np.ndarray               # (v,) bool
    group_id: int                           # one id per source video/image
    is_image: bool
    visual_ids: np.ndarray | None = None    # (v,) int64 VideoBERT words, masked
    visual_labels: np.ndarray | None = None  # (v,) int64 VideoBERT, IGNORE where not masked
    visual_feats: np.ndarray | None = None  # (v, D) float32 CBT, unmasked
    # where it came from (logging, tests)
    key: tuple[int, int] = (0, 0)           # (epoch, position)
    source: int = 0                         # index into DataConfig.sources
    video_id: str = ""
    span: tuple[float, float] | None = None  # seconds the text covers; None = the whole video/image
    clips: np.ndarray | None = None         # (v,) indices of the store clips used, in order


@dataclass
class Collator:
    mode: str              # "videobert" | "cbt"
    text_pad_id: int
    visual_pad_id: int = 0  # VideoBERT [PAD]
    feature_dim: int = 0    # CBT: D, for the zero padding of an all-empty visual side
    visual_vocab_size: int = 0  # VideoBERT: ids must be below this (checked here, on the CPU); 0 = unchecked

    def __call__(self, examples: list[Example]) -> Batch:
        b = len(examples)
        tt = max(len(e.text_ids) for e in examples)
        tv = max(1, max(len(e.visual_masked) for e in examples))
        text_ids = torch.full((b, tt), self.text_pad_id, dtype=torch.long)
        text_labels = torch.full((b, tt), IGNORE, dtype=torch.long)
        text_attention = torch.zeros((b, tt), dtype=torch.bool)
        visual_attention = torch.zeros((b, tv), dtype=torch.bool)
        visual_masked = torch.zeros((b, tv), dtype=torch.bool)
        visual_ids = visual_labels = visual_feats = None
        if self.mode == "videobert":
            visual_ids = torch.full((b, tv), self.visual_pad_id, dtype=torch.long)
            visual_labels = torch.full((b, tv), IGNORE, dtype=torch.long)
        else:
            visual_feats = torch.zeros((b, tv, self.feature_dim), dtype=torch.float32)
        for i, e in enumerate(examples):
            t, v = len(e.text_ids), len(e.visual_masked)
            text_ids[i, :t] = torch.from_numpy(e.text_ids)
            text_labels[i, :t] = torch.from_numpy(e.text_labels)
            text_attention[i, :t] = True
            visual_attention[i, :v] = True
            visual_masked[i, :v] = torch.from_numpy(e.visual_masked)
            if visual_ids is not None:
                outside = (e.visual_ids < 0) | (e.visual_ids >= self.visual_vocab_size)
                if self.visual_vocab_size and outside.any():
                    bad = e.visual_ids[outside][0]
                    raise DataError(f"{e.video_id}: visual-word id {bad} is outside the visual vocabulary "
                                    f"(vocab_size {self.visual_vocab_size}); re-encode the store with this vocabulary")
                visual_ids[i, :v] = torch.from_numpy(e.visual_ids)
                visual_labels[i, :v] = torch.from_numpy(e.visual_labels)
            elif v:
                visual_feats[i, :v] = torch.from_numpy(e.visual_feats)
        return Batch(
            text_ids=text_ids, text_attention=text_attention, text_labels=text_labels,
            visual_attention=visual_attention, visual_masked=visual_masked,
            group_ids=torch.tensor([e.group_id for e in examples], dtype=torch.long),
            visual_ids=visual_ids, visual_labels=visual_labels, visual_feats=visual_feats,
            is_image=torch.tensor([e.is_image for e in examples], dtype=torch.bool))
