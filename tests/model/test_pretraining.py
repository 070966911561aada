"""VideoLMForPretraining: objectives, switches, negatives, gradients."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from videolm.data.batch import Batch
from videolm.model.errors import ModelError
from videolm.model.negatives import alignment_pairs
from videolm.model.pretraining import VideoLMForPretraining

from .conftest import make_batch, one_line, tiny_config

ALL = {"mlm", "visual", "align", "contrastive"}


def count_passes(model) -> list[int]:
    """Record the batch size of every transformer pass."""
    calls = []
    model.transformer.register_forward_hook(lambda m, args, out: calls.append(out.attention.shape[0]))
    return calls


@pytest.mark.parametrize("mode", ["videobert", "cbt"])
def test_all_objectives_weighted_sum_and_gradients_reach_both_modalities(mode):
    torch.manual_seed(0)
    cfg = tiny_config(mode, mlm_weight=1.0, visual_weight=0.5, align_weight=2.0, contrastive_weight=0.25)
    model = VideoLMForPretraining(cfg).train()
    batch = make_batch(mode)
    out = model(batch, generator=torch.Generator().manual_seed(0))
    assert set(out.losses) == ALL
    weights = {"mlm": 1.0, "visual": 0.5, "align": 2.0, "contrastive": 0.25}
    expected = sum(weights[k] * v.item() for k, v in out.losses.items())
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    # logits only at masked positions: one masked text token and one masked clip per row
    assert out.mlm_logits.shape == (4, cfg.text_vocab_size)
    assert out.visual_logits.shape == (4, cfg.visual_vocab_size if mode == "videobert" else cfg.feature_dim)
    assert out.text_embeds.shape == out.video_embeds.shape == (4, cfg.embed_dim)
    torch.testing.assert_close(out.text_embeds.norm(dim=-1), torch.ones(4))
    out.loss.backward()
    t = model.transformer
    visual_params = ([t.visual_embeddings.table.weight] if mode == "videobert"
                     else [t.visual_embeddings.projection.weight, t.visual_embeddings.mask_embedding])
    for p in [t.word_embeddings.weight, *visual_params, t.layers[0].attention.qkv.weight, model.logit_scale,
              model.align_head.classifier.weight, model.mlm_head.bias]:
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["videobert", "cbt"])
@pytest.mark.parametrize("off, heads", [
    ("mlm", ["mlm_head"]),
    ("visual", ["visual_head"]),
    ("align", ["align_head"]),
    ("contrastive", ["text_projection", "video_projection", "logit_scale"]),
])
def test_switched_off_objective_is_absent_and_its_head_gets_no_gradient(mode, off, heads):
    torch.manual_seed(0)
    overrides = {f"{off}_weight": 0.0}
    if off == "contrastive":
        overrides["align_hard_negatives"] = False  # else the projections still pick hard negatives (no grad)
    model = VideoLMForPretraining(tiny_config(mode, **overrides)).train()
    passes = count_passes(model)
    out = model(make_batch(mode), generator=torch.Generator().manual_seed(0))
    assert set(out.losses) == ALL - {off}
    out.loss.backward()
    for name in heads:
        module = getattr(model, name)
        params = [module] if isinstance(module, torch.nn.Parameter) else list(module.parameters())
        assert all(p.grad is None for p in params), name
    # the work is skipped: joint masked pass, text pass, video pass, alignment pass
    expected = {"mlm": 4, "visual": 4, "align": 3, "contrastive": 2}[off]
    assert len(passes) == expected


def test_hard_negatives_without_contrastive_use_embeddings_without_graph():
    torch.manual_seed(0)
    model = VideoLMForPretraining(tiny_config("cbt", contrastive_weight=0.0)).train()
    out = model(make_batch("cbt"), generator=torch.Generator().manual_seed(0))
    assert "contrastive" not in out.losses and not out.text_embeds.requires_grad
    out.loss.backward()
    assert all(p.grad is None for p in model.text_projection.parameters())


def test_negatives_never_share_a_group_and_are_reproducible():
    groups = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    sim = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    pairs = alignment_pairs(groups, 2, torch.Generator().manual_seed(5), sim)
    same = groups[pairs.text_index] == groups[pairs.video_index]
    positive = pairs.labels == 1
    assert torch.equal(same, positive)  # a same-group pair is only ever the positive itself
    assert torch.equal(pairs.text_index[positive], torch.arange(8))
    assert torch.equal(pairs.video_index[positive], torch.arange(8))
    again = alignment_pairs(groups, 2, torch.Generator().manual_seed(5), sim)
    assert torch.equal(pairs.text_index, again.text_index) and torch.equal(pairs.video_index, again.video_index)
    other = alignment_pairs(groups, 2, torch.Generator().manual_seed(6), None)
    assert not torch.equal(pairs.video_index[8:24], other.video_index[8:24])
    # 2 random per text + hardest video per text + hardest text per video
    assert len(pairs.labels) == 8 + 16 + 8 + 8
    # the hardest ones, by hand: max over other-group entries
    hard_video = pairs.video_index[24:32]
    hard_text = pairs.text_index[32:40]
    for i in range(8):
        cand = [j for j in range(8) if groups[j] != groups[i]]
        assert int(hard_video[i]) == max(cand, key=lambda j: sim[i, j].item())
        assert int(hard_text[i]) == max(cand, key=lambda j: sim[j, i].item())


def test_softmax_hard_negatives_are_drawn_by_the_softmax_of_other_group_scores():
    """ALBEF's ITM negatives: text i's hard video is drawn with probability
    exp(s_ij) / sum over other-group j; checked against that distribution
    computed here, over 4,000 draws (3-sigma bounds), for texts and videos."""
    groups = torch.tensor([0, 0, 1, 2, 3])
    sim = torch.tensor([[0.0, 5.0, 1.0, 0.0, -1.0],
                        [5.0, 0.0, 0.0, 2.0, 0.0],
                        [1.0, 0.0, 9.0, 0.5, 0.5],
                        [0.0, 2.0, 0.5, 9.0, 1.5],
                        [-1.0, 0.0, 0.5, 1.5, 9.0]])
    gen = torch.Generator().manual_seed(0)
    n = 4000
    counts_v, counts_t = torch.zeros(5, 5), torch.zeros(5, 5)
    for _ in range(n):
        pairs = alignment_pairs(groups, 0, gen, sim, hard="softmax")
        hv, ht = pairs.video_index[5:10], pairs.text_index[10:15]
        counts_v[torch.arange(5), hv] += 1
        counts_t[ht, torch.arange(5)] += 1
    for i in range(5):
        cand = [j for j in range(5) if groups[j] != groups[i]]
        for counts, score in ((counts_v[i], sim[i]), (counts_t[:, i], sim[:, i])):
            z = sum(math.exp(score[j].item()) for j in cand)
            for j in range(5):
                p = math.exp(score[j].item()) / z if j in cand else 0.0
                tol = 3 * math.sqrt(p * (1 - p) / n) + 1e-9
                assert abs(counts[j].item() / n - p) <= tol, (i, j, counts[j].item() / n, p)
    with pytest.raises(ValueError, match="hardest, softmax"):
        alignment_pairs(groups, 0, gen, sim, hard="top")


def test_a_group_filling_the_batch_gets_no_negatives():
    pairs = alignment_pairs(torch.tensor([4, 4, 4]), 3, torch.Generator().manual_seed(0), torch.zeros(3, 3))
    assert pairs.labels.tolist() == [1.0, 1.0, 1.0]
    # one row of another group: it has negatives, and the rest only pair with it
    pairs = alignment_pairs(torch.tensor([4, 4, 7]), 3, torch.Generator().manual_seed(0), None)
    negatives = [(int(t), int(v)) for t, v, y in zip(pairs.text_index, pairs.video_index, pairs.labels) if y == 0]
    assert sorted(negatives) == [(0, 2), (1, 2), (2, 0), (2, 1)]


def test_same_generator_same_loss_and_rows_without_visual_side():
    torch.manual_seed(0)
    model = VideoLMForPretraining(tiny_config("videobert")).eval()
    batch = make_batch("videobert", groups=(0, 1, 2, 3))
    a = model(batch, generator=torch.Generator().manual_seed(3))
    b = model(batch, generator=torch.Generator().manual_seed(3))
    assert a.loss.item() == b.loss.item()
    batch.visual_attention[2] = False
    c = model(batch, generator=torch.Generator().manual_seed(3))
    assert set(c.losses) == ALL
    # row 2 (no visual side) takes part in the masked LM only: without it, the
    # same contrastive loss and (hard negatives only: no draws) the same alignment loss
    model = VideoLMForPretraining(tiny_config("videobert", align_random_negatives=0)).eval()
    c = model(batch)
    keep = torch.tensor([0, 1, 3])
    without = Batch(**{f.name: getattr(batch, f.name)[keep] for f in dataclasses.fields(Batch)
                       if getattr(batch, f.name) is not None})
    d = model(without)
    for key in ("contrastive", "align"):
        torch.testing.assert_close(c.losses[key], d.losses[key])


def test_batch_for_the_other_mode_is_refused():
    model = VideoLMForPretraining(tiny_config("videobert"))
    with pytest.raises(ModelError, match="model.mode=videobert needs batch.visual_ids") as err:
        model(make_batch("cbt"))
    assert one_line(err)


def test_evaluation_methods_shapes():
    torch.manual_seed(0)
    model = VideoLMForPretraining(tiny_config("cbt")).eval()
    batch = make_batch("cbt")
    with torch.no_grad():
        t = model.encode_text(batch.text_ids, batch.text_attention)
        v = model.encode_video(batch.visual_feats, batch.visual_attention)
        s = model.alignment_score(batch.text_ids, batch.text_attention, batch.visual_feats, batch.visual_attention)
    assert t.shape == v.shape == (4, 16) and s.shape == (4,)


@pytest.mark.parametrize("mode", ["videobert", "cbt"])
def test_text_only_batch_keeps_every_key_at_zero(mode):
    """No row has a visual side (and no clip is masked): the visual objectives
    have nothing to score and give 0, the masked LM still trains."""
    torch.manual_seed(0)
    model = VideoLMForPretraining(tiny_config(mode)).train()
    batch = make_batch(mode, visual_lens=(0, 0, 0, 0), mask_visual=False)
    out = model(batch, generator=torch.Generator().manual_seed(0))
    assert set(out.losses) == ALL
    assert all(out.losses[k].item() == 0.0 for k in ("visual", "align", "contrastive"))
    assert out.losses["mlm"].item() > 0
    out.loss.backward()
    assert model.transformer.word_embeddings.weight.grad.abs().sum() > 0


def test_logit_scale_past_the_clamp_gets_a_gradient_and_comes_back():
    """The bound is applied to the value after a step (CLIP), not inside
    forward, where past it the gradient would be 0 and the parameter stuck."""
    import math

    torch.manual_seed(0)
    model = VideoLMForPretraining(tiny_config("cbt")).train()
    bound = math.log(100.0)
    with torch.no_grad():
        model.logit_scale.fill_(bound + 0.5)
    assert model.contrastive_scale().item() == pytest.approx(100.0 * math.exp(0.5), rel=1e-6)
    out = model(make_batch("cbt"), generator=torch.Generator().manual_seed(0))
    out.losses["contrastive"].backward()
    assert model.logit_scale.grad.item() != 0.0
    torch.optim.AdamW(model.parameters(), lr=1e-3).step()
    model.clamp_parameters()
    assert model.logit_scale.item() == pytest.approx(bound)
    with torch.no_grad():
        model.logit_scale.fill_(1.0)
    model.clamp_parameters()  # inside the bound: untouched
    assert model.logit_scale.item() == 1.0


@pytest.mark.parametrize("mode", ["videobert", "cbt"])
@pytest.mark.parametrize("masked_pass", [False, True])
def test_only_dual_encoder_and_alignment_on_a_batch_without_visual_rows(mode, masked_pass):
    """mlm_weight=0, visual_weight=0 and no row with a visual side: the losses
    are 0 and still in the graph, so backward works (it raised 'element 0 of
    tensors does not require grad')."""
    torch.manual_seed(0)
    model = VideoLMForPretraining(tiny_config(mode, mlm_weight=0.0, visual_weight=0.0,
                                              align_on_masked_pass=masked_pass)).train()
    out = model(make_batch(mode, visual_lens=(0, 0, 0, 0), mask_visual=False),
                generator=torch.Generator().manual_seed(0))
    assert set(out.losses) == {"align", "contrastive"}
    assert out.loss.item() == 0.0 and out.loss.requires_grad
    out.loss.backward()


@pytest.mark.parametrize("mode", ["videobert", "cbt"])
def test_alignment_on_the_masked_pass(mode):
    """align_on_masked_pass: no alignment pass of its own; some rows carry an
    other-group video's visual side (with its masking and labels), and the
    [CLS] of the masked pass scores every row with a visual side."""
    torch.manual_seed(0)
    groups = (0, 0, 1, 2, 3, 4, 5, 6)
    batch = make_batch(mode, text_lens=(5, 7, 4, 6, 5, 6, 4, 7), visual_lens=(3, 4, 2, 4, 3, 0, 2, 4), groups=groups)
    model = VideoLMForPretraining(tiny_config(mode, align_on_masked_pass=True, align_hard_negatives=False)).train()
    passes = count_passes(model)
    seen = []
    model.transformer.register_forward_hook(lambda m, args, out: seen.append(args))
    out = model(batch, generator=torch.Generator().manual_seed(1))
    assert len(passes) == 3 and passes[0] == 8  # text alone, video alone, the masked joint pass (8 rows)
    assert set(out.losses) == ALL
    visual_in = seen[2][2]  # the masked pass's visual input
    labels = out.align_labels
    assert labels.shape == (8,) and 0 < int((labels == 0).sum()) < 8
    swapped = []
    for i in range(8):
        if labels[i] == 1:
            assert torch.equal(visual_in[i], (batch.visual_ids if mode == "videobert" else batch.visual_feats)[i])
        else:  # another video's visual side, of another group, that has one
            j = [j for j in range(8) if torch.equal(visual_in[i], (batch.visual_ids if mode == "videobert"
                                                                   else batch.visual_feats)[j])]
            assert j and all(groups[k] != groups[i] and batch.visual_attention[k].any() for k in j)
            swapped.append(i)
    assert 5 not in swapped  # row 5 has no visual side: no pair, weight 0
    # the loss, by hand: BCE over the rows with a visual side
    import math
    rows = [i for i in range(8) if i != 5]
    bce = [math.log(1 + math.exp(-out.align_logits[i].item())) if labels[i] == 1
           else math.log(1 + math.exp(out.align_logits[i].item())) for i in rows]
    assert out.losses["align"].item() == pytest.approx(sum(bce) / len(bce), rel=1e-5)
    # the visual loss follows the swapped visual sides: one masked position per row with a visual side
    assert out.visual_logits.shape[0] == 7
    out.loss.backward()
    assert model.align_head.classifier.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch,align_loss", [("single_stream", "bce"), ("two_stream", "bce"),
                                             ("single_stream", "listwise")])
def test_alignment_pairs_embedded_once_per_video_give_the_indexed_pairs_loss_and_gradients(arch, align_loss):
    # CBT's alignment pass embeds each distinct video once and repeats it (pair_visual); the
    # reference indexes the raw features per pair, as every pass of the model did before
    extra = {"text_layers": 1, "visual_layers": 1, "cross_layers": 1} if arch == "two_stream" else {}
    cfg = tiny_config("cbt", arch=arch, align_loss=align_loss, **extra)
    torch.manual_seed(0)
    model = VideoLMForPretraining(cfg)
    reference = VideoLMForPretraining(cfg)
    reference.load_state_dict(model.state_dict())
    reference.pair_visual = lambda visual, index: (visual[index], False)
    calls = []
    embed = model.transformer.visual_embeddings if arch == "single_stream" else model.transformer.visual.visual_embeddings
    embed.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    batch = make_batch("cbt", groups=(0, 1, 2, 3))
    ours = model(batch, generator=torch.Generator().manual_seed(5))
    theirs = reference(batch, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours.align_logits, theirs.align_logits)
    torch.testing.assert_close(ours.loss, theirs.loss)
    ours.loss.backward()
    theirs.loss.backward()
    grads = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        assert (p.grad is None) == (grads[name].grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, grads[name].grad, msg=name)
    # the alignment pass embedded 4 videos, not one per pair
    assert len(ours.align_logits) > 4 and 4 in calls


def test_pair_visual_gradients_are_the_same_bits_every_run():
    # the repeat of each embedded video is an index_select (its backward an index_add, in order):
    # a plain ``[where]`` index accumulates its repeated rows in whatever order two threads reach
    # them, which made two runs of the same CBT training differ
    from tests.conftest import torch_threads

    torch.manual_seed(0)
    model = VideoLMForPretraining(tiny_config("cbt", hidden_size=128, num_heads=2, feature_dim=256))
    visual = torch.randn(64, 8, 256)
    index = torch.randint(0, 64, (256,), generator=torch.Generator().manual_seed(1))
    upstream = torch.randn(256, 8, 128)  # each pair's own gradient: the repeats of a video add different values
    weight = model.transformer.visual_embeddings.projection.weight
    grads = []
    with torch_threads(2):
        for _ in range(30):
            rows, embedded = model.pair_visual(visual, index)
            assert embedded and rows.shape == (256, 8, 128)
            grads.append(torch.autograd.grad((rows * upstream).sum(), weight)[0])
    assert all(torch.equal(grads[0], g) for g in grads[1:])
