"""VideoLMForPretraining: the joint transformer, its heads, and the objectives.

One ``forward(batch)`` computes every objective whose weight is above 0:

1. masked modelling, one joint pass over the masked batch
   ``[CLS] text [SEP] visual [SEP]``: masked LM ("mlm") and masked visual
   words (VideoBERT) or masked-feature NCE (CBT) ("visual");
2. the dual encoder on clean copies (masked ids put back): text alone
   ``[CLS] text [SEP]`` and video alone ``[CLS] visual [SEP]``, each [CLS]
   projected and L2-normalised; symmetric InfoNCE ("contrastive");
3. alignment: positives, random and hard negatives (videolm.model.negatives)
   in one joint pass, [CLS] -> logit, binary cross-entropy ("align"); or,
   with ``align_on_masked_pass``, on the [CLS] of pass 1, where some rows
   carry another video's visual side (BERT's next-sentence prediction): no
   extra pass.

Under torchrun the candidates of InfoNCE, masked-feature NCE and the
alignment negatives come from every rank (videolm.model.gather), so the
objectives are those of one process over the global batch.

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
from videolm.model.gather import RankGroup, pad_dim1
from videolm.model.heads import AlignmentHead, FeatureHead, MaskedTokenHead, ProjectionHead
from videolm.model.losses import (alignment_loss, contrastive_loss, info_nce, listwise_alignment_loss,
                                  masked_feature_nce, masked_token_loss)
from videolm.model.negatives import alignment_lists, alignment_pairs
from videolm.model.transformer import JointTransformer, init_bert_weights
from videolm.model.two_stream import TwoStreamTransformer

log = logging.getLogger(__name__)

MASKED_PASS_NEGATIVE_PROB = 0.5  # align_on_masked_pass: share of rows given another video's visual side (BERT's NSP)


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
        self.transformer = (JointTransformer(config) if config.arch == "single_stream"
                            else TwoStreamTransformer(config))
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
        """``[CLS] text [SEP]`` (segment 0) -> (B, embed_dim), L2-normalised.
        Two-stream: the text stack alone."""
        if self.config.arch == "two_stream":
            return self.text_projection(self.transformer.text.cls(text_ids, text_attention))
        return self.text_projection(self.transformer.cls(text_ids, text_attention))

    def encode_video(self, visual: torch.Tensor, visual_attention: torch.Tensor) -> torch.Tensor:
        """``[CLS] visual [SEP]`` (segment 1) -> (B, embed_dim), L2-normalised.
        visual: (B, Tv) word ids (VideoBERT) or (B, Tv, D) features (CBT).
        Two-stream: ``[IMG] visual`` through the visual stack alone."""
        if self.config.arch == "two_stream":
            return self.video_projection(self.transformer.visual(visual, visual_attention).cls)
        B = visual.shape[0]
        cls = torch.full((B, 1), self.config.cls_token_id, dtype=torch.long, device=visual.device)
        cls_attention = torch.ones((B, 1), dtype=torch.bool, device=visual.device)
        return self.video_projection(self.transformer.cls(cls, cls_attention, visual, visual_attention,
                                                          text_segment=1))

    def alignment_score(self, text_ids: torch.Tensor, text_attention: torch.Tensor, visual: torch.Tensor,
                        visual_attention: torch.Tensor, visual_embedded: bool = False) -> torch.Tensor:
        """(B,) logits that row i's text and visual side belong together (joint pass, [CLS];
        two-stream: text [CLS] * visual [IMG] after the cross layers). ``visual_embedded``:
        ``visual`` is the visual embedding module's (B, Tv, H) output (``pair_visual``)."""
        return self.align_head(self.transformer.cls(text_ids, text_attention, visual, visual_attention,
                                                    visual_embedded=visual_embedded))

    def pair_visual(self, visual: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The visual sides ``visual[index]`` of a list of pairs, for ``alignment_score``, and
        whether they are embedded. CBT mode: each distinct row goes through the feature
        embedding once and is then repeated, so a video that several pairs share (a pair list
        holds each about four times) is projected from its D dims once; the same values,
        summed in another order (measured on the quickstart's CBT run, 2 cores: 1.13-1.18x
        the examples per second). On CUDA every row of ``visual`` is embedded, as finding
        the distinct ones would synchronise the device. VideoBERT mode: the word ids
        themselves (a lookup is a copy)."""
        if self.config.mode != "cbt":
            return visual[index], False
        module = self.transformer.visual_embeddings  # two-stream: its visual stack's
        # index_select, not [...]: its backward adds a video's repeats in order (index_add), where an
        # indexing's backward adds them in whatever order the threads reach them, a run-to-run difference
        if index.device.type != "cpu":
            return module(visual).index_select(0, index), True
        rows, where = torch.unique(index, return_inverse=True)
        return module(visual[rows]).index_select(0, where), True

    def masked_text_logits(self, text_ids: torch.Tensor, text_attention: torch.Tensor, visual: torch.Tensor,
                           visual_attention: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
        """(M, text vocab) masked-LM logits at the (B, Tt) ``select`` positions,
        row-major, in the context the masked LM trains in (joint pass; two-stream
        with ``masked_context: own``, the text stack alone)."""
        joint = self._masked_runner()(text_ids, text_attention, visual, visual_attention, text_select=select)
        return self.mlm_head(joint.text_selected, self.transformer.word_embeddings.weight)

    def _masked_runner(self):
        """The transformer call the masked objectives read: the joint (cross) pass, or the stacks alone."""
        if self.config.arch == "two_stream" and self.config.masked_context == "own":
            return self.transformer.streams
        return self.transformer

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part: embeddings, the stacks (joint; or text, visual
        and cross layers), heads (with the contrastive temperature). Tied
        decoders own no tensor, so nothing counts twice."""
        if self.config.arch == "single_stream":
            parts = [("transformer.layers.", "joint stack")]
        else:
            parts = [("transformer.text.layers.", "text stack"), ("transformer.visual.layers.", "visual stack"),
                     ("transformer.cross.", "cross layers")]
        counts = {name: 0 for _, name in parts} | {"embeddings": 0, "heads": 0}
        for name, p in self.named_parameters():
            part = next((label for prefix, label in parts if name.startswith(prefix)),
                        "embeddings" if name.startswith("transformer.") else "heads")
            counts[part] += p.numel()
        return counts

    def contrastive_scale(self) -> torch.Tensor:
        """exp(logit_scale). Not clamped here: a clamp inside forward has zero
        gradient past the bound, so Adam's momentum could hold the parameter
        there for good; ``clamp_parameters`` clamps the value after each step, as CLIP does."""
        return self.logit_scale.exp()

    @torch.no_grad()
    def clamp_parameters(self) -> None:
        """After every optimizer step: keep the temperature >= MIN_TEMPERATURE
        (logit_scale <= log(100), CLIP's bound)."""
        self.logit_scale.clamp_(max=math.log(1.0 / MIN_TEMPERATURE))

    # -- training

    def forward(self, batch: Batch, generator: torch.Generator | None = None,
                ranks: RankGroup | None = None) -> PretrainOutput:
        """``generator`` draws the random alignment negatives (the same on every
        rank: it draws for the global batch). ``ranks``: the ranks whose
        micro-batches form the global batch (videolm.model.gather); None for one
        process. With N ranks every objective is what one process computes over
        the N micro-batches together: candidates come from every rank, and a
        loss that is a mean over items (masked tokens, pairs) is divided by the
        global item count (each rank returns N x its share, which DDP's
        gradient average turns back into the global mean)."""
        cfg = self.config
        ranks = ranks or RankGroup()
        W, rank = ranks.world_size, ranks.rank
        videobert = cfg.mode == "videobert"
        visual = batch.visual_ids if videobert else batch.visual_feats
        if visual is None:
            raise ModelError(f"model.mode={cfg.mode} needs batch.{'visual_ids' if videobert else 'visual_feats'}; "
                             "the data was built for the other mode")
        B, Tt, Tv = len(batch), batch.text_ids.shape[1], visual.shape[1]
        if ranks.enabled:  # padding sizes for the gathers, and one micro-batch size everywhere
            big, Tt, Tv, minus_small = ranks.max_ints([B, Tt, Tv, -B])
            if big != -minus_small:
                raise ModelError(f"micro-batches of {-minus_small} to {big} rows across ranks; the contrastive "
                                 "gathers need the same micro-batch size on every rank")
        visual_pad = cfg.visual_pad_id if videobert else 0
        mlm_on, visual_on = cfg.enabled("mlm_weight"), cfg.enabled("visual_weight")
        contrastive_on, align_on = cfg.enabled("contrastive_weight"), cfg.enabled("align_weight")
        align_nce = align_on and cfg.align_loss == "nce"          # CBT's cross-modal NCE over every pair
        align_masked = align_on and cfg.align_on_masked_pass      # scored on the masked joint pass
        align_separate = align_on and not cfg.align_on_masked_pass and not align_nce  # its own clean joint pass
        # (listwise needs align_hard_negatives, so this covers it)
        need_embeds = contrastive_on or (align_on and cfg.align_hard_negatives and not align_nce)
        has_visual = batch.visual_attention.any(1)  # (B,) rows without a visual side: masked LM only
        out = PretrainOutput(loss=torch.zeros(()))
        losses: dict[str, torch.Tensor] = {}
        terms: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (sum over items here, item count here)

        # the global batch's row metadata, and clean copies (masked ids put back)
        meta = ranks.gather(torch.stack([batch.group_ids, has_visual.long()], 1))  # (W*B, 2)
        all_groups, all_valid = meta[:, 0], meta[:, 1].bool()
        text_ids = torch.where(batch.text_labels != IGNORE, batch.text_labels, batch.text_ids)  # (B, Tt)
        clean_visual = (torch.where(batch.visual_labels != IGNORE, batch.visual_labels, visual) if videobert
                        else visual)

        # 1. the dual encoder on every row: text alone, video alone; InfoNCE over the global batch
        similarity = None  # (W*B, W*B) detached text-by-video scores, for hard negatives
        if need_embeds:
            # with the contrastive objective off, embeddings only pick hard negatives: no graph
            with contextlib.nullcontext() if contrastive_on else torch.no_grad():
                out.text_embeds = self.encode_text(text_ids, batch.text_attention)  # (B, E)
                out.video_embeds = self.encode_video(clean_visual, batch.visual_attention)  # (B, E)
            both = ranks.gather(torch.cat([out.text_embeds, out.video_embeds], 1), grad=contrastive_on)
            all_text, all_video = both.split(cfg.embed_dim, dim=1)  # (W*B, E) each
            if contrastive_on:
                losses["contrastive"] = contrastive_loss(all_text, all_video, self.contrastive_scale(), all_groups,
                                                         all_valid)
            if align_on and cfg.align_hard_negatives:
                similarity = (all_text.detach() @ all_video.detach().T).float()
                if cfg.align_hard_sampling == "softmax":  # the dual encoder's logits, as its loss reads them
                    similarity = similarity * self.contrastive_scale().detach().float()

        # 2. masked modelling on the masked batch; the last layer runs only where a loss reads.
        # With align_on_masked_pass, some rows' visual sides are swapped for another video's
        # (BERT's next-sentence negatives) and [CLS] scores the alignment in the same pass.
        if mlm_on or visual_on or align_masked:
            swap = torch.arange(B, device=visual.device)  # (B,) whose visual side each row gets
            negative = torch.zeros(B, dtype=torch.bool, device=visual.device)
            if align_masked:
                swap, negative = self._masked_pass_negatives(batch.group_ids, has_visual, generator, ranks,
                                                             None if similarity is None else
                                                             similarity[rank * B:(rank + 1) * B,
                                                                        rank * B:(rank + 1) * B])
            m_visual, m_attention, m_masked = visual, batch.visual_attention, batch.visual_masked  # (B, Tv[, D])
            m_labels = batch.visual_labels if videobert else None
            if align_masked:  # (no copy of the batch's features otherwise)
                m_visual, m_attention, m_masked = visual[swap], m_attention[swap], m_masked[swap]
                m_labels = m_labels[swap] if videobert else None
            text_where = batch.text_labels != IGNORE  # (B, Tt)
            visual_where = m_labels != IGNORE if videobert else m_masked & m_attention  # (B, Tv)
            cls_column = torch.zeros_like(text_where)
            cls_column[:, 0] = align_masked
            text_select = None
            if mlm_on or align_masked:
                text_select = (text_where if mlm_on else torch.zeros_like(text_where)) | cls_column
            joint = self._masked_runner()(batch.text_ids, batch.text_attention, m_visual, m_attention, m_masked,
                                          text_select=text_select, visual_select=visual_where if visual_on else None)
            text_hidden = joint.text_selected  # (Mt [+ B], H), row-major
            if align_masked:
                is_cls = cls_column[text_select]  # (Mt + B,)
                cls = text_hidden[is_cls] if joint.joint_cls is None else joint.joint_cls  # (B, H)
                out.align_logits = self.align_head(cls)  # (B,)
                out.align_labels = (~negative).float()
                weight = has_visual.float()  # rows without a visual side have no pair to score
                per_row = alignment_loss(out.align_logits, out.align_labels, "none")  # (B,)
                terms["align"] = ((per_row * weight).sum(), weight.sum())
                text_hidden = text_hidden[~is_cls]
            if mlm_on:
                out.mlm_logits = self.mlm_head(text_hidden, self.transformer.word_embeddings.weight)
                terms["mlm"] = (masked_token_loss(out.mlm_logits, batch.text_labels[text_where], "sum"),
                                text_where.sum())
            if visual_on and videobert:
                out.visual_logits = self.visual_head(joint.visual_selected,
                                                     self.transformer.visual_embeddings.table.weight)
                terms["visual"] = (masked_token_loss(out.visual_logits, m_labels[visual_where], "sum"),
                                   visual_where.sum())
            elif visual_on:
                out.visual_logits = self.visual_head(joint.visual_selected)  # (Mv, D)
                negatives = None
                if ranks.enabled:  # the other ranks' masked clips are candidates too
                    all_feats = ranks.gather(pad_dim1(m_visual, Tv, 0.0))  # (W*B, Tv, D)
                    all_where = ranks.gather(pad_dim1(visual_where, Tv, False))  # (W*B, Tv)
                    elsewhere = torch.arange(W * B, device=visual.device) // B != rank  # (W*B,)
                    negatives = all_feats[all_where & elsewhere[:, None]]  # (N, D)
                terms["visual"] = (masked_feature_nce(out.visual_logits, m_visual[visual_where], None,
                                                      cfg.nce_temperature, cfg.nce_normalize, "sum", negatives),
                                   visual_where.sum())

        # 3. alignment on its own clean joint pass: positives, random and hard negatives over the
        # global batch; every rank builds the same pair list and runs its share (every W-th pair)
        if align_separate:
            all_text_ids = ranks.gather(pad_dim1(text_ids, Tt, cfg.pad_token_id))  # (W*B, Tt)
            all_text_attention = ranks.gather(pad_dim1(batch.text_attention, Tt, False))
            all_visual = ranks.gather(pad_dim1(clean_visual, Tv, visual_pad))  # (W*B, Tv[, D])
            all_visual_attention = ranks.gather(pad_dim1(batch.visual_attention, Tv, False))
            if cfg.align_loss == "listwise":
                out.align_logits, out.align_labels, terms["align"] = self._listwise_alignment(
                    all_text_ids, all_text_attention, all_visual, all_visual_attention, all_groups, all_valid,
                    similarity, torch.arange(rank * B, (rank + 1) * B, device=visual.device))
            else:
                pairs = alignment_pairs(all_groups, cfg.align_random_negatives, generator,
                                        similarity if cfg.align_hard_negatives else None, all_valid,
                                        cfg.align_hard_sampling)
                t, v, labels = pairs.text_index[rank::W], pairs.video_index[rank::W], pairs.labels[rank::W]
                pair_visual, embedded = self.pair_visual(all_visual, v)
                out.align_logits = self.alignment_score(all_text_ids[t], all_text_attention[t], pair_visual,
                                                        all_visual_attention[v], embedded)
                out.align_labels = labels
                terms["align"] = (alignment_loss(out.align_logits, labels, "sum"), torch.tensor(len(labels)))

        # 3'. CBT's cross-modal NCE (two-stream): the stacks run once per clean text and video, the
        # cross layers score each of this rank's texts against every video of the global batch, and
        # symmetric InfoNCE runs over the gathered (W*B, W*B) score matrix (gradient through both gathers)
        if align_nce:
            out.align_logits, out.align_labels, losses["align"] = self._cross_nce(
                text_ids, batch.text_attention, clean_visual, batch.visual_attention, Tv, ranks, all_groups,
                all_valid)

        # means over the global batch: one collective for every count
        if terms:
            names = list(terms)
            counts = ranks.sum(torch.stack([terms[n][1].to(visual.device, torch.float32) for n in names]))
            for name, count in zip(names, counts):
                losses[name] = terms[name][0] * W / count.clamp(min=1.0)
        weights = {"mlm": cfg.mlm_weight, "visual": cfg.visual_weight, "align": cfg.align_weight,
                   "contrastive": cfg.contrastive_weight}
        out.losses = {name: losses[name] for name in ("mlm", "visual", "align", "contrastive") if name in losses}
        out.loss = sum(weights[name] * value for name, value in out.losses.items())
        return out

    def _listwise_alignment(self, text_ids, text_attention, visual, visual_attention, groups, valid, similarity,
                            rows):
        """align_loss=listwise on this rank's rows: each text against its positive and the hardest
        other-group videos of the global batch, each video against its positive and the hardest
        texts; one joint pass over the positives and every listed negative. Returns the pairs'
        logits and labels and the loss term (sum over lists, list count)."""
        lists = alignment_lists(groups, similarity, self.config.align_list_negatives, rows, valid)
        R, n = lists.text_lists.shape
        rows = lists.rows
        t_neg, v_neg = lists.text_lists >= 0, lists.video_lists >= 0  # (R, n)
        text_index = torch.cat([rows, rows[:, None].expand(R, n)[t_neg], lists.video_lists[v_neg]])
        video_index = torch.cat([rows, lists.text_lists[t_neg], rows[:, None].expand(R, n)[v_neg]])
        pair_visual, embedded = self.pair_visual(visual, video_index)
        logits = self.alignment_score(text_ids[text_index], text_attention[text_index], pair_visual,
                                      visual_attention[video_index], embedded)  # (P,)
        positive, rest = logits[:R], logits[R:]
        n_t = int(t_neg.sum())
        full = torch.full((2, R, n), float("-inf"), dtype=logits.dtype, device=logits.device)
        full[0][t_neg], full[1][v_neg] = rest[:n_t], rest[n_t:]
        table = torch.cat([positive[None, :, None].expand(2, R, 1), full], 2).reshape(2 * R, n + 1)
        lists_with_candidates = t_neg.any(1).sum() + v_neg.any(1).sum()  # the lists the loss sums over
        labels = (text_index == video_index).float()
        return logits, labels, (listwise_alignment_loss(table, "sum"), lists_with_candidates)

    def _cross_nce(self, text_ids: torch.Tensor, text_attention: torch.Tensor, visual: torch.Tensor,
                   visual_attention: torch.Tensor, Tv: int, ranks: RankGroup, all_groups: torch.Tensor,
                   all_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (B * W*B,), labels, loss): row i's text scored against every
        video of the global batch by the cross layers and the alignment head."""
        rank = ranks.rank
        B = len(text_ids)
        text = self.transformer.text(text_ids, text_attention)  # text_hidden (B, Tt, H)
        vis = self.transformer.visual(visual, visual_attention)  # hidden (B, 1 + Tv, H)
        all_vis = ranks.gather(pad_dim1(vis.hidden, Tv + 1, 0.0), grad=True)  # (W*B, 1 + Tv, H)
        all_vis_attention = ranks.gather(pad_dim1(vis.attention, Tv + 1, False))  # (W*B, 1 + Tv)
        N = len(all_vis)
        rows = []
        for i in range(B):  # one text against the N videos: N pairs through the cross layers
            t = text.text_hidden[i:i + 1].expand(N, -1, -1)  # (N, Tt, H)
            t_att = text.attention[i:i + 1].expand(N, -1)
            fused_text, fused_visual = self.transformer.fuse(t, t_att, all_vis, all_vis_attention)
            rows.append(self.align_head(fused_text[:, 0] * fused_visual[:, 0]))  # (N,) as JointOutput.joint_cls
        scores = ranks.gather(torch.stack(rows), grad=True)  # (W*B, W*B) text-by-video
        labels = torch.eye(N, device=scores.device)[rank * B:(rank + 1) * B].flatten()
        return torch.stack(rows).flatten(), labels, info_nce(scores, all_groups, all_valid)

    def _masked_pass_negatives(self, group_ids: torch.Tensor, has_visual: torch.Tensor,
                               generator: torch.Generator | None, ranks: RankGroup,
                               similarity: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """align_on_masked_pass: which rows of this micro-batch get another
        video's visual side. Each row with a visual side and an other-group
        candidate is a negative with probability MASKED_PASS_NEGATIVE_PROB; its
        partner is the most similar other-group video (align_hard_negatives,
        dual-encoder scores) or a uniform random one. Returns (swap (B,) long,
        negative (B,) bool). Draws are made for the global batch and sliced,
        so ranks draw differently."""
        B, device = len(group_ids), group_ids.device
        W, rank = ranks.world_size, ranks.rank
        gen_device = generator.device if generator is not None else torch.device("cpu")
        coin = torch.rand((W * B,), generator=generator, device=gen_device)[rank * B:(rank + 1) * B].to(device)
        draws = torch.rand((W * B, B), generator=generator, device=gen_device)[rank * B:(rank + 1) * B].to(device)
        other = (group_ids[:, None] != group_ids[None, :]) & has_visual[:, None] & has_visual[None, :]  # (B, B)
        hard = self.config.align_hard_negatives and similarity is not None
        scores = (similarity.float() if hard else draws).masked_fill(~other, float("-inf"))
        partner = scores.argmax(1)  # (B,)
        negative = (coin < MASKED_PASS_NEGATIVE_PROB) & other.any(1)
        rows = torch.arange(B, device=device)
        return torch.where(negative, partner, rows), negative

    # -- initialisation and files

    @torch.no_grad()
    def load_text_from_bert(self, path: str) -> None:
        """The transformer's text side from a local BERT directory (see
        JointTransformer / TwoStreamTransformer.load_text_from_bert), plus BERT's MLM-head transform
        and bias when the checkpoint has them (BertForMaskedLM, BertForPreTraining)."""
        unused = self.transformer.load_text_from_bert(path)
        own = self.state_dict()
        found = [name for name in io.BERT_MLM_HEAD if name in unused]
        for name in found:
            own[io.BERT_MLM_HEAD[name]].copy_(unused[name])
        if found:
            log.info("masked-LM head initialised from %s (%d tensors)", path, len(found))

    def save_pretrained(self, directory: str, tokenizer=None, vocabulary=None,
                        inputs: io.InputSettings | None = None) -> str:
        """config.json + model.safetensors (+ tokenizer files, + vocab/ in VideoBERT mode,
        + preprocessor_config.json), atomically."""
        return io.save_pretrained(self, self.config, directory, tokenizer, vocabulary, inputs)

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
