"""The two-stream transformer: a text stack, a visual stack, then cross-modal co-attention layers.

The same blocks as the single-stream model (videolm.model.transformer), wired
as ViLBERT (Lu et al., 2019) wires them::

    [CLS] w1 .. wn [SEP]          [IMG] v1 .. vm
            |                           |
      text stack                   visual stack          text_layers / visual_layers EncoderLayers
    (a JointTransformer,          (visual embeddings,
     text only: exactly BERT)      [IMG], positions)
            |                           |
            +------- cross layer -------+                cross_layers times:
            |  Co-TRM: text queries,    |                  co-attention + FFN per stream (EncoderLayer
            |  visual keys/values;      |                  with context = the other stream's input),
            |  visual queries, text k/v |                  then TRM: each stream's own EncoderLayer
            |  TRM (self) per stream    |
            +---------------------------+
            |                           |
      text states                 visual states

The text stack is a ``JointTransformer(visual=False)``: its parameter names
and its BERT loading are the single-stream model's. The visual stack reads
the same visual inputs (visual-word ids or projected features, the same
embedding modules) behind a learned ``[IMG]`` start token (ViLBERT's image
token), with positions of its own that count real tokens only. Each
co-attention reads both streams' *inputs* to the layer, so the two
directions run side by side, as ViLBERT's.

``forward`` has the single-stream call contract (``JointOutput``:
``text_hidden``, ``visual_hidden``, ``*_selected``, and ``cls``, what the
alignment head reads: the text ``[CLS]`` times the visual ``[IMG]`` after
the cross layers, ViLBERT's element-wise product); ``streams`` is the same call with the stacks
alone (no cross layers). The dual encoder uses ``text`` and ``visual``
alone, so retrieval embeddings never pay for the cross layers.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
from torch import nn

from videolm.model.config import ModelConfig
from videolm.model.embeddings import FeatureEmbeddings, VisualWordEmbeddings
from videolm.model.errors import ModelError
from videolm.model.transformer import EncoderLayer, JointOutput, JointTransformer, init_bert_weights

log = logging.getLogger(__name__)


class VisualStack(nn.Module):
    """``[IMG] v1 .. vm`` -> visual_layers encoder layers. Visual inputs through
    the single-stream model's embedding modules, plus the [IMG] start token
    and position embeddings; LayerNorm and dropout as BERT's embeddings."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        H = config.hidden_size
        self.visual_embeddings = (VisualWordEmbeddings(config) if config.mode == "videobert"
                                  else FeatureEmbeddings(config))
        self.start_embedding = nn.Parameter(torch.zeros(H))  # [IMG]
        self.position_embeddings = nn.Embedding(config.max_positions, H)
        self.embedding_norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.visual_layers))

    def forward(self, visual: torch.Tensor | None, visual_attention: torch.Tensor | None,
                visual_masked: torch.Tensor | None = None, batch_size: int | None = None,
                visual_embedded: bool = False) -> JointOutput:
        """visual: (B, Tv) ids or (B, Tv, D) features, or None (only [IMG]);
        with ``visual_embedded`` already ``visual_embeddings``' (B, Tv, H) output.
        Returns hidden (B, 1 + Tv, H), visual_hidden (B, Tv, H), cls = [IMG]."""
        cfg = self.config
        B = visual.shape[0] if visual is not None else batch_size
        device = self.start_embedding.device
        start = self.start_embedding.expand(B, 1, -1)  # (B, 1, H)
        if visual is None or visual.shape[1] == 0:
            x, attention = start, torch.ones((B, 1), dtype=torch.bool, device=device)
        else:
            if visual_attention is None or visual_attention.shape != visual.shape[:2]:
                raise ModelError(f"visual {tuple(visual.shape)} needs visual_attention of shape "
                                 f"{tuple(visual.shape[:2])}, got "
                                 f"{None if visual_attention is None else tuple(visual_attention.shape)}")
            v = visual if visual_embedded else self.visual_embeddings(visual, visual_masked)  # (B, Tv, H)
            x = torch.cat([start.to(v.dtype), v], 1)  # (B, 1 + Tv, H)
            attention = torch.cat([torch.ones((B, 1), dtype=torch.bool, device=v.device),
                                   visual_attention.bool()], 1)  # [IMG] always attended
        if x.shape[1] > cfg.max_positions and int(attention.sum(1).max()) > cfg.max_positions:
            raise ModelError(f"a visual side has {int(attention.sum(1).max()) - 1} clips, more than "
                             f"model.max_positions={cfg.max_positions} - 1; shorten it")
        positions = (attention.cumsum(1) - 1).clamp(0, cfg.max_positions - 1)  # (B, 1 + Tv), real tokens only
        x = self.embedding_dropout(self.embedding_norm(x + self.position_embeddings(positions)))
        attn_mask = _mask(attention)
        for layer in self.layers:
            x = layer(x, attn_mask)
        return JointOutput(attention, x, visual_hidden=x[:, 1:])


class CrossLayer(nn.Module):
    """ViLBERT's co-attentional transformer layer (Co-TRM) followed by each
    stream's own layer (TRM). Co-TRM: queries from one stream, keys and values
    from the other, then the stream's feed-forward block; both directions read
    the layer's inputs."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.text_coattention = EncoderLayer(config)    # text queries, visual keys/values
        self.visual_coattention = EncoderLayer(config)  # visual queries, text keys/values
        self.text_layer = EncoderLayer(config)
        self.visual_layer = EncoderLayer(config)

    def forward(self, text: torch.Tensor, visual: torch.Tensor, text_mask: torch.Tensor | None,
                visual_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        # text: (B, Tt, H), visual: (B, 1 + Tv, H); masks (B, 1, 1, L) over each stream's keys
        text, visual = (self.text_coattention(text, visual_mask, context=visual),
                        self.visual_coattention(visual, text_mask, context=text))
        return self.text_layer(text, text_mask), self.visual_layer(visual, visual_mask)


class TwoStreamTransformer(nn.Module):
    """Text stack + visual stack + ``cross_layers`` CrossLayers (see the module docstring)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config.validate()
        text_config = dataclasses.replace(config, arch="single_stream", num_layers=config.text_layers,
                                          masked_context="cross", align_loss="bce", align_on_masked_pass=False)
        self.text = JointTransformer(text_config, visual=False)
        self.visual = VisualStack(config)
        self.cross = nn.ModuleList(CrossLayer(config) for _ in range(config.cross_layers))
        self.apply(lambda m: init_bert_weights(m, config.initializer_range))
        nn.init.normal_(self.visual.start_embedding, std=config.initializer_range)
        if isinstance(self.visual.visual_embeddings, FeatureEmbeddings):
            nn.init.normal_(self.visual.visual_embeddings.mask_embedding, std=config.initializer_range)

    # the tables the tied decoders read, under the single-stream model's names
    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.text.word_embeddings

    @property
    def visual_embeddings(self) -> nn.Module:
        return self.visual.visual_embeddings

    def fuse(self, text: torch.Tensor, text_attention: torch.Tensor, visual: torch.Tensor,
             visual_attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cross layers over the stacks' outputs: text (B, Tt, H) and
        visual (B, 1 + Tv, H) with their (B, L) attention -> both, fused."""
        text_mask, visual_mask = _mask(text_attention.bool()), _mask(visual_attention)
        for layer in self.cross:
            text, visual = layer(text, visual, text_mask, visual_mask)
        return text, visual

    def forward(self, text_ids: torch.Tensor, text_attention: torch.Tensor, visual: torch.Tensor | None = None,
                visual_attention: torch.Tensor | None = None, visual_masked: torch.Tensor | None = None,
                text_segment: int = 0, text_select: torch.Tensor | None = None,
                visual_select: torch.Tensor | None = None, visual_embedded: bool = False) -> JointOutput:
        """JointTransformer's call, through both stacks and the cross layers.
        ``text_segment`` is accepted for the common contract and unused (each
        stack holds one modality). With ``*_select`` the outputs at those
        positions only (computed in full here, then read)."""
        return self._run(True, text_ids, text_attention, visual, visual_attention, visual_masked,
                         text_select, visual_select, visual_embedded)

    def cls(self, text_ids: torch.Tensor, text_attention: torch.Tensor, visual: torch.Tensor | None = None,
            visual_attention: torch.Tensor | None = None, text_segment: int = 0,
            visual_embedded: bool = False) -> torch.Tensor:
        """(B, H) what the alignment head reads, as JointTransformer.cls: here
        ``joint_cls`` after the cross layers (every layer runs in full)."""
        return self(text_ids, text_attention, visual, visual_attention, text_segment=text_segment,
                    visual_embedded=visual_embedded).cls

    def streams(self, text_ids: torch.Tensor, text_attention: torch.Tensor, visual: torch.Tensor | None = None,
                visual_attention: torch.Tensor | None = None, visual_masked: torch.Tensor | None = None,
                text_segment: int = 0, text_select: torch.Tensor | None = None,
                visual_select: torch.Tensor | None = None) -> JointOutput:
        """The same call with the stacks alone: each side sees its own modality only (CBT's masked objectives)."""
        return self._run(False, text_ids, text_attention, visual, visual_attention, visual_masked,
                         text_select, visual_select)

    def _run(self, cross: bool, text_ids, text_attention, visual, visual_attention, visual_masked,
             text_select, visual_select, visual_embedded: bool = False) -> JointOutput:
        text = self.text(text_ids, text_attention)  # text_hidden (B, Tt, H)
        vis = self.visual(visual, visual_attention, visual_masked, batch_size=text_ids.shape[0],
                          visual_embedded=visual_embedded)  # (B, 1 + Tv, H)
        t, v = text.text_hidden, vis.hidden
        if cross:
            t, v = self.fuse(t, text.attention, v, vis.attention)
        attention = torch.cat([text.attention, vis.attention], 1)  # (B, Tt + 1 + Tv)
        Tv = v.shape[1] - 1
        visual_hidden = v[:, 1:] if Tv else None
        joint_cls = t[:, 0] * v[:, 0]  # (B, H) ViLBERT's alignment input: both streams' first tokens, multiplied
        if text_select is None and visual_select is None:
            return JointOutput(attention, torch.cat([t, v], 1), t, visual_hidden, joint_cls=joint_cls)
        empty = t.new_zeros((0, t.shape[-1]))
        return JointOutput(attention, joint_cls=joint_cls,
                           text_selected=t[text_select] if text_select is not None else empty,
                           visual_selected=visual_hidden[visual_select] if visual_select is not None and Tv
                           else empty)

    # -- initialisation from elsewhere

    @torch.no_grad()
    def init_visual_from_centroids(self, centroids: np.ndarray | torch.Tensor) -> None:
        """VideoBERT: the visual stack's word table from the vocabulary's centroids (see VisualWordEmbeddings)."""
        if not isinstance(self.visual.visual_embeddings, VisualWordEmbeddings):
            raise ModelError("init_visual_from_centroids needs model.mode=videobert (CBT has no word table)")
        target_std = float(self.text.word_embeddings.weight.std())
        self.visual.visual_embeddings.init_from_centroids(centroids, target_std)
        log.info("visual word embeddings initialised from %d centroids (PCA, std %.4f)", len(centroids), target_std)

    @torch.no_grad()
    def load_text_from_bert(self, path: str) -> dict[str, torch.Tensor]:
        """The text stack from a local BERT directory: a checkpoint of
        ``text_layers`` layers fills the text stack; one of ``text_layers +
        cross_layers`` layers also fills each cross layer's text TRM with the
        layers above, as ViLBERT initialises its co-attention stream from
        BERT-base (co-attention at text layers 6..11). Returns the unused
        checkpoint tensors (BERT's MLM head, for the caller)."""
        from videolm.model.io import bert_to_joint, read_bert_checkpoint

        cfg = self.config
        bert_config, tensors, where = read_bert_checkpoint(path)
        n = bert_config.get("num_hidden_layers", cfg.text_layers)
        prefixes = [f"text.layers.{i}." for i in range(cfg.text_layers)]
        if n == cfg.text_layers + cfg.cross_layers:
            prefixes += [f"cross.{j}.text_layer." for j in range(cfg.cross_layers)]
        elif n != cfg.text_layers:
            raise ModelError(f"{where}: the checkpoint has {n} layers; model.text_layers={cfg.text_layers} needs "
                             f"{cfg.text_layers} (or {cfg.text_layers + cfg.cross_layers} to fill the cross "
                             "layers' text side too); set model.text_layers")
        check = dataclasses.replace(cfg, num_layers=n)
        mapped, unused = bert_to_joint(bert_config, tensors, check, where, prefixes)
        own = self.state_dict()
        for name, value in mapped.items():
            name = name if name.startswith(("text.", "cross.")) else f"text.{name}"  # embeddings: the text stack's
            if own[name].shape != value.shape:
                raise ModelError(f"{where}: tensor for {name} has shape {tuple(value.shape)}, "
                                 f"the model needs {tuple(own[name].shape)}")
            own[name].copy_(value)
        log.info("text stack initialised from %s (%d tensors, %d layers)", where, len(mapped), len(prefixes))
        return unused


def _mask(attention: torch.Tensor) -> torch.Tensor | None:
    """(B, L) bool -> (B, 1, 1, L) key mask; None on the CPU when nothing is
    padded (the fused kernels run; on CUDA finding out would sync)."""
    if attention.device.type == "cpu" and bool(attention.all()):
        return None
    return attention[:, None, None, :]
