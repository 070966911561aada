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
