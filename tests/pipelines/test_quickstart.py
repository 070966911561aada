"""The quickstart on its tiny setting: every stage, the report's files, a
rerun that skips every stage, and the directories it refuses."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from videolm.cli import main as cli

KEYS = {"model", "rerank", "direction", "R1", "R5", "R10", "MdR", "MnR", "n_queries", "n_gallery"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, mobilenet_weights):
    root = tmp_path_factory.mktemp("quickstart")
    out, results = root / "work", root / "results"
    assert cli(["demo", "--tiny", "--out", str(out), "--results", str(results)]) == 0
    return out, results


def test_report_files_and_rows(tiny_run):
    out, results = tiny_run
    summary = json.loads((results / "results.json").read_text())
    for name in ("report.md", "words.png", "loss_cbt.png", "loss_videobert.png", "recall_cbt.png",
                 "retrieval_videobert.png"):
        assert (results / name).stat().st_size > 500, name
    rows = summary["rows"]
    assert all(KEYS <= set(r) for r in rows)
    models = {r["model"] for r in rows}
    assert {"chance", "videobert", "cbt", "untrained (videobert)", "untrained (cbt)"} <= models
    assert {r["direction"] for r in rows} == {"t2v", "v2t", "t2i", "i2t"}
    # chance R@1 of text->item: one correct item among the gallery (by hand from the counts)
    t2v = next(r for r in rows if r["model"] == "chance" and r["direction"] == "t2v")
    assert t2v["R1"] == pytest.approx(100 / t2v["n_gallery"], abs=1e-3)
    assert summary["chance_R1"]["t2v"] == t2v["R1"]
    # the table is the evaluation's own figures
    ev = json.loads((out / "eval" / "cbt" / "metrics.json").read_text())
    cbt = next(r for r in rows if r["model"] == "cbt" and r["direction"] == "i2t" and r["rerank"])
    assert cbt["R1"] == ev["results"]["i2t"]["reranked"]["R@1"]
    # re-ranking against the dual encoder, query by query: the evaluation's split, reported
    assert summary["rerank_paired"]["cbt"]["t2v"] == ev["paired"]["t2v"]["reranked"]["R@1"]
    assert "## Re-ranking against the dual encoder, query by query" in (results / "report.md").read_text()
    assert set(summary["seconds"]) >= {"data", "features", "words", "pretrain_cbt", "evaluate_videobert", "zeroshot_cbt"}
    assert len(summary["goals"]) == 6 and all("met" in g for g in summary["goals"])
    zs = summary["zeroshot"]["cbt"]
    assert {"video/colour", "video/shape", "video/direction", "image/size"} <= set(zs)
    assert zs["video/colour"]["chance"] == pytest.approx(100 / 8, abs=1e-3)
    # the runs validated on the val split during training
    metrics = [json.loads(line) for line in (out / "runs" / "cbt" / "metrics.jsonl").read_text().splitlines()]
    assert any("val/t2v/R@1" in r for r in metrics)


def test_rerun_skips_every_stage(tiny_run, tmp_path, capsys):
    out, results = tiny_run
    assert cli(["demo", "--tiny", "--out", str(out), "--results", str(results)]) == 0
    printed = capsys.readouterr().out
    for stage in ("data", "features", "words", "pretrain_videobert", "pretrain_cbt", "evaluate_cbt", "zeroshot_cbt"):
        assert f"== {stage}: done earlier" in printed
    # into another results folder: the stages are skipped, and every picture the report lists is there
    other = tmp_path / "other"
    assert cli(["demo", "--tiny", "--out", str(out), "--results", str(other)]) == 0
    assert "== words: done earlier" in capsys.readouterr().out
    pngs = json.loads((other / "results.json").read_text())["pngs"]
    assert "words" in pngs and all(os.path.isfile(p) for p in pngs.values())


def test_the_time_goal_adds_the_sanity_sets_recorded_seconds(tiny_run, tmp_path):
    out, results = tiny_run
    sanity = tmp_path / "sanity"
    sanity.mkdir()
    assert cli(["demo", "--tiny", "--out", str(out), "--results", str(tmp_path / "r0"), "--sanity", str(sanity)]) == 0
    goal = json.loads((tmp_path / "r0" / "results.json").read_text())["goals"][-1]
    # every stage was skipped: each counts the seconds its first run recorded
    stages = sum(v["seconds"] for k, v in json.loads((out / "stages.json").read_text()).items() if k != "report")
    assert goal["measured"].endswith(f"the sanity set not counted (no {sanity / 'seconds.json'})")
    (sanity / "seconds.json").write_text(json.dumps({"seconds": 587.5, "inputs": 8}))
    assert cli(["demo", "--tiny", "--out", str(out), "--results", str(tmp_path / "r1"), "--sanity", str(sanity)]) == 0
    goal = json.loads((tmp_path / "r1" / "results.json").read_text())["goals"][-1]
    # the tiny stages take seconds: with 587.5 s of sanity set the sum is over 600 s exactly when they take > 12.5 s
    assert goal["measured"] == (f"{stages + 587.5:.0f} s: {stages:.0f} s in the quickstart's stages + 588 s "
                                f"the sanity set")
    assert goal["met"] == (stages + 587.5 < 600)


def test_changed_settings_redo_that_stage_and_the_stages_that_read_it(tiny_run, tmp_path, capsys, monkeypatch):
    """Other visual words: the words and VideoBERT mode's stages are removed and redone; data,
    features and every CBT stage (which reads no words) are kept. A stages.json from a videolm
    that kept no keys is redone whole."""
    import videolm.quickstart as quickstart

    out, results = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    stages = json.loads((copy / "stages.json").read_text())
    for stage in stages.values():
        stage["output"] = json.loads(json.dumps(stage["output"]).replace(str(out), str(copy)))
    (copy / "stages.json").write_text(json.dumps(stages))
    old_vocab = json.loads((copy / "vocab" / "meta.json").read_text())
    monkeypatch.setattr(quickstart, "TINY_WORDS", {"k": 2, "depth": 1, "spherical": False})
    assert cli(["demo", "--tiny", "--out", str(copy), "--results", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    for stage in ("data", "features", "pretrain_cbt", "evaluate_cbt", "zeroshot_cbt"):
        assert f"== {stage}: done earlier" in printed, stage
    assert "== words: its settings changed since the run that wrote it; removing" in printed
    assert "== pretrain_videobert: words, which it reads, was redone; removing" in printed
    assert "== evaluate_videobert: pretrain_videobert, which it reads, was redone; removing" in printed
    assert "== zeroshot_videobert\n" in printed and "== zeroshot_videobert: done earlier" not in printed
    meta = json.loads((copy / "vocab" / "meta.json").read_text())
    assert (meta["config"]["spherical"], old_vocab["config"]["spherical"]) == (False, True)
    assert meta["config"]["k"] == 2
    # the redone run trained from scratch on the new words: no step from the old checkpoint
    assert "resumed" not in printed
    # another version of the tokenizer's code (an upgrade of videolm): the same stages are redone
    real = quickstart.code_fingerprint
    monkeypatch.setattr(quickstart, "code_fingerprint",
                        lambda parts: real(parts) + ("-upgraded" if "tokenize" in parts else ""))
    assert cli(["demo", "--tiny", "--out", str(copy), "--results", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert "== words: videolm's code for it (videolm/tokenize) changed since the run that wrote it" in printed
    assert "== pretrain_videobert: words, which it reads, was redone; removing" in printed
    for stage in ("data", "features", "pretrain_cbt", "evaluate_cbt", "zeroshot_cbt"):
        assert f"== {stage}: done earlier" in printed, stage
    assert real(("eval", "model")) == real(("model", "eval"))
    # another installed version of a package the words read (faiss-cpu): those stages are redone, named
    monkeypatch.undo()
    from importlib.metadata import version

    installed = quickstart.package_versions
    monkeypatch.setattr(quickstart, "package_versions", lambda names: {
        **installed(names), **({"faiss-cpu": "0.0.1"} if "faiss-cpu" in names else {})})
    assert cli(["demo", "--tiny", "--out", str(copy), "--results", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert f"== words: faiss-cpu {version('faiss-cpu')} -> 0.0.1 since the run that wrote it; removing" in printed
    assert f"== evaluate_cbt: faiss-cpu {version('faiss-cpu')} -> 0.0.1 since the run that wrote it" in printed
    for stage in ("data", "features", "pretrain_cbt", "zeroshot_cbt"):
        assert f"== {stage}: done earlier" in printed, stage
    # a record without keys (an earlier videolm's): every stage is redone
    monkeypatch.undo()
    stages = json.loads((copy / "stages.json").read_text())
    for stage in stages.values():
        stage.pop("key")
    (copy / "stages.json").write_text(json.dumps(stages))
    assert cli(["demo", "--tiny", "--out", str(copy), "--results", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert "done earlier" not in printed
    assert "== data: no record of its settings" in printed
    assert json.loads((copy / "vocab" / "meta.json").read_text())["config"]["spherical"] is True


def test_refuses_a_foreign_directory_and_a_broken_stage(tiny_run, tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("my files")
    assert cli(["demo", "--tiny", "--out", str(foreign), "--results", str(tmp_path / "r")]) == 2
    assert "not empty and not a quickstart's directory" in capsys.readouterr().err
    # a store that fails to open names its path and how to redo the stage
    out, results = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    stages = json.loads((copy / "stages.json").read_text())
    store = stages["features"]["output"]
    new_store = str(copy / os.path.relpath(store, out))
    for stage in stages.values():   # point the copy's stages at the copy
        stage["output"] = json.loads(json.dumps(stage["output"]).replace(str(out), str(copy)))
    del stages["words"]
    (copy / "stages.json").write_text(json.dumps(stages))
    os.remove(os.path.join(new_store, "meta.json"))
    assert cli(["demo", "--tiny", "--out", str(copy), "--results", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert new_store in err


def test_visual_words_are_spherical(tiny_run):
    """The quickstart fits cosine k-means words (docs/tokenizer.md#euclidean-or-spherical):
    the vocabulary says so, and every word's centroid has unit norm."""
    import numpy as np

    from videolm.tokenize.vocab import Vocabulary

    out, _ = tiny_run
    meta = json.loads((out / "vocab" / "meta.json").read_text())
    assert meta["config"]["spherical"] is True
    norms = np.linalg.norm(Vocabulary.from_pretrained(str(out / "vocab")).word_centroids(), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-4)


def test_the_code_fingerprint_follows_the_python_source(tmp_path):
    """A copy of videolm/tokenize: one changed byte of a .py file changes its fingerprint, a new
    file that is not Python does not, and the same source elsewhere gives the same one."""
    from videolm.quickstart import _fingerprint

    package = os.path.dirname(os.path.dirname(os.path.abspath(__import__("videolm").__file__)))
    for name in ("a", "b"):
        shutil.copytree(os.path.join(package, "videolm", "tokenize"), tmp_path / name / "tokenize",
                        ignore=shutil.ignore_patterns("__pycache__"))
    first = _fingerprint(("tokenize",), str(tmp_path / "a"))
    assert _fingerprint(("tokenize",), str(tmp_path / "b")) == first
    (tmp_path / "b" / "tokenize" / "notes.txt").write_text("not code")
    _fingerprint.cache_clear()
    assert _fingerprint(("tokenize",), str(tmp_path / "b")) == first
    kmeans = tmp_path / "b" / "tokenize" / "kmeans.py"
    kmeans.write_bytes(kmeans.read_bytes() + b"#")
    _fingerprint.cache_clear()
    assert _fingerprint(("tokenize",), str(tmp_path / "b")) != first


def test_zero_shot_above_chance_is_a_binomial_test():
    from videolm.quickstart_report import _above_chance_p

    assert _above_chance_p({"top1": 100.0, "n": 4, "chance": 50.0}) == pytest.approx(1 / 16)    # 4 of 4 by luck
    assert _above_chance_p({"top1": 75.0, "n": 4, "chance": 50.0}) == pytest.approx(5 / 16)     # 3 or 4 of 4


def test_an_out_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "work").write_text("not a directory")
    assert cli(["demo", "--tiny", "--out", str(tmp_path / "work"), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {tmp_path / 'work'}: a file, not a directory; choose another (--out / --results)"
