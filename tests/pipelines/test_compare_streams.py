"""pipelines/compare_streams.py on the real sample media at the tiny preset:
18 runs (3 architectures x 2 modes x 3 seeds), the report, and its verdicts
recomputed here from the per-seed figures."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CAPTIONS = {
    "bigbuckbunny": ["a big white rabbit stands in a green meadow", "a cartoon rabbit watches a butterfly"],
    "bikes": ["cyclists ride their bikes along a street", "people on bicycles pass by"],
    "carphone_pristine": ["a man talks on a phone in a car"],
    "carphone_distorted": ["a blurry video of a man on the phone in a car"],
    "blue": ["a plain blue screen"],
}
IMAGES = {"astronaut": ["an astronaut in front of a flag"], "chelsea": ["a tabby cat"], "coffee": ["a cup of coffee"]}
COLOUR = {"bigbuckbunny": "green", "bikes": "grey", "carphone_pristine": "grey", "carphone_distorted": "grey",
          "blue": "blue", "astronaut": "white", "chelsea": "grey", "coffee": "white"}


def _pipeline():
    spec = importlib.util.spec_from_file_location("compare_streams", os.path.join(REPO, "pipelines", "compare_streams.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jsonl(path, rows) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def test_compare_streams_tiny(sample_media_store, tmp_path, one_torch_thread):
    captions = _jsonl(tmp_path / "captions.jsonl", [{"video_id": v, "captions": c} for v, c in CAPTIONS.items()])
    images = _jsonl(tmp_path / "images.jsonl", [{"image_id": i, "captions": c} for i, c in IMAGES.items()])
    attributes = _jsonl(tmp_path / "attributes.jsonl", [{"id": i, "split": "test", "colour": c} for i, c in COLOUR.items()])
    out = tmp_path / "out"
    cs = _pipeline()
    argv = ["--store", f"{sample_media_store}/store", "--vocab", f"{sample_media_store}/vocab",
            "--train", f"caption:{captions}", "--train", f"image:{images}", "--eval", captions, "--eval", images,
            "--attributes", attributes, "--attribute", "colour", "--out", str(out), "--preset", "tiny",
            "--rerank-k", "2", "--epoch-size", "16"]
    report = cs.main(argv)
    text = Path(report).read_text()
    assert os.path.getsize(out / "compare_streams.png") > 1000
    for heading in ("## videobert, matched depth: `single` vs `two`", "## cbt, matched parameters: `single_wide` vs `two`"):
        assert heading in text
    summary = json.loads((out / "results.json").read_text())["comparison"]
    for mode in ("videobert", "cbt"):
        for setting, (a, b) in cs.SETTINGS.items():
            for d in ("t2v", "v2t", "t2i", "i2t"):
                for row in ("dual", "reranked"):
                    entry = summary[f"{mode} / {setting} / {d} {row} R@1"]
                    x, y = np.array(entry[a]), np.array(entry[b])
                    assert len(x) == len(y) == 3
                    assert entry["beyond_spread"] == bool(x.max() < y.min() or y.max() < x.min())
                    if x.mean() != y.mean():
                        assert entry["winner"] == (b if y.mean() > x.mean() else a)  # higher recall wins
            mnr = summary[f"{mode} / {setting} / t2v dual MnR"]
            if np.mean(mnr[a]) != np.mean(mnr[b]):
                assert mnr["winner"] == (a if np.mean(mnr[a]) < np.mean(mnr[b]) else b)  # lower rank wins
            assert f"{mode} / {setting} / zeroshot colour" in summary
    # the parameter counts are the saved models' own; matched depth really differs in size
    from videolm.model.pretraining import VideoLMForPretraining

    for arch, layers in (("single", 3), ("single_wide", 6)):
        model = VideoLMForPretraining.from_pretrained(str(out / "runs" / f"cbt_{arch}_s0" / "model"))
        assert model.config.num_layers == layers
        assert summary["cbt / matched depth / params"]["single"][0] == sum(
            p.numel() for p in VideoLMForPretraining.from_pretrained(
                str(out / "runs" / "cbt_single_s0" / "model")).parameters())
    # a rerun skips every stage
    before = os.path.getmtime(out / "runs" / "cbt_two_s2" / "compare.json")
    cs.main(argv)
    assert os.path.getmtime(out / "runs" / "cbt_two_s2" / "compare.json") == before


def test_a_bad_source_or_a_missing_vocabulary_is_one_line(sample_media_store, tmp_path, capsys):
    import pytest

    cs = _pipeline()
    base = ["--store", os.path.join(sample_media_store, "store"), "--eval", str(tmp_path / "e.jsonl"),
            "--out", str(tmp_path / "out"), "--preset", "tiny", "--modes", "videobert"]
    with pytest.raises(SystemExit) as stop:
        cs.main(base + ["--vocab", "v", "--train", "captions.jsonl"])   # no KIND:
    assert stop.value.code == 2 and "expected KIND:MANIFEST" in capsys.readouterr().err
    train = _jsonl(tmp_path / "t.jsonl", [{"video_id": "bikes", "captions": ["bikes"]}])
    with pytest.raises(SystemExit) as stop:
        cs.main(base + ["--vocab", str(tmp_path / "no_vocab"), "--train", f"caption:{train}"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("error: ") and "no_vocab" in err and "Traceback" not in err
