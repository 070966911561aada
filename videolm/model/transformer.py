"""The joint single-stream transformer: BERT's post-LN encoder over text and visual tokens.

Sequence layout (the collator keeps the two sides apart, right-padded)::

    columns   | text side (Tt)          | visual side (Tv)       | 1        |
    tokens    | [CLS] w1 .. wn [SEP] pad | v1 .. vm pad           | [SEP]    |
    segment   | 0 ...                    | 1 ...                  | 1        |
    position  | 0 1 .. n+1               | n+2 .. n+m+1           | n+m+2    |

Positions count real tokens only (the cumulative sum of the attention mask),
so padding at the end of the text side never shifts the visual positions, and
a row's outputs do not depend on how much padding the batch needed. The
closing ``[SEP]`` (the text table's sep id) sits in the last column and is
attended only when the row has a visual side; text-only input (no visual
argument) has no closing column at all, which makes the text-only model
exactly BERT.

Attention is ``torch.nn.functional.scaled_dot_product_attention`` with a
boolean padding mask (on the CPU None when nothing is padded, which lets the
fused kernels run; on CUDA always, since finding out would sync the device),
over one fused QKV projection per layer. The sequence-length check reads the
mask only when the columns exceed ``max_positions``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from videolm.model.config import ModelConfig
from videolm.model.embeddings import FeatureEmbeddings, VisualWordEmbeddings
from videolm.model.errors import ModelError

log = logging.getLogger(__name__)

ACTIVATION_FNS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


def init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation: normal(0, std) matrices and tables, zero biases, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Attention(nn.Module):
    """Multi-head attention over one fused QKV projection. Self-attention by
    default; with ``context``, queries come from ``x`` and keys and values from
    ``context`` (ViLBERT's co-attention: one stream asks, the other answers),
    through the same weights, split into their query and key/value rows."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)  # fused query, key, value
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, select: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, H); context: (B, S, H) or None (= x); attn_mask: (B, 1, 1, S) bool over the keys."""
        B, L, H = x.shape
        if context is None:
            q, k, v = self.qkv(x).view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, nh, L, hd)
        else:
            S = context.shape[1]
            q = F.linear(x, self.qkv.weight[:H], self.qkv.bias[:H])  # (B, L, H)
            q = q.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, L, hd)
            kv = F.linear(context, self.qkv.weight[H:], self.qkv.bias[H:])  # (B, S, 2H)
            k, v = kv.view(B, S, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # each (B, nh, S, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout_p if self.training else 0.0)  # (B, nh, L, hd)
        y = y.transpose(1, 2).reshape(B, L, H)
        return self.out(y if select is None else y[select])  # (B, L, H), or (M, H) at the selected positions


class EncoderLayer(nn.Module):
    """Post-LN, as BERT: x = LN(x + attn(x)); x = LN(x + ffn(x)). With
    ``context`` the attention reads keys and values from there instead: that
    is ViLBERT's co-attentional layer (Co-TRM), the same weights' shapes."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention = Attention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.ffn_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.act = ACTIVATION_FNS[config.hidden_act]
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, select: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """select: (B, L) bool -- compute the outputs at these positions only
        (keys and values still come from every token): (M, H) out.
        context: (B, S, H) keys and values from another sequence; attn_mask is then over its S columns."""
        a = self.attention(x, attn_mask, select, context)
        x = self.attention_norm((x if select is None else x[select]) + self.dropout(a))
        return self.ffn_norm(x + self.dropout(self.ffn_out(self.act(self.ffn_in(x)))))


@dataclass
class JointOutput:
    """Full hidden states, or -- when the caller selected positions -- only the
    selected ones (the full fields are then None: the last layer never ran
    anywhere else)."""

    attention: torch.Tensor                      # (B, L) bool, True on real tokens, L = Tt (+ Tv + 1)
    hidden: torch.Tensor | None = None           # (B, L, H) every column
    text_hidden: torch.Tensor | None = None      # (B, Tt, H) the text side's columns
    visual_hidden: torch.Tensor | None = None    # (B, Tv, H) the visual side's columns; None for text-only input
    text_selected: torch.Tensor | None = None    # (Mt, H) == text_hidden[text_select] of a full pass
    visual_selected: torch.Tensor | None = None  # (Mv, H) == visual_hidden[visual_select] of a full pass
    joint_cls: torch.Tensor | None = None        # (B, H) two-stream only: text [CLS] * visual [IMG] (ViLBERT)

    @property
    def cls(self) -> torch.Tensor:
        """(B, H) what the alignment head reads: the [CLS] column (two-stream: joint_cls)."""
        return self.joint_cls if self.joint_cls is not None else self.hidden[:, 0]


class JointTransformer(nn.Module):
    """Embeddings (text words, visual words or features, segment, position)
    + ``num_layers`` encoder layers. Parameter names follow the modules, not
    BERT; ``load_text_from_bert`` maps a BERT checkpoint onto them.

    ``visual=False`` builds it without visual embeddings: text-only input,
    exactly BERT (the two-stream model's text stack, videolm.model.two_stream)."""

    def __init__(self, config: ModelConfig, visual: bool = True):
        super().__init__()
        self.config = config.validate()
        H = config.hidden_size
        self.word_embeddings = nn.Embedding(config.text_vocab_size, H)
        self.visual_embeddings = None
        if visual:
            self.visual_embeddings = (VisualWordEmbeddings(config) if config.mode == "videobert"
                                      else FeatureEmbeddings(config))
        self.position_embeddings = nn.Embedding(config.max_positions, H)
        self.segment_embeddings = nn.Embedding(config.type_vocab_size, H)
        self.embedding_norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))
        self.apply(lambda m: init_bert_weights(m, config.initializer_range))
        if isinstance(self.visual_embeddings, FeatureEmbeddings):
            nn.init.normal_(self.visual_embeddings.mask_embedding, std=config.initializer_range)

    def forward(self, text_ids: torch.Tensor, text_attention: torch.Tensor, visual: torch.Tensor | None = None,
                visual_attention: torch.Tensor | None = None, visual_masked: torch.Tensor | None = None,
                text_segment: int = 0, text_select: torch.Tensor | None = None,
                visual_select: torch.Tensor | None = None, visual_embedded: bool = False) -> JointOutput:
        """text_ids, text_attention: (B, Tt), ``[CLS] .. [SEP]`` right-padded.
        visual: (B, Tv) word ids (VideoBERT) or (B, Tv, D) features (CBT), with
        visual_attention (B, Tv) bool; visual_masked (B, Tv) bool (CBT: replaced
        by the mask embedding). text_segment: the text side's segment id
        (``encode_video`` runs ``[CLS]`` as segment 1). visual_embedded: ``visual``
        is already the (B, Tv, H) output of ``visual_embeddings`` (the
        alignment pass embeds each distinct video once, then repeats it).

        text_select (B, Tt) / visual_select (B, Tv) bool: the only positions
        whose final hidden states the caller reads (the masked ones, for the
        masked-modelling losses). The last layer then computes its attention
        output projection and feed-forward block for those positions only --
        about three quarters of a layer saved at 15 % masking -- and the
        output holds ``text_selected`` / ``visual_selected`` instead of the full
        hidden states."""
        cfg = self.config
        if text_ids.ndim != 2 or text_attention.shape != text_ids.shape:
            raise ModelError(f"text_ids {tuple(text_ids.shape)} and text_attention {tuple(text_attention.shape)} "
                             "must both be (batch, length)")
        B, Tt = text_ids.shape
        device = text_ids.device
        Tv = 0 if visual is None else visual.shape[1]
        if Tv:  # the closing [SEP] in the same lookup: one dense gradient of the word table per pass, not two
            words = self.word_embeddings(torch.cat([text_ids, text_ids.new_full((B, 1), cfg.sep_token_id)], 1))
        else:
            words = self.word_embeddings(text_ids)
        embeds = [words[:, :Tt]]  # (B, Tt, H)
        attention = [text_attention.bool()]
        segments = [torch.full((B, Tt), text_segment, dtype=torch.long, device=device)]
        if Tv and self.visual_embeddings is None:
            raise ModelError("this transformer is a text stack (no visual embeddings); pass text only")
        if Tv:
            if visual_attention is None or visual_attention.shape != visual.shape[:2] or visual.shape[0] != B:
                raise ModelError(f"visual {tuple(visual.shape)} needs visual_attention of shape ({B}, {Tv}), "
                                 f"got {None if visual_attention is None else tuple(visual_attention.shape)}")
            visual_attention = visual_attention.bool()
            embeds.append(visual if visual_embedded else self.visual_embeddings(visual, visual_masked))  # (B, Tv, H)
            attention.append(visual_attention)
            embeds.append(words[:, Tt:].to(embeds[-1].dtype))  # (B, 1, H) the closing [SEP]
            attention.append(visual_attention.any(1, keepdim=True))  # (B, 1) only after a visual side
            segments.append(torch.ones((B, Tv + 1), dtype=torch.long, device=device))
        x = torch.cat(embeds, 1)  # (B, L, H)
        attention = torch.cat(attention, 1)  # (B, L)
        segments = torch.cat(segments, 1)  # (B, L)
        if x.shape[1] > cfg.max_positions and int(attention.sum(1).max()) > cfg.max_positions:
            raise ModelError(f"a sequence has {int(attention.sum(1).max())} tokens, more than "
                             f"model.max_positions={cfg.max_positions}; shorten the text or visual side")
        # real tokens only: padding never shifts a position (padding columns repeat the last one, unattended)
        positions = (attention.cumsum(1) - 1).clamp(0, cfg.max_positions - 1)  # (B, L)
        x = x + self.segment_embeddings(segments) + self.position_embeddings(positions)
        x = self.embedding_dropout(self.embedding_norm(x))
        # No mask when nothing is padded lets the fused kernels run; finding that out reads the
        # mask on the host, a device sync per pass on CUDA, so there the mask always goes in.
        unpadded = attention.device.type == "cpu" and bool(attention.all())
        attn_mask = None if unpadded else attention[:, None, None, :]  # (B, 1, 1, L) True = attend
        if text_select is None and visual_select is None:
            for layer in self.layers:
                x = layer(x, attn_mask)
            return JointOutput(attention, x, x[:, :Tt], x[:, Tt:Tt + Tv] if Tv else None)

        # the last layer only where a loss reads
        select = torch.zeros_like(attention)  # (B, L)
        if text_select is not None:
            select[:, :Tt] = text_select
        if visual_select is not None and Tv:
            select[:, Tt:Tt + Tv] = visual_select
        for layer in self.layers[:-1]:
            x = layer(x, attn_mask)
        selected = self.layers[-1](x, attn_mask, select)  # (M, H) in row-major order
        is_text = (torch.arange(x.shape[1], device=device) < Tt).expand(B, -1)[select]  # (M,)
        return JointOutput(attention, text_selected=selected[is_text], visual_selected=selected[~is_text])

    def cls(self, text_ids: torch.Tensor, text_attention: torch.Tensor, visual: torch.Tensor | None = None,
            visual_attention: torch.Tensor | None = None, text_segment: int = 0,
            visual_embedded: bool = False) -> torch.Tensor:
        """(B, H) the final hidden state of column 0 (``[CLS]``) alone, what the
        alignment head and the projections read: ``forward(...).cls`` with the
        last layer's output projection and feed-forward block run at that
        column only (its keys and values still come from every token)."""
        select = torch.zeros_like(text_attention, dtype=torch.bool)
        select[:, 0] = True
        return self(text_ids, text_attention, visual, visual_attention, text_segment=text_segment,
                    text_select=select, visual_embedded=visual_embedded).text_selected

    # -- initialisation from elsewhere

    @torch.no_grad()
    def init_visual_from_centroids(self, centroids: np.ndarray | torch.Tensor) -> None:
        """VideoBERT: word table rows from the vocabulary's (num_words, dim)
        centroids (``Vocabulary.word_centroids()``), see VisualWordEmbeddings."""
        if not isinstance(self.visual_embeddings, VisualWordEmbeddings):
            raise ModelError("init_visual_from_centroids needs model.mode=videobert (CBT has no word table)")
        target_std = float(self.word_embeddings.weight.std())
        self.visual_embeddings.init_from_centroids(centroids, target_std)
        log.info("visual word embeddings initialised from %d centroids (PCA, std %.4f)", len(centroids), target_std)

    @torch.no_grad()
    def load_text_from_bert(self, path: str) -> dict[str, torch.Tensor]:
        """Text word, position and segment embeddings, the embedding LayerNorm
        and every encoder layer from a local Hugging Face BERT directory
        (``pkg:NAME/dir`` allowed). The checkpoint's config.json must have this
        model's sizes. Returns the checkpoint tensors not used here (e.g. BERT's
        MLM head, for the caller)."""
        from videolm.model.io import bert_to_joint, read_bert_checkpoint

        bert_config, tensors, where = read_bert_checkpoint(path)
        mapped, unused = bert_to_joint(bert_config, tensors, self.config, where)
        own = self.state_dict()
        for name, value in mapped.items():
            if own[name].shape != value.shape:
                raise ModelError(f"{where}: tensor for {name} has shape {tuple(value.shape)}, "
                                 f"the model needs {tuple(own[name].shape)}")
            own[name].copy_(value)
        log.info("text side initialised from %s (%d tensors)", where, len(mapped))
        return unused
