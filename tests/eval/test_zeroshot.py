"""Zero-shot classification against computations written here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from videolm.cli import main as cli
from videolm.eval.embeddings import Encoder, EvalError, uniform_clips
from videolm.eval.zeroshot import kinetics400_classes, zeroshot_dual, zeroshot_masked
from videolm.features.store import FeatureStore

LABELS = {"bigbuckbunny": "animal", "bikes": "vehicle", "carphone_pristine": "vehicle",
          "carphone_distorted": "vehicle", "blue": "colour"}
CLASSES = ["animal", "vehicle", "colour"]


def test_kinetics400_names():
    names = kinetics400_classes()
    assert len(names) == 400 and "abseiling" in names and "zumba" in names


def test_dual_encoder_against_hand_computation(tiny_models, eval_corpus):
    from transformers import AutoTokenizer

    from videolm.model.pretraining import VideoLMForPretraining

    store = FeatureStore(eval_corpus["store"])
    enc = Encoder.from_pretrained(tiny_models["cbt"])
    templates = ("a video of {}.", "{}")
    result = zeroshot_dual(enc, store, LABELS, CLASSES, templates)

    model = VideoLMForPretraining.from_pretrained(tiny_models["cbt"])
    tok = AutoTokenizer.from_pretrained(tiny_models["cbt"])
    with torch.no_grad():
        classes = []
        for c in CLASSES:
            e = [model.encode_text(torch.tensor([ids := tok(t.format(c))["input_ids"]]),
                                   torch.ones(1, len(ids), dtype=torch.bool))[0] for t in templates]
            m = torch.stack(e).mean(0)
            classes.append(m / m.norm())
        classes = torch.stack(classes)
        correct = []
        for vid, label in LABELS.items():
            clips = uniform_clips(np.arange(store.entry(vid)["num_clips"]), 4)
            f = torch.from_numpy(store.features(vid)[clips].astype(np.float32))[None]
            v = model.encode_video(f, torch.ones(f.shape[:2], dtype=torch.bool))[0]
            scores = classes @ v
            assert result.predictions[vid] == CLASSES[int(scores.argmax())]
            correct.append(CLASSES[int(scores.argmax())] == label)
    assert result.top1 == pytest.approx(100 * np.mean(correct), abs=1e-6)
    assert result.top5 == 100.0 and result.chance_top1 == pytest.approx(100 / 3)
    with pytest.raises(EvalError, match="label 'plant' is not one of the 3 classes"):
        zeroshot_dual(enc, store, {"bikes": "plant"}, CLASSES)


def test_masked_template_against_the_mlm_head(tiny_models, eval_corpus, tmp_path, capsys):
    from transformers import AutoTokenizer

    from videolm.model.pretraining import VideoLMForPretraining

    store = FeatureStore(eval_corpus["store"])
    enc = Encoder.from_pretrained(tiny_models["videobert"])
    template = "a [MASK] rabbit in a [MASK] meadow"
    truth = {"bigbuckbunny": ["white", "green"], "bikes": ["big", "green"]}
    words = [["white", "big", "blue"], ["green", "blue"]]
    result = zeroshot_masked(enc, store, template, truth, words)

    model = VideoLMForPretraining.from_pretrained(tiny_models["videobert"])
    tok = AutoTokenizer.from_pretrained(tiny_models["videobert"])
    ids = torch.tensor([tok(template)["input_ids"]])
    where = (ids[0] == tok.mask_token_id).nonzero().squeeze(1)
    hits = np.zeros(2)
    for vid, true in truth.items():
        clips = uniform_clips(np.arange(store.entry(vid)["num_clips"]), 4)
        words_ids = torch.from_numpy(enc.vocab.encode(store.features(vid)[clips].astype(np.float32)).ids)[None]
        with torch.no_grad():
            out = model.transformer(ids, torch.ones_like(ids, dtype=torch.bool), words_ids,
                                    torch.ones(words_ids.shape, dtype=torch.bool))
            logits = model.mlm_head(out.text_hidden[0, where], model.transformer.word_embeddings.weight)
        for s in range(2):
            cand = [tok.convert_tokens_to_ids(w) for w in words[s]]
            best = words[s][int(np.argmax(logits[s, cand].numpy()))]
            hits[s] += best == true[s]
    assert [slot["top1"] for slot in result.slots] == pytest.approx(list(100 * hits / 2))
    assert result.slots[0]["chance_top1"] == pytest.approx(100 / 3, abs=1e-3) and result.slots[1]["top5"] == 100.0
    with pytest.raises(EvalError, match="'zebrafishes' is 3 WordPiece tokens|'zebrafishes' is \\d+ WordPiece"):
        zeroshot_masked(enc, store, template, truth, [["zebrafishes"], ["green"]])
    with pytest.raises(EvalError, match="has no \\[MASK\\] slot"):
        zeroshot_masked(enc, store, "a rabbit", {"bikes": []})

    truth_file = tmp_path / "truth.jsonl"
    truth_file.write_text("".join(json.dumps({"video_id": v, "words": w}) + "\n" for v, w in truth.items()))
    lists = []
    for i, ws in enumerate(words):
        (tmp_path / f"w{i}.txt").write_text("\n".join(ws) + "\n")
        lists += ["--words", str(tmp_path / f"w{i}.txt")]
    assert cli(["zeroshot", tiny_models["videobert"], "--store", eval_corpus["store"], "--masked", template,
                "--truth", str(truth_file), *lists, "--out", str(tmp_path / "z")]) == 0
    assert "slot 1: top-1" in capsys.readouterr().out
    saved = json.loads((tmp_path / "z" / "zeroshot.json").read_text())
    assert [s["top1"] for s in saved["slots"]] == [s["top1"] for s in result.slots]


def test_labels_files_are_checked_row_by_row(tmp_path):
    from videolm.eval.zeroshot import read_labels

    words = tmp_path / "truth.jsonl"
    words.write_text(json.dumps({"video_id": "a", "words": ["cut", "onion"]}) + "\n" +
                     json.dumps({"video_id": "b", "words": "star"}) + "\n")
    with pytest.raises(EvalError, match=r"truth.jsonl:2: words must be a list of words"):
        read_labels(str(words), "words")   # not the letters s, t, a, r
    short = tmp_path / "labels.csv"
    short.write_text("video_id,label\na,dancing\nb\n")
    with pytest.raises(EvalError, match=r"labels.csv:3: empty label"):
        read_labels(str(short), "label")
    short.write_bytes("video_id,label\na,caf\xe9\n".encode("latin-1"))
    with pytest.raises(EvalError, match="labels.csv: not UTF-8 text"):
        read_labels(str(short), "label")
    short.write_text("\ufeffvideo_id,label\na,dancing\n")
    assert read_labels(str(short), "label") == {"a": "dancing"}
