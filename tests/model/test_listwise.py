"""align_loss=listwise: each positive against the dual encoder's hardest
other-group candidates, a softmax over the list (LCE, Gao et al. 2021)."""

from __future__ import annotations

import math

import pytest
import torch

from videolm.data.batch import IGNORE
from videolm.model.errors import ModelError
from videolm.model.losses import listwise_alignment_loss
from videolm.model.negatives import alignment_lists
from videolm.model.pretraining import VideoLMForPretraining

from .conftest import make_batch, tiny_config


def test_lists_hold_the_most_similar_other_group_candidates_by_hand():
    groups = torch.tensor([0, 0, 1, 2, 3])
    sim = torch.tensor([[9., 8., 1., 5., 3.],
                        [7., 9., 6., 2., 4.],
                        [0., 5., 9., 3., 8.],
                        [4., 1., 2., 9., 0.],
                        [6., 2., 7., 1., 9.]])
    valid = torch.tensor([True, True, True, True, False])  # row 4 has no visual side
    lists = alignment_lists(groups, sim, 3, torch.arange(5), valid)
    assert lists.rows.tolist() == [0, 1, 2, 3]
    # text 0: other-group videos (2, 3; 4 is not valid) by score: 5 (3), 1 (2), one slot short;
    # text 2: 5 (1), 3 (3), 0 (0)
    assert lists.text_lists.tolist() == [[3, 2, -1], [2, 3, -1], [1, 3, 0], [0, 2, 1]]
    # video 0, by column 0: texts 3 (4), 2 (0); video 2: 1 (6), 3 (2), 0 (1); video 3: 0 (5), 2 (3), 1 (2)
    assert lists.video_lists.tolist() == [[3, 2, -1], [2, 3, -1], [1, 3, 0], [0, 2, 1]]


def test_listwise_loss_by_hand():
    inf = float("inf")
    logits = torch.tensor([[2.0, 1.0, -inf], [0.5, -inf, -inf], [-1.0, 3.0, 0.0]])
    by_hand = [-(2.0 - math.log(math.exp(2.0) + math.exp(1.0))),
               -(-1.0 - math.log(math.exp(-1.0) + math.exp(3.0) + math.exp(0.0)))]  # row 1: no candidate
    assert listwise_alignment_loss(logits, "sum").item() == pytest.approx(sum(by_hand), rel=1e-6)
    assert listwise_alignment_loss(logits, "mean").item() == pytest.approx(sum(by_hand) / 2, rel=1e-6)


@pytest.mark.parametrize("mode", ["videobert", "cbt"])
def test_model_loss_equals_the_lists_scored_one_pair_at_a_time(mode):
    """The batched assembly against a loop: each list's pairs scored on their own by
    alignment_score, the cross-entropy of the positive computed with F.cross_entropy."""
    torch.manual_seed(0)
    n = 2
    model = VideoLMForPretraining(tiny_config(mode, align_loss="listwise", align_list_negatives=n, mlm_weight=0.0,
                                              visual_weight=0.0, contrastive_weight=0.0)).eval()
    batch = make_batch(mode, text_lens=(5, 7, 4, 6, 5), visual_lens=(3, 4, 2, 4, 3), groups=(0, 0, 1, 2, 3))
    with torch.no_grad():
        out = model(batch)
        visual = batch.visual_ids if mode == "videobert" else batch.visual_feats
        text = torch.where(batch.text_labels != IGNORE, batch.text_labels, batch.text_ids)
        clean = torch.where(batch.visual_labels != IGNORE, batch.visual_labels, visual) if mode == "videobert" \
            else visual
        t_emb = model.encode_text(text, batch.text_attention)
        v_emb = model.encode_video(clean, batch.visual_attention)
        sim = (t_emb @ v_emb.T).tolist()

        def score(i, j):
            return model.alignment_score(text[i:i + 1], batch.text_attention[i:i + 1], clean[j:j + 1],
                                         batch.visual_attention[j:j + 1])[0]

        groups = batch.group_ids.tolist()
        losses = []
        for i in range(5):
            others = [j for j in range(5) if groups[j] != groups[i]]
            videos = sorted(others, key=lambda j: -sim[i][j])[:n]
            texts = sorted(others, key=lambda j: -sim[j][i])[:n]
            for cands in ([score(i, j) for j in videos], [score(j, i) for j in texts]):
                row = torch.stack([score(i, i), *cands])
                losses.append(torch.nn.functional.cross_entropy(row[None], torch.tensor([0])))
    assert out.losses["align"].item() == pytest.approx(torch.stack(losses).mean().item(), rel=1e-4)
    assert out.loss.item() == pytest.approx(out.losses["align"].item(), rel=1e-6)


def test_listwise_trains_the_head_and_both_modalities():
    torch.manual_seed(0)
    model = VideoLMForPretraining(tiny_config("cbt", align_loss="listwise")).train()
    out = model(make_batch("cbt"), generator=torch.Generator().manual_seed(0))
    out.losses["align"].backward()
    assert model.align_head.classifier.weight.grad.abs().sum() > 0
    assert model.transformer.visual_embeddings.projection.weight.grad.abs().sum() > 0
    assert model.transformer.word_embeddings.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("overrides, message", [
    (dict(align_hard_negatives=False), "set model.align_hard_negatives to true"),
    (dict(align_on_masked_pass=True), "set model.align_on_masked_pass to false"),
    (dict(align_list_negatives=0), "model.align_list_negatives must be >= 1"),
])
def test_listwise_config_errors_are_one_line(overrides, message):
    with pytest.raises(ModelError, match=message):
        tiny_config("cbt", align_loss="listwise", **overrides).validate()
    with pytest.raises(ModelError, match="bce, nce, listwise"):
        tiny_config("cbt", align_loss="lce").validate()
