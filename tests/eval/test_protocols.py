"""Each protocol's loader on a small file written here in the benchmark's own format."""

from __future__ import annotations

import json

import pytest

from videolm.eval.protocols import ProtocolError, load_protocol, resolve


def write(path, text):
    path.write_text(text)
    return str(path)


def test_msrvtt_1ka_csv(tmp_path):
    path = write(tmp_path / "MSRVTT_JSFUSION_test.csv",
                 "key,vid_key,video_id,sentence\n"
                 "ret0,msr7579,video7579,a girl wearing red top and black trouser is putting a sweater on a dog\n"
                 "ret1,msr7725,video7725,young people sit around the edges of a room clapping\n")
    p = load_protocol("msrvtt-1ka", [path])
    assert p.split == "test" and [(i.media_id, i.captions) for i in p.items] == [
        ("video7579", ["a girl wearing red top and black trouser is putting a sweater on a dog"]),
        ("video7725", ["young people sit around the edges of a room clapping"])]
    with pytest.raises(ProtocolError, match="only a test split"):
        load_protocol("msrvtt-1ka", [path], "val")
    bad = write(tmp_path / "bad.csv", "key,video\nret0,video1\n")
    with pytest.raises(ProtocolError, match=r"bad.csv:1: missing column 'video_id'"):
        load_protocol("msrvtt-1ka", [bad])
    empty_sentence = write(tmp_path / "e.csv", "key,vid_key,video_id,sentence\nr,m,video1,\n")
    with pytest.raises(ProtocolError, match=r"e.csv: line 2 sentence"):
        load_protocol("msrvtt-1ka", [empty_sentence])


def msrvtt_json(split_of: dict[str, str], sentences: list[tuple[str, str]]) -> str:
    return json.dumps({"info": {}, "videos": [{"video_id": v, "split": s, "category": 1, "id": i}
                                              for i, (v, s) in enumerate(split_of.items())],
                       "sentences": [{"video_id": v, "caption": c, "sen_id": i} for i, (v, c) in enumerate(sentences)]})


def test_msrvtt_full_keeps_every_caption_ragged(tmp_path):
    sentences = [("video7010", f"caption {i}") for i in range(20)] + [("video7011", f"other {i}") for i in range(19)]
    sentences += [("video1", "a training caption")]
    path = write(tmp_path / "test_videodatainfo.json",
                 msrvtt_json({"video7010": "test", "video7011": "test", "video1": "train"}, sentences))
    p = load_protocol("msrvtt-full", [path])
    assert {i.media_id: len(i.captions) for i in p.items} == {"video7010": 20, "video7011": 19}
    with pytest.raises(ProtocolError, match="no video with split 'validate'.*train_val_videodatainfo.json"):
        load_protocol("msrvtt-full", [path], "val")
    broken = write(tmp_path / "broken.json", '{"videos": [\n{"video_id": "v", "split": "test"},\n')
    with pytest.raises(ProtocolError, match=r"broken.json:3: not valid JSON"):
        load_protocol("msrvtt-full", [broken])
    no_sentences = write(tmp_path / "ns.json", json.dumps({"videos": []}))
    with pytest.raises(ProtocolError, match="ns.json: the file has no key 'sentences'"):
        load_protocol("msrvtt-full", [no_sentences])


def test_youcook2_validation_segments(tmp_path):
    data = {"database": {
        "GLd3aX16zBg": {"subset": "validation", "duration": 241.62, "recipe_type": "113",
                        "annotations": [{"segment": [90, 102], "id": 0, "sentence": "spread margarine on two slices"},
                                        {"segment": [114, 127], "id": 1, "sentence": "place a slice of cheese"}]},
        "xHr8X2Wpmno": {"subset": "training", "duration": 200.0, "recipe_type": "113",
                        "annotations": [{"segment": [1, 5], "id": 0, "sentence": "not in validation"}]}}}
    path = write(tmp_path / "youcookii_annotations_trainval.json", json.dumps(data))
    p = load_protocol("youcook2", [path])
    assert p.split == "val"
    assert [(i.id, i.media_id, i.span, i.captions) for i in p.items] == [
        ("GLd3aX16zBg_0", "GLd3aX16zBg", (90.0, 102.0), ["spread margarine on two slices"]),
        ("GLd3aX16zBg_1", "GLd3aX16zBg", (114.0, 127.0), ["place a slice of cheese"])]
    with pytest.raises(ProtocolError, match="test split's annotations are not public"):
        load_protocol("youcook2", [path], "test")
    data["database"]["GLd3aX16zBg"]["annotations"][0]["segment"] = [5]
    with pytest.raises(ProtocolError, match=r"database.GLd3aX16zBg.annotations\[0\].segment"):
        load_protocol("youcook2", [write(tmp_path / "y.json", json.dumps(data))])


@pytest.mark.parametrize("name", ["coco-5k", "flickr30k-1k"])
def test_karpathy_json(tmp_path, name):
    images = [{"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "split": "test", "cocoid": 391895,
               "sentences": [{"raw": f"A man riding a bike {i}.", "tokens": []} for i in range(5)]},
              {"filepath": "train2014", "filename": "COCO_train2014_000000000009.jpg", "split": "train",
               "sentences": [{"raw": "Train image."}]},
              {"filename": "COCO_val2014_000000000042.jpg", "split": "val", "sentences": [{"raw": "Val image."}]}]
    path = write(tmp_path / "dataset_coco.json", json.dumps({"images": images, "dataset": "coco"}))
    p = load_protocol(name, [path])
    assert [(i.media_id, i.kind, len(i.captions)) for i in p.items] == [("COCO_val2014_000000391895", "image", 5)]
    assert [i.media_id for i in load_protocol(name, [path], "val").items] == ["COCO_val2014_000000000042"]
    images[0]["sentences"][2] = {"tokens": ["a"]}
    with pytest.raises(ProtocolError, match=r"images\[0\].sentences\[2\] has no key 'raw'"):
        load_protocol(name, [write(tmp_path / "c.json", json.dumps({"images": images}))])


def test_captions_manifests_videos_spans_and_images(tmp_path):
    videos = write(tmp_path / "captions.jsonl", "\n".join(json.dumps(r) for r in [
        {"video_id": "bikes", "captions": ["cyclists ride", "bikes pass"]},
        {"video_id": "bunny", "captions": [{"text": "a rabbit wakes up", "start": 0, "end": 2.5}]}]) + "\n")
    images = write(tmp_path / "images.jsonl", json.dumps({"image_id": "photos/coffee", "caption": "a cup"}) + "\n")
    p = load_protocol("captions", [videos, images], "val")
    assert [(i.id, i.media_id, i.kind, i.span, i.captions) for i in p.items] == [
        ("bikes", "bikes", "video", None, ["cyclists ride", "bikes pass"]),
        ("bunny@0-2.5", "bunny", "video", (0.0, 2.5), ["a rabbit wakes up"]),
        ("photos/coffee", "photos/coffee", "image", None, ["a cup"])]
    bad = write(tmp_path / "bad.jsonl", json.dumps({"video_id": "a", "captions": ["x"]}) + "\n{oops\n")
    with pytest.raises(ProtocolError, match=r"bad.jsonl:2: not valid JSON"):
        load_protocol("captions", [bad])
    no_caption = write(tmp_path / "nc.jsonl", json.dumps({"video_id": "a"}) + "\n")
    with pytest.raises(ProtocolError, match=r"nc.jsonl:1: missing key 'captions'"):
        load_protocol("captions", [no_caption])
    with pytest.raises(ProtocolError, match="needs --annotations"):
        load_protocol("captions", [])


def test_unknown_protocol_lists_the_valid_ones():
    with pytest.raises(ProtocolError, match="unknown protocol 'msrvtt'; choose one of msrvtt-1ka, msrvtt-full"):
        load_protocol("msrvtt", [])


class FakeStore:
    root = "STORE"

    def __init__(self, ids):
        self.ids = set(ids)

    def __contains__(self, media_id):
        return media_id in self.ids

    def entry(self, media_id):
        return {"num_clips": 1}


def test_missing_items_change_the_protocol(tmp_path):
    path = write(tmp_path / "c.csv", "key,vid_key,video_id,sentence\n" +
                 "".join(f"r{i},m{i},video{i},caption {i}\n" for i in range(5)))
    p = load_protocol("msrvtt-1ka", [path])
    store = FakeStore(["video0", "video2", "video4"])
    with pytest.raises(ProtocolError, match=r"2 of 5 msrvtt-1ka items have no features in STORE "
                                            r"\(first: 'video1', 'video3'\).*--allow-missing"):
        resolve(p, store)
    r = resolve(p, store, allow_missing=True)
    assert [i.media_id for i in r.items] == ["video0", "video2", "video4"] and r.dropped == ["video1", "video3"]


def test_bad_bytes_and_values_are_one_line_and_spans_never_merge(tmp_path):
    latin = tmp_path / "MSRVTT_JSFUSION_test.csv"
    latin.write_bytes("key,vid_key,video_id,sentence\nret0,msr1,video1,un caf\xe9\n".encode("latin-1"))
    with pytest.raises(ProtocolError, match="MSRVTT_JSFUSION_test.csv: not UTF-8 text"):
        load_protocol("msrvtt-1ka", [str(latin)])
    bom = write(tmp_path / "bom.csv", "\ufeffkey,vid_key,video_id,sentence\nret0,msr1,video1,a dog\n")
    assert [i.media_id for i in load_protocol("msrvtt-1ka", [bom]).items] == ["video1"]
    listed = write(tmp_path / "test_videodatainfo.json", json.dumps({
        "videos": [{"video_id": "video1", "split": "test"}],
        "sentences": [{"video_id": ["video1"], "caption": "a dog"}]}))
    with pytest.raises(ProtocolError, match=r"sentences\[0\].video_id must be a non-empty string"):
        load_protocol("msrvtt-full", [listed], "test")
    # two spans that agree to 6 digits: two items, each with its own caption
    close = write(tmp_path / "lecture.jsonl", json.dumps({"video_id": "lecture", "captions": [
        {"text": "first", "start": 12345.61, "end": 12350.01},
        {"text": "second", "start": 12345.64, "end": 12350.04}]}) + "\n")
    items = load_protocol("captions", [close]).items
    assert [(i.span, i.captions) for i in items] == [((12345.61, 12350.01), ["first"]),
                                                     ((12345.64, 12350.04), ["second"])]
    assert len({i.id for i in items}) == 2
