import pytest

from videolm.features.inputs import UsageError, collect_inputs


def test_directory_list_csv_and_jsonl(tmp_path):
    (tmp_path / "vids" / "sub").mkdir(parents=True)
    for name in ["vids/a.mp4", "vids/sub/b.MOV", "vids/readme.md", "vids/c.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "list.txt").write_text("# comment\nvids/a.mp4\n\n/abs/x.mp4\n")
    (tmp_path / "m.csv").write_text("video_id,path\nv1,vids/a.mp4\nv2,vids/sub/b.MOV,extra\nv3,\n")
    (tmp_path / "m.jsonl").write_text('{"id": "j1", "path": "vids/c.jpg"}\n[1, 2]\n{"path": "vids/a.mp4"}\n')
    items, errors = collect_inputs([str(tmp_path / "vids"), str(tmp_path / "list.txt"),
                                    str(tmp_path / "m.csv"), str(tmp_path / "m.jsonl")])
    assert [i.video_id for i in items] == ["a", "c", "sub/b", "vids/a", "x", "v1", "j1"]
    assert items[4].path == "/abs/x.mp4" and items[5].path == str(tmp_path / "vids" / "a.mp4")
    where = {e.where: e.reason for e in errors}
    assert "expected 2 fields, found 3" in where[f"{tmp_path}/m.csv:3"]
    assert "no path" in where[f"{tmp_path}/m.csv:4"]
    assert "expected a JSON object" in where[f"{tmp_path}/m.jsonl:2"]
    assert "duplicate id 'vids/a'" in where[f"{tmp_path}/m.jsonl:3"]  # list.txt:2 had it


def test_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        collect_inputs([str(tmp_path / "missing")])
    (tmp_path / "bad.csv").write_text("video_id,url\nv1,http://x\n")
    with pytest.raises(UsageError, match="'path' column"):
        collect_inputs([str(tmp_path / "bad.csv")])
    with pytest.raises(UsageError):
        collect_inputs([])


def test_duplicate_id_names_the_file_not_its_folder(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.png").write_bytes(b"x")
    items, errors = collect_inputs([str(tmp_path / "a"), str(tmp_path / "b")])
    assert [i.path for i in items] == [str(tmp_path / "a" / "x.png")]
    (error,) = errors
    assert error.where == str(tmp_path / "b" / "x.png")
    assert f"first from {tmp_path / 'a' / 'x.png'}" in error.reason


def test_a_folder_without_media_is_a_usage_error_listing_the_extensions(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("x")
    with pytest.raises(UsageError) as err:
        collect_inputs([str(tmp_path / "docs")])
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'docs'}: no video or image files")
    assert ".mp4" in message and ".jpg" in message and "\n" not in message
