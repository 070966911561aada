"""The contract between data/ and model/: one collated pre-training batch.

A sequence is ``[CLS] text [SEP] visual [SEP]``. The collator keeps the two
sides in separate, right-padded tensors; the model joins them (text first,
then the visual side, then a closing ``[SEP]``) and gives each real token a
position counted over the real tokens only, so padding never shifts
positions.

Text side: ``text_ids`` already holds ``[CLS] ... [SEP]`` from the WordPiece
tokenizer, with masked tokens replaced (BERT 80/10/10) and ``text_labels``
holding the original id at masked positions, ``IGNORE`` elsewhere.

Visual side, VideoBERT mode: ``visual_ids`` are visual-word ids (the
vocabulary's ``mask_id`` at masked positions, ``pad_id`` at padding) and
``visual_labels`` the original word id at masked positions, ``IGNORE``
elsewhere. CBT mode: ``visual_feats`` are the clip features as stored (float
32, unmasked); ``visual_masked`` marks positions the model must replace by
its learned mask embedding, and the unmasked features are the NCE targets.
Stills are a visual side of one clip.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

IGNORE = -100  # label value that losses skip (torch cross_entropy's ignore_index)


@dataclass
class Batch:
    text_ids: torch.Tensor               # (B, Tt) long, masked input ids, pad = tokenizer pad id
    text_attention: torch.Tensor         # (B, Tt) bool, True on real tokens
    text_labels: torch.Tensor            # (B, Tt) long, original id where masked, IGNORE elsewhere
    visual_attention: torch.Tensor       # (B, Tv) bool, True on real clips
    visual_masked: torch.Tensor          # (B, Tv) bool, True where a visual position is masked
    group_ids: torch.Tensor              # (B,) long, one id per source video/image; equal ids never serve as negatives
    visual_ids: torch.Tensor | None = None     # (B, Tv) long, VideoBERT mode
    visual_labels: torch.Tensor | None = None  # (B, Tv) long, VideoBERT mode, IGNORE where not masked
    visual_feats: torch.Tensor | None = None   # (B, Tv, D) float32, CBT mode (targets = these, unmasked)
    is_image: torch.Tensor | None = None       # (B,) bool, True for image-caption pairs

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            moved[f.name] = value.to(device, non_blocking=non_blocking) if isinstance(value, torch.Tensor) else value
        return Batch(**moved)

    def pin_memory(self) -> "Batch":
        """Every tensor in page-locked memory: the DataLoader's ``pin_memory``
        calls this (it pins only tensors, mappings, sequences and objects that
        have this method), so ``to(cuda, non_blocking=True)`` overlaps the copy
        with compute instead of copying from pageable memory synchronously."""
        return Batch(**{f.name: (v.pin_memory() if isinstance(v := getattr(self, f.name), torch.Tensor) else v)
                        for f in fields(self)})

    def __len__(self) -> int:
        return self.text_ids.shape[0]

    def slice(self, start: int, stop: int) -> "Batch":
        """Rows [start, stop): used to split a batch into micro-batches."""
        return Batch(**{f.name: (v[start:stop] if isinstance(v := getattr(self, f.name), torch.Tensor) else v)
                        for f in fields(self)})
