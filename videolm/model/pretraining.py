"""VideoLMForPretraining: the joint transformer, its heads, and the objectives.

One ``forward(batch)`` computes every objective whose weight is above 0:

1. masked modelling, one joint pass over the masked batch
   ``[CLS] text [SEP] visual [SEP]``: masked LM ("mlm") and masked visual
   words (VideoBERT) or masked-feature NCE (CBT) ("visual");
2. the dual encoder on clean copies (masked ids put back): text alone
   ``[CLS] text [SEP]`` and video alone ``[CLS] visual [SEP]``, each [CLS]
   projected and L2-normalised; symmetric InfoNCE ("contrastive");
3. alignment: positives, random and hard negatives (videolm.model.negatives)
   in one joint pass, [CLS] -> logit, binary cross-entropy ("align").

``loss`` is the weighted sum. Rows without a visual side take part in the
masked LM only; an objective that is on always has its key in ``losses``
(0 when the batch gives it nothing to score, e.g. no masked position).
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from videolm.data.batch import IGNORE, Batch
from videolm.model import io
from videolm.model.config import MIN_TEMPERATURE, ModelConfig
from videolm.model.errors import ModelError
from videolm.model.heads import AlignmentHead, FeatureHead, MaskedTokenHead, ProjectionHead
from videolm.model.losses import alignment_loss, contrastive_loss, masked_feature_nce, masked_token_loss
from videolm.model.negatives import alignment_pairs
from videolm.model.transformer import JointTransformer, init_bert_weights

log = logging.getLogger(__name__)

@dataclass
class PretrainOutput:
    loss: torch.Tensor                                              # scalar, sum of the weighted objectives
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # "mlm", "visual", "align", "contrastive" (those on)
    mlm_logits: torch.Tensor | None = None     # (M, text vocab) at the M masked text positions only
    visual_logits: torch.Tensor | None = None  # VideoBERT (Mv, visual vocab) / CBT (Mv, feature_dim) predicted features
    text_embeds: torch.Tensor | None = None    # (B', E) dual-encoder text embeddings (rows with a visual side)
    video_embeds: torch.Tensor | None = None   # (B', E) dual-encoder video embeddings
    align_logits: torch.Tensor | None = None   # (N,) alignment logits of the pairs
    align_labels: torch.Tensor | None = None   # (N,) 1 positive, 0 negative


class VideoLMForPretraining(nn.Module):
    def __init__(self, config: ModelConfig, load_init: bool = True):
        """``load_init``: apply ``config.init_text_from`` (from_pretrained turns it off)."""
        super().__init__()
        self.config = config.validate()
        self.transformer = JointTransformer(config)
        self.mlm_head = MaskedTokenHead(config, config.text_vocab_size)
        self.visual_head = (MaskedTokenHead(config, config.visual_vocab_size) if config.mode == "videobert"
                            else FeatureHead(config))
        self.align_head = AlignmentHead(config)
        self.text_projection = ProjectionHead(config)
        self.video_projection = ProjectionHead(config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.contrastive_temperature)))
        for head in (self.mlm_head, self.visual_head, self.align_head, self.text_projection, self.video_projection):
            head.apply(lambda m: init_bert_weights(m, config.initializer_range))
        if load_init and config.init_text_from:
            self.load_text_from_bert(config.init_text_from)

    # -- the three ways to run the transformer that evaluation also uses

    def encode_text(self, text_ids: torch.Tensor, text_attention: torch.Tensor) -> torch.Tensor:
        """``[CLS] text [SEP]`` (segment 0) -> (B, embed_dim), L2-normalised."""
        return self.text_projection(self.transformer(text_ids, text_attention).cls)

    def encode_video(self, visual: torch.Tensor, visual_attention: torch.Tensor) -> torch.Tensor:
        """``[CLS] visual [SEP]`` (segment 1) -> (B, embed_dim), L2-normalised.
        visual: (B, Tv) word ids (VideoBERT) or (B, Tv, D) features (CBT)."""
        B = visual.shape[0]
        cls = torch.full((B, 1), self.config.cls_token_id, dtype=torch.long, device=visual.device)
        cls_attention = torch.ones((B, 1), dtype=torch.bool, device=visual.device)
        out = self.transformer(cls, cls_attention, visual, visual_attention, text_segment=1)
        return self.video_projection(out.cls)

    def alignment_score(self, text_ids: torch.Tensor, text_attention: torch.Tensor, visual: torch.Tensor,
                        visual_attention: torch.Tensor) -> torch.Tensor:
        """(B,) logits that row i's text and visual side belong together (joint pass, [CLS])."""
        return self.align_head(self.transformer(text_ids, text_attention, visual, visual_attention).cls)

    def contrastive_scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped at 1 / MIN_TEMPERATURE as in CLIP."""
        return self.logit_scale.clamp(max=math.log(1.0 / MIN_TEMPERATURE)).exp()

    # -- training

    def forward(self, batch: Batch, generator: torch.Generator | None = None) -> PretrainOutput:
        cfg = self.config
        videobert = cfg.mode == "videobert"
        visual = batch.visual_ids if videobert else batch.visual_feats
        if visual is None:
            raise ModelError(f"model.mode={cfg.mode} needs batch.{'visual_ids' if videobert else 'visual_feats'}; "
                             "the data was built for the other mode")
        losses, out = {}, PretrainOutput(loss=torch.zeros(()))

        # 1. masked modelling on the masked batch; the last layer runs only where a loss reads
        if cfg.enabled("mlm_weight") or cfg.enabled("visual_weight"):
            text_where = batch.text_labels != IGNORE  # (B, Tt)
            if videobert:
                visual_where = batch.visual_labels != IGNORE  # (B, Tv)
            else:
                visual_where = batch.visual_masked & batch.visual_attention  # (B, Tv)
            joint = self.transformer(batch.text_ids, batch.text_attention, visual, batch.visual_attention,
                                     batch.visual_masked,
                                     text_select=text_where if cfg.enabled("mlm_weight") else None,
                                     visual_select=visual_where if cfg.enabled("visual_weight") else None)
            if cfg.enabled("mlm_weight"):
                out.mlm_logits = self.mlm_head(joint.text_selected, self.transformer.word_embeddings.weight)
                losses["mlm"] = masked_token_loss(out.mlm_logits, batch.text_labels[text_where])
            if cfg.enabled("visual_weight"):
                if videobert:
                    out.visual_logits = self.visual_head(joint.visual_selected,
                                                         self.transformer.visual_embeddings.table.weight)
                    losses["visual"] = masked_token_loss(out.visual_logits, batch.visual_labels[visual_where])
                else:
                    out.visual_logits = self.visual_head(joint.visual_selected)  # (Mv, D)
                    losses["visual"] = masked_feature_nce(out.visual_logits, visual[visual_where], None,
                                                          cfg.nce_temperature, cfg.nce_normalize)

        # 2. + 3. need clean copies of the rows that have a visual side
        need_embeds = cfg.enabled("contrastive_weight") or (cfg.enabled("align_weight") and cfg.align_hard_negatives)
        if cfg.enabled("contrastive_weight") or cfg.enabled("align_weight"):
            has_visual = batch.visual_attention.any(1)  # (B,)
            rows = slice(None) if bool(has_visual.all()) else has_visual.nonzero().squeeze(1)
            text_ids = torch.where(batch.text_labels != IGNORE, batch.text_labels, batch.text_ids)[rows]
            text_attention = batch.text_attention[rows]
            clean_visual = (torch.where(batch.visual_labels != IGNORE, batch.visual_labels, visual) if videobert
                            else visual)[rows]
            visual_attention = batch.visual_attention[rows]
            group_ids = batch.group_ids[rows]

            if not len(text_ids):  # no row has a visual side: the objectives are on but have nothing to score
                zero = batch.text_ids.new_zeros((), dtype=torch.float32)
                losses.update({name: zero for name in ("contrastive", "align") if cfg.enabled(f"{name}_weight")})
            elif need_embeds:
                # with the contrastive objective off, embeddings only pick hard negatives: no graph
                with contextlib.nullcontext() if cfg.enabled("contrastive_weight") else torch.no_grad():
                    out.text_embeds = self.encode_text(text_ids, text_attention)
                    out.video_embeds = self.encode_video(clean_visual, visual_attention)
                if cfg.enabled("contrastive_weight"):
                    losses["contrastive"] = contrastive_loss(out.text_embeds, out.video_embeds,
                                                             self.contrastive_scale(), group_ids)

            if cfg.enabled("align_weight") and len(text_ids):
                similarity = out.text_embeds.detach() @ out.video_embeds.detach().T if cfg.align_hard_negatives else None
                pairs = alignment_pairs(group_ids, cfg.align_random_negatives, generator, similarity)
                out.align_logits = self.alignment_score(text_ids[pairs.text_index], text_attention[pairs.text_index],
                                                        clean_visual[pairs.video_index],
                                                        visual_attention[pairs.video_index])
                out.align_labels = pairs.labels
                losses["align"] = alignment_loss(out.align_logits, pairs.labels)

        weights = {"mlm": cfg.mlm_weight, "visual": cfg.visual_weight, "align": cfg.align_weight,
                   "contrastive": cfg.contrastive_weight}
        out.loss = sum(weights[name] * value for name, value in losses.items())
        out.losses = losses
        return out

    # -- initialisation and files

    @torch.no_grad()
    def load_text_from_bert(self, path: str) -> None:
        """The transformer's text side from a local BERT directory (see
        JointTransformer.load_text_from_bert), plus BERT's MLM-head transform
        and bias when the checkpoint has them (BertForMaskedLM, BertForPreTraining)."""
        unused = self.transformer.load_text_from_bert(path)
        own = self.state_dict()
        found = [name for name in io.BERT_MLM_HEAD if name in unused]
        for name in found:
            own[io.BERT_MLM_HEAD[name]].copy_(unused[name])
        if found:
            log.info("masked-LM head initialised from %s (%d tensors)", path, len(found))

    def save_pretrained(self, directory: str, tokenizer=None, vocabulary=None) -> str:
        """config.json + model.safetensors (+ tokenizer files, + vocab/ in VideoBERT mode), atomically."""
        return io.save_pretrained(self, self.config, directory, tokenizer, vocabulary)

    @classmethod
    def from_pretrained(cls, directory: str, device: str | torch.device = "cpu") -> "VideoLMForPretraining":
        """The model ``save_pretrained`` wrote, in eval mode (as Hugging Face
        returns it); nothing is unpickled and ``init_text_from`` is not re-applied."""
        config = io.read_config(directory)
        tensors = io.load_state(directory, device)
        model = cls(config, load_init=False)
        io.check_state(model, tensors, f"{directory}/{io.WEIGHTS_FILE}")
        model.load_state_dict(tensors)
        return model.to(device).eval()
