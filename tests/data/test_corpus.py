"""Manifests: what a good row gives, what each bad input says (one line, naming the file)."""

import logging
import os
import shutil

import numpy as np
import pytest

from videolm.data.config import DataConfig, SourceConfig
from videolm.data.corpus import Caption, Transcript, build_pretrain_dataset, read_manifest
from videolm.data.errors import DataError


def config(store, *sources, vocab=None, **kw) -> DataConfig:
    return DataConfig(store=store, vocab=vocab, sources=[SourceConfig(*s) for s in sources], **kw)


def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_caption_forms(tmp_path, jsonl):
    path = jsonl(tmp_path / "c.jsonl", [
        {"video_id": "a", "captions": ["one", {"text": "two", "start": 1, "end": 2.5}, {"text": "three"}]},
        {"video_id": "b", "caption": "four"},
        {"video_id": "c", "caption": "five", "start": 3.0, "end": 4.0, "extra": "ignored"},
        "",
        {"video_id": 7, "captions": [{"text": "six", "start": 0, "end": 0}]},
        {"video_id": "d", "captions": ["seven", {"text": "eight"}, {"text": "nine", "start": 0, "end": 1}],
         "start": 5, "end": 6},
    ])
    rows, bad, count = read_manifest(path, "caption")
    assert bad == [] and count == 5
    assert [(line, vid) for line, vid, _ in rows] == [(1, "a"), (2, "b"), (3, "c"), (5, "7"), (6, "d")]
    assert rows[0][2] == [("one", None, None), ("two", 1.0, 2.5), ("three", None, None)]
    assert rows[2][2] == [("five", 3.0, 4.0)] and rows[3][2] == [("six", 0.0, 0.0)]
    assert rows[4][2] == [("seven", 5.0, 6.0), ("eight", 5.0, 6.0), ("nine", 0.0, 1.0)]  # row times as default


def test_asr_segments_are_sorted_and_images_ignore_times(tmp_path, jsonl):
    path = jsonl(tmp_path / "a.jsonl", [{"video_id": "v", "segments": [
        {"start": 2.0, "end": 3.0, "text": "later"}, {"start": 0.5, "end": 1.0, "text": "first"}]}])
    ((_, _, (starts, ends, texts)),), bad, _ = read_manifest(path, "asr")
    assert starts.tolist() == [0.5, 2.0] and ends.tolist() == [1.0, 3.0] and texts == ["first", "later"]
    path = jsonl(tmp_path / "i.jsonl", [{"image_id": "x", "captions": [{"text": "a cat", "start": 1,
                                                                              "end": 2}]}])
    assert read_manifest(path, "image")[0][0][2] == [("a cat", None, None)]


BAD_CAPTIONS = [
    ('{"video_id": "a", "captions": ["x"]', "not valid JSON"),
    ('["a", "b"]', "not a JSON object"),
    ({"captions": ["x"]}, "missing key 'video_id'"),
    ({"video_id": "", "captions": ["x"]}, "'video_id' must be a non-empty string"),
    ({"video_id": {"k": "v" * 500}, "captions": ["x"]}, "not {'k': 'vvvvvvvvvv"),  # cut short
    ({"video_id": "a"}, "missing key 'captions' (or 'caption')"),
    ({"video_id": "a", "captions": []}, "'captions' must be a non-empty list"),
    ({"video_id": "a", "captions": ["ok", "  "]}, "caption 1 has empty text"),
    ({"video_id": "a", "caption": ""}, "the caption has empty text"),
    ({"video_id": "a", "captions": [{"text": "x", "start": 1.0}]}, "the caption has start without end"),
    ({"video_id": "a", "captions": [{"text": "x", "end": 1.0}], "start": 0, "end": 2}, "has end without start"),
    ({"video_id": "a", "captions": [{"text": "x", "start": 2, "end": 1}]}, "ends (1.0) before it starts (2.0)"),
    ({"video_id": "a", "captions": [{"text": "x", "start": "0", "end": 1}]}, "start must be a number"),
    ({"video_id": "a", "captions": [{"start": 0, "end": 1}]}, "text must be a string"),
]


def test_each_bad_caption_row_is_named_by_file_and_line(tmp_path, tiny, tokenizer, jsonl):
    rows = [{"video_id": "v_long", "captions": ["a good row"]}] + [row for row, _ in BAD_CAPTIONS]
    path = jsonl(tmp_path / "bad.jsonl", rows)
    ds = build_pretrain_dataset(config(tiny["store"], ("caption", path)), "cbt", tokenizer)
    assert len(ds.bad_rows) == len(BAD_CAPTIONS)
    for line, (message, (_, why)) in enumerate(zip(ds.bad_rows, BAD_CAPTIONS), start=2):
        assert message.startswith(f"{path}:{line}: ") and why in message and "\n" not in message
        assert len(message) < len(path) + 100
    assert ds.describe()["sources"][0]["bad_rows"] == len(BAD_CAPTIONS) and len(ds) == 1


def test_bad_asr_and_image_rows(tmp_path, jsonl):
    asr = jsonl(tmp_path / "asr.jsonl", [
        {"video_id": "v"},
        {"video_id": "v", "segments": [{"start": 0, "end": 1, "text": ""}]},
        {"video_id": "v", "segments": [{"start": 0, "text": "x"}]},
        {"video_id": "v", "segments": ["x"]},
    ])
    rows, bad, _ = read_manifest(asr, "asr")
    assert rows == [] and [b.split(": ", 1)[1] for b in bad] == [
        "missing key 'segments'", "segment 0 has empty text", "segment 0 needs start and end",
        "segment 0 must be an object with start, end and text"]
    img = jsonl(tmp_path / "img.jsonl", [{"video_id": "x", "captions": ["a"]}])
    assert read_manifest(img, "image")[1] == [f"{img}:1: missing key 'image_id'"]


def test_missing_ids_are_listed_and_skipped(tmp_path, tiny, tokenizer, caplog, jsonl):
    path = jsonl(tmp_path / "c.jsonl", [{"video_id": "v_long", "caption": "a"},
                                              {"video_id": "nope", "caption": "b"},
                                              {"video_id": "v_short", "caption": "c"}])
    with caplog.at_level(logging.WARNING):
        ds = build_pretrain_dataset(config(tiny["store"], ("caption", path)), "cbt", tokenizer)
    assert ds.missing == [{"manifest": path, "line": 2, "id": "nope"}]
    assert len(ds) == 2 and {ds[(0, p)].video_id for p in range(2)} == {"v_long", "v_short"}
    assert "1 of 3 rows have no features" in caplog.text


def test_too_many_missing_ids_is_an_error(tmp_path, tiny, tokenizer, jsonl):
    path = jsonl(tmp_path / "c.jsonl", [{"video_id": "v_long", "caption": "a"}] +
                       [{"video_id": f"gone{i}", "caption": "b"} for i in range(3)])
    with pytest.raises(DataError) as err:
        build_pretrain_dataset(config(tiny["store"], ("caption", path)), "cbt", tokenizer)
    assert one_line(err).startswith(f"3 of 4 rows in {path} have no features in {tiny['store']}")
    ds = build_pretrain_dataset(config(tiny["store"], ("caption", path), max_missing_fraction=0.75), "cbt", tokenizer)
    assert len(ds.missing) == 3  # 3 of 4 is not more than 0.75


def test_unusable_manifests(tmp_path, tiny, tokenizer, jsonl):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError) as err:
        build_pretrain_dataset(config(tiny["store"], ("caption", str(empty))), "cbt", tokenizer)
    assert one_line(err) == f"{empty}: empty manifest (no rows)"
    all_bad = jsonl(tmp_path / "bad.jsonl", ["{", {"video_id": "a"}])
    with pytest.raises(DataError) as err:
        build_pretrain_dataset(config(tiny["store"], ("caption", all_bad)), "cbt", tokenizer)
    assert one_line(err).startswith(f"{all_bad}: none of its 2 rows is usable ({all_bad}:1: not valid JSON")
    with pytest.raises(DataError) as err:
        build_pretrain_dataset(config(tiny["store"], ("caption", str(tmp_path / "x.jsonl"))), "cbt", tokenizer)
    assert one_line(err) == f"{tmp_path / 'x.jsonl'}: no such manifest"
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage\n")
    with pytest.raises(DataError, match="not a UTF-8 text file"):
        build_pretrain_dataset(config(tiny["store"], ("caption", str(binary))), "cbt", tokenizer)


def test_config_mistakes(tmp_path, tiny, tokenizer, jsonl):
    good = jsonl(tmp_path / "c.jsonl", [{"video_id": "v_long", "caption": "a"}])
    cases = [
        (config(tiny["store"], ("captions", good)), "cbt", "data.sources.0.kind must be one of caption, asr, image"),
        (config(tiny["store"], ("caption", good, None, None, 0.0)), "cbt", "data.sources.0.weight must be positive"),
        (config(tiny["store"]), "cbt", "data.sources is empty"),
        (config("", ("caption", good)), "cbt", "has no store; set data.store or data.sources.0.store"),
        (config(tiny["store"], ("caption", good), max_text_len=2), "cbt", "data.max_text_len must be at least 3"),
        (config(tiny["store"], ("caption", good), asr_min_tokens=9, asr_max_tokens=4), "cbt", "data.asr_min_tokens"),
        (config(tiny["store"], ("caption", good), clip_sampling="all"), "cbt", "data.clip_sampling must be one of"),
        (config(tiny["store"], ("caption", good)), "bert", "model.mode must be videobert or cbt"),
        (config(str(tmp_path / "nostore"), ("caption", good)), "cbt", "no such feature store"),
        (config(tiny["store"], ("caption", good)), "videobert", "model.mode=videobert needs data.vocab"),
        (config(tiny["store"], ("caption", good), vocab=str(tmp_path)), "videobert", "not a visual vocabulary"),
    ]
    for cfg, mode, message in cases:
        with pytest.raises(DataError) as err:
            build_pretrain_dataset(cfg, mode, tokenizer)
        assert message in one_line(err)


def test_store_and_vocabulary_must_match(tmp_path, tiny, tokenizer, jsonl, store_maker):
    other = store_maker(tmp_path / "wide", {"v_long": [(0.0, 1.0)]}, dim=16)
    good = jsonl(tmp_path / "c.jsonl", [{"video_id": "v_long", "caption": "a"}])
    with pytest.raises(DataError) as err:
        build_pretrain_dataset(config(other, ("caption", good), vocab=tiny["vocab"]), "videobert", tokenizer)
    assert "features are 16-dim (synthetic)" in one_line(err) and "8-dim" in str(err.value)
    mixed = config(tiny["store"], ("caption", good), ("caption", good, other))
    with pytest.raises(DataError) as err:
        build_pretrain_dataset(mixed, "cbt", tokenizer)
    assert one_line(err).startswith(f"{other}: features are 16-dim but {tiny['store']} has 8-dim")


def test_tokens_must_exist_and_match(tmp_path, tiny, tokenizer, jsonl):
    store = str(tmp_path / "store")
    shutil.copytree(tiny["store"], store, ignore=shutil.ignore_patterns("tokens"))
    good = jsonl(tmp_path / "c.jsonl", [{"video_id": "v_long", "caption": "a"}])
    with pytest.raises(DataError) as err:
        build_pretrain_dataset(config(store, ("caption", good), vocab=tiny["vocab"]), "videobert", tokenizer)
    assert f"run `videolm tokenize encode {store} --vocab {tiny['vocab']}`" in one_line(err)
    assert "no visual-word tokens" in str(err.value)

    # tokens made with another vocabulary
    from videolm.tokenize.kmeans import KMeansConfig
    from videolm.tokenize.vocab import fit_vocabulary

    other = fit_vocabulary(store, KMeansConfig(k=3, depth=1, seed=1))
    other.save_pretrained(str(tmp_path / "other"))
    cfg = DataConfig(store=tiny["store"], vocab=str(tmp_path / "other"),
                     sources=[SourceConfig("caption", good, tokens=tiny["tokens"])])
    with pytest.raises(DataError) as err:
        build_pretrain_dataset(cfg, "videobert", tokenizer)
    assert "tokens were made with another vocabulary" in one_line(err)

    # tokens that do not cover a video the manifest uses
    stale = str(tmp_path / "stale")
    shutil.copytree(tiny["tokens"], stale)
    index = np.load(os.path.join(stale, "index.npy"))  # the tokens' index (docs/tokenizer.md), without v_long
    index = index[index["video_id"] != b"v_long"]
    index["by_id"] = np.argsort(index["video_id"], kind="stable")
    np.save(os.path.join(stale, "index.npy"), index)
    cfg = DataConfig(store=tiny["store"], vocab=tiny["vocab"], sources=[SourceConfig("caption", good, tokens=stale)])
    with pytest.raises(DataError) as err:
        build_pretrain_dataset(cfg, "videobert", tokenizer)
    assert "no tokens for 1 video(s)" in one_line(err) and "'v_long'" in str(err.value)


def test_items_per_kind(tmp_path, tiny, tokenizer, jsonl):
    caps = jsonl(tmp_path / "c.jsonl", [{"video_id": "v_long", "captions": ["a", "b", "c"]},
                                              {"video_id": "v_short", "caption": "d"}])
    asr = jsonl(tmp_path / "a.jsonl", [{"video_id": "v_long", "segments": [
        {"start": 0, "end": 1, "text": "x"}, {"start": 1, "end": 2, "text": "y"}]}])
    img = jsonl(tmp_path / "i.jsonl", [{"image_id": "img_a", "captions": ["e", "f"]}])
    ds = build_pretrain_dataset(config(tiny["store"], ("caption", caps), ("asr", asr), ("image", img)), "cbt",
                                tokenizer)
    assert [len(s) for s in ds.sources] == [4, 1, 2] and len(ds) == 7  # a caption each; a transcript per row
    assert isinstance(ds.sources[0].items[0], Caption) and isinstance(ds.sources[1].items[0], Transcript)
    d = ds.describe()
    assert d["store"] == tiny["store"] and d["examples"] == 7 and d["feature_dim"] == 8
    assert [s["per_epoch"] for s in d["sources"]] == [3, 2, 2]  # 7 x 1/3 each: 2.33 -> 2, 2, 2 + 1 to the first
