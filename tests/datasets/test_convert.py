"""videolm.datasets.convert on small files written in each benchmark's real format
(the recipes' tests cover the rest end to end); expected rows written out by hand."""

from __future__ import annotations

import json

import pytest

from videolm.datasets import convert
from videolm.fileio import read_jsonl


def write_json(path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


def test_howto100m_caption_csvs_give_the_same_manifest_as_raw_caption_json(tmp_path):
    (tmp_path / "captions").mkdir()
    (tmp_path / "captions" / "abc.csv").write_text("start,end,text\n0.0,2.5,first we wash the rice\n"
                                                    "2.5,4.0,\n4.0,6.5,\"then, we boil it\"\n")
    (tmp_path / "captions" / "skipme.csv").write_text("start,end,text\n0,1,not wanted\n")
    csv_result = convert.howto100m_asr(str(tmp_path / "captions"), str(tmp_path / "a.jsonl"), ids={"abc"})
    raw = write_json(tmp_path / "raw_caption.json", {"abc": {"start": [0.0, 2.5, 4.0], "end": [2.5, 4.0, 6.5],
                                                             "text": ["first we wash the rice", "", "then, we boil it"]}})
    convert.howto100m_asr(raw, str(tmp_path / "b.jsonl"))
    expected = [{"video_id": "abc", "segments": [{"start": 0.0, "end": 2.5, "text": "first we wash the rice"},
                                                 {"start": 4.0, "end": 6.5, "text": "then, we boil it"}]}]
    assert read_jsonl(tmp_path / "a.jsonl") == read_jsonl(tmp_path / "b.jsonl") == expected
    assert (csv_result.rows, csv_result.items, csv_result.skipped) == (1, 2, 1)


def test_youcook2_training_subset_as_timed_captions(tmp_path):
    path = write_json(tmp_path / "youcookii_annotations_trainval.json", {"database": {
        "GLd3aX16zBg": {"subset": "training", "duration": 241.62, "recipe_type": "113", "annotations": [
            {"segment": [90, 102], "id": 0, "sentence": "spread margarine on two slices of white bread"},
            {"segment": [114, 127], "id": 1, "sentence": "place a slice of cheese on the bread"}]},
        "xHr8X2Wpmno": {"subset": "validation", "duration": 100.0, "recipe_type": "201", "annotations": [
            {"segment": [0, 5], "id": 0, "sentence": "cut the onion"}]}}})
    convert.youcook2_manifest(path, str(tmp_path / "train.jsonl"))
    assert read_jsonl(tmp_path / "train.jsonl") == [{"video_id": "GLd3aX16zBg", "captions": [
        {"start": 90.0, "end": 102.0, "text": "spread margarine on two slices of white bread"},
        {"start": 114.0, "end": 127.0, "text": "place a slice of cheese on the bread"}]}]
    with pytest.raises(convert.ConvertError, match="no video with subset 'testing'.*training, validation"):
        convert.youcook2_manifest(path, str(tmp_path / "x.jsonl"), subset="testing")


def test_msrvtt_exact_9k_ids_and_errors(tmp_path):
    info = write_json(tmp_path / "train_val_videodatainfo.json", {
        "videos": [{"video_id": f"video{i}", "split": "train", "id": i} for i in (0, 1, 2, 10)],
        "sentences": [{"video_id": f"video{i}", "caption": f"caption of {i}", "sen_id": i} for i in (0, 1, 2, 10)]})
    (tmp_path / "MSRVTT_train.9k.csv").write_text("video_id\nvideo10\nvideo2\nvideo0\n")
    convert.msrvtt_captions([info], str(tmp_path / "train.jsonl"), ids=str(tmp_path / "MSRVTT_train.9k.csv"))
    assert [r["video_id"] for r in read_jsonl(tmp_path / "train.jsonl")] == ["video0", "video2", "video10"]
    (tmp_path / "more.csv").write_text("video_id\nvideo7000\n")
    with pytest.raises(convert.ConvertError, match="1 ids are in no annotation file.*video7000.*test_videodatainfo"):
        convert.msrvtt_captions([info], str(tmp_path / "t.jsonl"), ids=str(tmp_path / "more.csv"))
    with pytest.raises(convert.ConvertError, match="holdout=4 must be in"):
        convert.msrvtt_captions([info], str(tmp_path / "t.jsonl"), holdout=4, holdout_out=str(tmp_path / "v.jsonl"))
    bad = write_json(tmp_path / "bad.json", {"videos": [{"id": 0}], "sentences": []})
    with pytest.raises(convert.ConvertError, match=r"bad.json: videos\[0\] has no key 'video_id'"):
        convert.msrvtt_captions([bad], str(tmp_path / "t.jsonl"))


def test_media_inputs_refuses_two_files_with_one_id(tmp_path):
    for sub in ("training/113", "validation/201"):
        (tmp_path / "raw" / sub).mkdir(parents=True)
        (tmp_path / "raw" / sub / "GLd3aX16zBg.mp4").write_bytes(b"x")
    with pytest.raises(convert.ConvertError, match="id 'GLd3aX16zBg' is also"):
        convert.media_inputs(str(tmp_path / "raw"), str(tmp_path / "inputs.jsonl"))


def test_msrvtt_9k_needs_the_test_ids_and_each_video_once(tmp_path):
    """The 9k split is the 10k videos less the 1k-A test ids: with the test
    annotations missing, the csv's ids are in no file and the result would be
    the 7k train+val videos, so it is refused; a video listed by two files
    (MSRVTT_data.json beside test_videodatainfo.json) would count its
    sentences twice, so it is refused too; a null caption is an error."""
    def info(name, ids, caption=lambda i: f"caption of {i}"):
        return write_json(tmp_path / name, {
            "videos": [{"video_id": f"video{i}", "id": i} for i in ids],
            "sentences": [{"video_id": f"video{i}", "caption": caption(i), "sen_id": i} for i in ids]})

    train_val, test = info("train_val_videodatainfo.json", (0, 1)), info("test_videodatainfo.json", (7010, 7011))
    (tmp_path / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\nret0,msr7010,video7010,a\n")
    csv_path = str(tmp_path / "MSRVTT_JSFUSION_test.csv")
    out = str(tmp_path / "train.jsonl")
    with pytest.raises(convert.ConvertError, match="1 of its 1 test ids are in no annotation file.*'video7010'"):
        convert.msrvtt_captions([train_val], out, exclude=csv_path)
    convert.msrvtt_captions([train_val, test], out, exclude=csv_path)
    assert [r["video_id"] for r in read_jsonl(out)] == ["video0", "video1", "video7011"]
    everything = info("MSRVTT_data.json", (0, 1, 7010, 7011))
    with pytest.raises(convert.ConvertError, match=r"test_videodatainfo.json: videos\[0\] is 'video7010', which "
                                                   r".*MSRVTT_data.json lists too"):
        convert.msrvtt_captions([everything, test], str(tmp_path / "t.jsonl"), exclude=csv_path)
    nulls = info("null.json", (0,), caption=lambda i: None)
    with pytest.raises(convert.ConvertError, match=r"null.json: sentences\[0\].caption must be a string, not NoneType"):
        convert.msrvtt_captions([nulls], str(tmp_path / "t.jsonl"))
    # a spreadsheet's byte-order mark before the header
    (tmp_path / "bom.csv").write_bytes("\ufeffvideo_id\nvideo1\n".encode("utf-8"))
    assert convert.csv_ids(str(tmp_path / "bom.csv")) == {"video1"}


@pytest.mark.parametrize("text, message", [
    ("start,end,text\nabc,2.5,hello\n", r"x.csv: line 2: start must be a finite number of seconds, not 'abc'"),
    ("start,end,text\n0.0,2.5\n", r"x.csv:2: no value for 'text' \(a short row\)"),
    ("start,end,text\n0,1,caf\xe9\n", r"x.csv: not UTF-8 text"),
])
def test_howto100m_bad_csv_values_are_one_line_naming_the_line(tmp_path, text, message):
    (tmp_path / "captions").mkdir()
    (tmp_path / "captions" / "x.csv").write_bytes(text.encode("latin-1"))
    with pytest.raises(convert.ConvertError, match=message) as err:
        convert.howto100m_asr(str(tmp_path / "captions"), str(tmp_path / "a.jsonl"))
    assert "\n" not in str(err.value) and not (tmp_path / "a.jsonl").exists()


def test_howto100m_json_bad_times_fail_and_null_texts_are_skipped(tmp_path):
    raw = write_json(tmp_path / "raw_caption.json", {"v": {"start": [0, 1], "end": [1, 2], "text": [None, "ok"]}})
    result = convert.howto100m_asr(raw, str(tmp_path / "a.jsonl"))
    assert read_jsonl(tmp_path / "a.jsonl") == [{"video_id": "v", "segments": [{"start": 1.0, "end": 2.0,
                                                                                "text": "ok"}]}]
    assert result.skipped == 1   # the ASR's null: never the text "None"
    bad = write_json(tmp_path / "bad.json", {"v": {"start": [None], "end": [1], "text": ["ok"]}})
    with pytest.raises(convert.ConvertError, match=r"bad.json: v.start\[0\] must be a finite number of seconds"):
        convert.howto100m_asr(bad, str(tmp_path / "b.jsonl"))


def test_media_inputs_videos_only_and_no_metadata_files(tmp_path):
    """A downloader's thumbnail beside its video (yt-dlp --write-thumbnail) and
    macOS's ._ files: the video recipes list the videos alone."""
    root = tmp_path / "videos"
    root.mkdir()
    for name in ("abc.mp4", "abc.jpg", "._abc.mp4", "def.webm"):
        (root / name).write_bytes(b"x")
    with pytest.raises(convert.ConvertError, match="id 'abc' is also"):
        convert.media_inputs(str(root), str(tmp_path / "all.jsonl"))
    convert.media_inputs(str(root), str(tmp_path / "v.jsonl"), videos_only=True)
    assert [(r["video_id"], r["path"].rsplit("/", 1)[1]) for r in read_jsonl(tmp_path / "v.jsonl")] == \
        [("abc", "abc.mp4"), ("def", "def.webm")]


def test_karpathy_image_root_and_inputs_out_go_together(tmp_path):
    path = write_json(tmp_path / "dataset_flickr30k.json", {"images": [
        {"filename": "1000092795.jpg", "filepath": None, "split": "train",
         "sentences": [{"raw": "Two young guys with shaggy hair look at their hands."}]}]})
    for kwargs in ({"image_root": str(tmp_path)}, {"inputs_out": str(tmp_path / "in.jsonl")}):
        with pytest.raises(convert.ConvertError, match="--image-root and --inputs-out go together"):
            convert.karpathy_images(path, str(tmp_path / "m.jsonl"), **kwargs)
        assert not (tmp_path / "m.jsonl").exists()
    convert.karpathy_images(path, str(tmp_path / "m.jsonl"), image_root=str(tmp_path / "imgs"),
                            inputs_out=str(tmp_path / "in.jsonl"))
    assert read_jsonl(tmp_path / "in.jsonl") == [{"path": str(tmp_path / "imgs" / "1000092795.jpg"),
                                                  "video_id": "1000092795"}]
    nulls = write_json(tmp_path / "n.json", {"images": [{"filename": "a.jpg", "split": "train",
                                                         "sentences": [{"raw": None}]}]})
    with pytest.raises(convert.ConvertError, match=r"images\[0\].sentences\[0\].raw must be a string"):
        convert.karpathy_images(nulls, str(tmp_path / "n.jsonl"))
