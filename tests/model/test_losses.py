"""Each loss on a tensor small enough to compute by hand (plain Python math)."""

from __future__ import annotations

import math

import pytest
import torch

from videolm.model.losses import alignment_loss, contrastive_loss, masked_feature_nce, masked_token_loss


def test_masked_token_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0]])
    labels = torch.tensor([1, 0])
    # row 0: uniform over 3 -> ln 3; row 1: p(0) = 2 / (2 + 1 + 1) -> ln 2
    assert masked_token_loss(logits, labels).item() == pytest.approx((math.log(3) + math.log(2)) / 2, abs=1e-6)


def test_masked_feature_nce_by_hand():
    # two rows of three positions, 2-dim features; masked: (0, 1) and (1, 2)
    target = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [9.0, 9.0]],
                           [[9.0, 9.0], [9.0, 9.0], [0.0, 2.0]]])
    pred = torch.tensor([[[5.0, 5.0], [2.0, 1.0], [5.0, 5.0]],
                         [[5.0, 5.0], [5.0, 5.0], [1.0, 1.0]]])
    mask = torch.tensor([[False, True, False], [False, False, True]])
    t, temp = 0.5, [(1.0, 0.0), (0.0, 2.0)]
    preds = [(2.0, 1.0), (1.0, 1.0)]

    def expected(normalize: bool) -> float:
        def unit(v):
            n = math.hypot(*v) if normalize else 1.0
            return (v[0] / n, v[1] / n)
        total = 0.0
        for i, p in enumerate(preds):
            scores = [sum(a * b for a, b in zip(unit(p), unit(q))) / t for q in temp]
            total += -scores[i] + math.log(sum(math.exp(s) for s in scores))
        return total / len(preds)

    for normalize in (False, True):
        got = masked_feature_nce(pred, target, mask, temperature=t, normalize=normalize).item()
        assert got == pytest.approx(expected(normalize), abs=1e-5)
    # already gathered (M, D), no mask: the same value
    gathered = masked_feature_nce(pred[mask], target[mask], None, temperature=t, normalize=False).item()
    assert gathered == pytest.approx(expected(False), abs=1e-5)


def test_alignment_loss_by_hand():
    logits = torch.tensor([0.0, 2.0, -1.0])
    labels = torch.tensor([1.0, 0.0, 1.0])
    # -log sigmoid(0) = ln 2; -log(1 - sigmoid(2)) = ln(1 + e^2); -log sigmoid(-1) = ln(1 + e)
    expected = (math.log(2) + math.log(1 + math.e ** 2) + math.log(1 + math.e)) / 3
    assert alignment_loss(logits, labels).item() == pytest.approx(expected, abs=1e-6)


def test_contrastive_loss_by_hand_with_same_group_entries_left_out():
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    video = torch.tensor([[0.8, 0.6], [1.0, 0.0], [0.0, 1.0]])
    groups = torch.tensor([0, 0, 1])  # rows 0 and 1: two captions of one video
    scale = 10.0
    sim = [[scale * sum(a * b for a, b in zip(text[i].tolist(), video[j].tolist())) for j in range(3)]
           for i in range(3)]
    allowed = [[i == j or groups[i] != groups[j] for j in range(3)] for i in range(3)]

    def ce(i, scores_of):
        scores = [scores_of(j) for j in range(3) if allowed[i][j]]
        return -scores_of(i) + math.log(sum(math.exp(s) for s in scores))

    t2v = sum(ce(i, lambda j, i=i: sim[i][j]) for i in range(3)) / 3
    v2t = sum(ce(j, lambda i, j=j: sim[i][j]) for j in range(3)) / 3  # allowed is symmetric
    got = contrastive_loss(text, video, scale, groups).item()
    assert got == pytest.approx((t2v + v2t) / 2, abs=1e-5)
    # without groups every off-diagonal entry is a negative: a larger loss here
    assert contrastive_loss(text, video, scale).item() > got + 0.1


def test_empty_inputs_give_zero_in_the_graph():
    logits = torch.zeros((0, 5), requires_grad=True)
    for loss in (masked_token_loss(logits, torch.zeros(0, dtype=torch.long)),
                 masked_feature_nce(logits, logits.detach(), None),
                 alignment_loss(logits.sum(1), torch.zeros(0))):
        assert loss.item() == 0.0
        loss.backward()  # no error: still part of the graph
