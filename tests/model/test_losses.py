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


def _infonce_by_hand(text, video, scale) -> float:
    """Symmetric InfoNCE in float64 with plain logsumexp: the fp32 reference."""
    logits = scale * text.double() @ video.double().T
    idx = range(len(logits))
    t2v = sum(float(torch.logsumexp(logits[i], 0) - logits[i, i]) for i in idx) / len(logits)
    v2t = sum(float(torch.logsumexp(logits[:, j], 0) - logits[j, j]) for j in idx) / len(logits)
    return (t2v + v2t) / 2


def test_similarity_logits_are_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(16, 32, generator=g), dim=-1)
    video = torch.nn.functional.normalize(text + 0.3 * torch.randn(16, 32, generator=g), dim=-1)
    scale = torch.tensor(100.0)  # CLIP's bound: logits up to 100, where bf16 keeps ~2 significant digits
    expected = _infonce_by_hand(text, video, 100.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = contrastive_loss(text, video, scale).item()
        bf16_logits = scale * text.float() @ video.float().T  # what a .float() cast alone gives under autocast
    assert bf16_logits.dtype == torch.bfloat16  # (so the check below can fail)
    assert got == pytest.approx(expected, abs=1e-4)
    targets = torch.arange(16)
    bf16_loss = (torch.nn.functional.cross_entropy(bf16_logits.float(), targets)
                 + torch.nn.functional.cross_entropy(bf16_logits.float().T, targets)) / 2
    assert abs(bf16_loss.item() - expected) > 1e-3  # measured 3.3e-3: 30x the tolerance above

    # masked-feature NCE, the same: fp32 scores against a float64 hand computation
    pred, target = text, video
    scores = (pred.double() @ target.double().T) / 0.05
    nce = sum(float(torch.logsumexp(scores[i], 0) - scores[i, i]) for i in range(16)) / 16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = masked_feature_nce(pred, target, None, temperature=0.05, normalize=False).item()
    assert got == pytest.approx(nce, abs=1e-4)


def test_masked_feature_nce_duplicate_targets_are_not_negatives():
    """The issue's case: perfect predictions, one target masked twice (two rows
    of one video mask the same clip). Counted as each other's negatives, the
    two duplicates give ln 2 each: (2 ln 2) / 4 = 0.347. Left out, ~0."""
    e = torch.eye(4)
    target = torch.stack([e[0], e[0], e[1], e[2]])  # rows 0 and 1: the same clip
    t = 0.1
    # by hand: each row's positive scores 1/t = 10, an orthogonal target 0
    expected = (2 * math.log(1 + 2 * math.exp(-10)) + 2 * math.log(1 + 3 * math.exp(-10))) / 4
    got = masked_feature_nce(target.clone(), target, None, temperature=t).item()
    assert got == pytest.approx(expected, abs=1e-6) and got < 1e-3
    assert 2 * math.log(2) / 4 == pytest.approx(0.347, abs=1e-3)  # what counting them gave
    # a duplicate among another rank's targets (the negatives) is left out too; the scale does not matter
    got = masked_feature_nce(target[[0, 2]].clone(), target[[0, 2]], None, temperature=t,
                             negatives=torch.stack([3 * e[0], e[2]])).item()
    # row 0: e1 and e2 against it (its copy 3 e0 left out); row 1: e0, 3 e0, e2
    assert got == pytest.approx((math.log(1 + 2 * math.exp(-10)) + math.log(1 + 3 * math.exp(-10))) / 2, abs=1e-7)
    # without normalisation a scaled copy is another target, and counts as a negative
    got = masked_feature_nce(target[[0]].clone(), target[[0]], None, temperature=t, normalize=False,
                             negatives=torch.stack([2 * e[0]])).item()
    assert got == pytest.approx(math.log(1 + math.exp(10)), abs=1e-4)


def test_contrastive_loss_leaves_invalid_rows_out():
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], requires_grad=True)
    video = torch.tensor([[0.8, 0.6], [1.0, 0.0], [0.0, 1.0]])
    valid = torch.tensor([True, False, True])
    # by hand: rows 0 and 2 only, scale 5
    sim = [[5 * (text[i] @ video[j]).item() for j in (0, 2)] for i in (0, 2)]
    t2v = sum(-sim[i][i] + math.log(sum(math.exp(s) for s in sim[i])) for i in range(2)) / 2
    v2t = sum(-sim[j][j] + math.log(sum(math.exp(sim[i][j]) for i in range(2))) for j in range(2)) / 2
    got = contrastive_loss(text, video, 5.0, None, valid)
    assert got.item() == pytest.approx((t2v + v2t) / 2, abs=1e-5)
    got.backward()
    assert text.grad[1].abs().sum() == 0
    none = contrastive_loss(text, video, 5.0, None, torch.zeros(3, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad
