"""The synthetic demo set, checked from the outside: decoded pixels against
the attribute table and reference colours of the test's own, the splits'
compositions and balance counted from attributes.jsonl, the manifests through
the corpus reader, the ids through extraction's input walker."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections import Counter
from itertools import combinations
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from videolm.data.corpus import read_manifest
from videolm.datasets import TINY, DatasetError, SyntheticConfig, generate, make_plan
from videolm.datasets.synthetic import attribute_row, main
from videolm.features.inputs import collect_inputs

# what a person calls each colour: CSS named colours, not the generator's palette
CSS = {"red": (255, 0, 0), "orange": (255, 165, 0), "yellow": (255, 255, 0), "green": (0, 128, 0),
       "turquoise": (64, 224, 208), "blue": (0, 0, 255), "pink": (255, 192, 203), "brown": (165, 42, 42)}
AXIS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # image rows grow downwards
OTHER_VIDEO = ("direction", "speed", "size", "background")
OTHER_IMAGE = ("size", "background")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic") / "tiny")
    return generate(out, TINY)


@pytest.fixture(scope="session")
def rows(tiny) -> list[dict]:
    with open(tiny.attributes) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def default_rows() -> list[dict]:
    """attributes.jsonl rows of the default set, from its plan (nothing rendered)."""
    plan = make_plan(SyntheticConfig())
    return [attribute_row(item, plan.config.fps) for item in plan.items]


def decode_pyav(path: str) -> np.ndarray:
    with av.open(path) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def files_of(root: str) -> dict[str, bytes]:
    out = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def chroma(frame: np.ndarray) -> np.ndarray:
    f = frame.astype(np.int32)
    return f.max(-1) - f.min(-1)  # 0 for the grey backgrounds


def named_colour(pixels: np.ndarray) -> str:
    """The CSS colour nearest the median of the most saturated pixels given ((n, 3))."""
    c = chroma(pixels)
    top = pixels[np.argsort(-c)[: max(3, len(c) // 5)]]
    median = np.median(top.astype(np.float64), axis=0)
    return min(CSS, key=lambda name: float(np.sum((median - CSS[name]) ** 2)))


def centre_at(row: dict, t: int) -> tuple[float, float]:
    return row["x"] + row.get("vx", 0.0) * t, row["y"] + row.get("vy", 0.0) * t


# ------------------------------------------------------------------ files


def test_same_seed_same_bytes_other_seed_differs(tiny, tmp_path):
    again = generate(str(tmp_path / "again"), TINY, workers=2)  # other processes, other order: the same bytes
    first, second = files_of(tiny.root), files_of(again.root)
    assert sorted(first) == sorted(second) and len(first) == sum(tiny.counts.values()) + 9  # + 7 manifests + 2
    assert all(first[name] == second[name] for name in first)
    other = files_of(generate(str(tmp_path / "other"), dataclasses.replace(TINY, seed=1)).root)
    media = [name for name in first if name.endswith((".mp4", ".png"))]
    assert sum(first[name] != other.get(name) for name in media) >= 0.9 * len(media)
    assert first["attributes.jsonl"] != other["attributes.jsonl"]


def test_every_file_decodes_with_pyav_and_decord_at_its_size(tiny, rows):
    import decord

    side = TINY.frame_size
    for row in rows:
        path = os.path.join(tiny.root, row["path"])
        if row["kind"] == "image":
            with Image.open(path) as image:
                assert image.format == "PNG" and image.size == (side, side) and image.mode == "RGB"
            continue
        frames = decode_pyav(path)
        assert frames.shape == (row["frames"], side, side, 3)
        reader = decord.VideoReader(path)
        assert len(reader) == row["frames"] and reader.get_avg_fps() == TINY.fps
        assert np.array_equal(reader.get_batch(list(range(len(reader)))).asnumpy(), frames)
        with av.open(path) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
            assert float(stream.duration * stream.time_base) == pytest.approx(row["frames"] / TINY.fps)


def test_pixels_show_the_named_colour_where_the_table_puts_the_shape(tiny, rows):
    side = TINY.frame_size
    yy, xx = np.mgrid[0:side, 0:side] + 0.5  # pixel centres
    checked = 0
    for row in rows:
        if row["kind"] == "asr":
            continue
        path = os.path.join(tiny.root, row["path"])
        frames = np.asarray(Image.open(path).convert("RGB"))[None] if row["kind"] == "image" else decode_pyav(path)
        for t in sorted({0, len(frames) - 1}):
            cx, cy = centre_at(row, t)
            distance = np.hypot(xx - cx, yy - cy)
            inside, outside = distance <= row["radius"] + 0.5, distance > row["radius"] + 2.5
            assert named_colour(frames[t][inside]) == row["colour"], (row["id"], t)
            assert (chroma(frames[t])[outside] > 60).mean() < 0.01, (row["id"], t)  # nothing coloured elsewhere
            far = frames[t][outside].astype(np.float64).mean(-1)
            if row["background"] == "dark":
                assert far.mean() < 70
            elif row["background"] == "light":
                assert far.mean() > 170
            else:  # stripes or dots: a pattern, mid grey
                assert 60 < far.mean() < 170 and far.std() > 15
            checked += 1
    assert checked == 2 * sum(r["kind"] == "video" for r in rows) + sum(r["kind"] == "image" for r in rows)


def test_the_shape_moves_the_named_way_and_size_shows(tiny, rows):
    travel = {"slowly": [], "quickly": []}
    extent = {"small": [], "large": []}
    for row in [r for r in rows if r["kind"] == "video"]:
        frames = decode_pyav(os.path.join(tiny.root, row["path"]))
        centroids = []
        for frame in frames:
            weight = chroma(frame).astype(np.float64)  # ~ the shape's coverage of each pixel (greys have none)
            weight[weight < 12] = 0
            ys, xs = np.nonzero(weight > 60)
            yy, xx = np.mgrid[0:frame.shape[0], 0:frame.shape[1]] + 0.5
            centroids.append(((weight * xx).sum() / weight.sum(), (weight * yy).sum() / weight.sum()))
            extent[row["size"]].append(max(xs.max() - xs.min(), ys.max() - ys.min()) + 1)
        moved = np.subtract(centroids[-1], centroids[0])
        ax, ay = AXIS[row["direction"]]
        along, across = moved[0] * ax + moved[1] * ay, abs(moved[0] * ay + moved[1] * ax)
        assert along > 1.5 and across < 1.0, (row["id"], moved)
        assert along == pytest.approx(math.hypot(row["vx"], row["vy"]) * (row["frames"] - 1), abs=1.0)
        steps = np.diff(np.asarray(centroids) @ np.array([ax, ay]))
        assert (steps > -0.5).all()  # steady, never back
        travel[row["speed"]].append(along)
    assert min(travel["quickly"]) > 2 * max(travel["slowly"])
    assert np.mean(extent["large"]) > 1.4 * np.mean(extent["small"])


def test_asr_videos_hold_their_events_in_order(tiny, rows):
    side = TINY.frame_size
    for row in [r for r in rows if r["kind"] == "asr"]:
        frames = decode_pyav(os.path.join(tiny.root, row["path"]))
        assert len(frames) == row["frames"] == sum(e["frames"] for e in row["events"])
        for before, after in zip(row["events"], row["events"][1:]):
            assert after["start"] == pytest.approx(before["end"])
            assert (before["colour"], before["shape"]) != (after["colour"], after["shape"])
        for event in row["events"]:
            first = round(event["start"] * TINY.fps)
            mid = first + event["frames"] // 2
            assert event["end"] - event["start"] == pytest.approx(event["frames"] / TINY.fps)
            cx, cy = event["x"] + event["vx"] * (mid - first), event["y"] + event["vy"] * (mid - first)
            yy, xx = np.mgrid[0:side, 0:side] + 0.5
            assert named_colour(frames[mid][np.hypot(xx - cx, yy - cy) <= event["radius"] + 0.5]) == event["colour"]


# ------------------------------------------------------------------ splits


def pairs_in(rows: list[dict], split: str) -> set[tuple[str, str]]:
    out = set()
    for row in rows:
        if row["split"] == split:
            for event in row.get("events", [row]):
                out.add((event["colour"], event["shape"]))
    return out


@pytest.mark.parametrize("which", ["tiny", "default"])
def test_held_out_pairs_never_occur_in_training(which, request):
    rows = request.getfixturevalue("rows" if which == "tiny" else "default_rows")
    declared = make_plan(TINY if which == "tiny" else SyntheticConfig()).pairs  # as meta.json records them
    train, val, test = (pairs_in(rows, s) for s in ("train", "val", "test"))
    assert not train & val and not train & test and not val & test
    assert len({c for c, _ in train}) == 8 and len({s for _, s in train}) == 8  # every colour and shape trains
    for split, pairs in (("train", train), ("val", val), ("test", test)):
        assert pairs <= set(declared[split])
    if which == "default":
        assert len(train) == 32 and len(val) == 16 and len(test) == 16
        for pairs in (train, val, test):  # shape never implies colour, nor colour shape
            assert min(Counter(c for c, _ in pairs).values()) >= 2
            assert min(Counter(s for _, s in pairs).values()) >= 2


def mutual_information(a: list, b: list) -> float:
    """In nats, from the joint counts."""
    n = len(a)
    joint, pa, pb = Counter(zip(a, b)), Counter(a), Counter(b)
    return sum(c / n * math.log(c * n / (pa[x] * pb[y])) for (x, y), c in joint.items())


def test_default_splits_are_balanced_so_no_attribute_gives_another_away(default_rows):
    items = [(r["split"], r["kind"], r) for r in default_rows if r["kind"] != "asr"]
    items += [("train", "asr", e) for r in default_rows if r["kind"] == "asr" for e in r["events"]]
    for split, kind in [("train", "video"), ("val", "video"), ("test", "video"), ("train", "image"),
                        ("val", "image"), ("test", "image"), ("train", "asr")]:
        group = [r for s, k, r in items if s == split and k == kind]
        others = OTHER_IMAGE if kind == "image" else OTHER_VIDEO
        pair = [(r["colour"], r["shape"]) for r in group]
        for name in others:
            values = [r[name] for r in group]
            for given in ([r["colour"] for r in group], [r["shape"] for r in group], pair):
                assert mutual_information(given, values) == pytest.approx(0, abs=1e-12), (split, kind, name)
            counts = Counter(zip(pair, values))  # exactly the same count of each value for every pair
            assert len(set(counts.values())) == 1 and len(counts) == len(set(pair)) * len(set(values))
        for x, y in combinations(others, 2):
            assert mutual_information([r[x] for r in group], [r[y] for r in group]) == pytest.approx(0, abs=1e-12)
        # colour and shape: each colour spreads evenly over >= 2 shapes, so H(shape | colour) >= log 2
        colours, shapes = [r["colour"] for r in group], [r["shape"] for r in group]
        entropy = -sum(c / len(group) * math.log(c / len(group)) for c in Counter(shapes).values())
        assert entropy - mutual_information(colours, shapes) >= math.log(2) - 1e-12


def test_default_set_counts_without_rendering():
    plan = make_plan(SyntheticConfig())
    counts = plan.counts()
    assert counts["test_video"] >= 200 and counts["test_image"] >= 100
    assert counts["val_video"] > 0 and counts["val_image"] > 0 and counts["train_asr"] > 0
    assert counts["train_video"] >= counts["test_video"]
    assert all(plan.balanced.values())
    assert len({item.id for item in plan.items}) == len(plan.items)


# ------------------------------------------------------------------ manifests, ids, text


def test_manifests_parse_and_name_what_is_shown(tiny, rows):
    by_id = {r["id"]: r for r in rows}
    seen = set()
    for name, path in tiny.manifests.items():
        kind = "asr" if name.endswith("asr") else "image" if name.endswith("images") else "caption"
        parsed, bad, count = read_manifest(path, kind)
        assert bad == [] and count == len(parsed)
        split = name.split("_")[0]
        assert count == tiny.counts[f"{split}_{'asr' if kind == 'asr' else kind.replace('caption', 'video')}"]
        for _, media_id, payload in parsed:
            row = by_id[media_id]
            assert row["split"] == split and row["kind"] == ("video" if kind == "caption" else kind)
            seen.add(media_id)
            if kind == "asr":
                starts, ends, texts = payload
                assert starts[0] == 0 and ends[-1] == pytest.approx(row["frames"] / TINY.fps)
                for text, event in zip(texts, row["events"]):
                    assert event["colour"] in text.split() and event["shape"] in text.split()
                continue
            assert len(payload) >= 2
            assert all(start is None for _, start, _ in payload)
            words = [text.split() for text, _, _ in payload]
            named = OTHER_IMAGE if kind == "image" else OTHER_VIDEO
            assert all(row[a] in words[0] for a in ("colour", "shape", *named))  # the first names everything
            assert all(row["colour"] in w and row["shape"] in w for w in words)
            assert len({text for text, _, _ in payload}) == len(payload)
    assert seen == set(by_id)


def test_ids_are_what_extraction_assigns(tiny, rows):
    items, errors = collect_inputs(tiny.media_dirs)
    assert errors == []
    assert sorted(i.video_id for i in items) == sorted(r["id"] for r in rows)
    for item in items:
        assert os.path.relpath(item.path, tiny.root) == next(r["path"] for r in rows if r["id"] == item.video_id)


def test_attribute_words_are_single_wordpieces_and_no_article_gives_one_away(tiny, minilm):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm)
    with open(tiny.meta) as f:
        meta = json.load(f)
    words = [w for values in meta["attributes"].values() for w in values]
    assert len(words) == len(set(words))
    for word in words:
        assert tokenizer.tokenize(word) == [word]
    templates = meta["templates"]["video"] + meta["templates"]["image"]
    for template in templates:
        tokens = template.split()
        for i, token in enumerate(tokens):
            if token.startswith("{") and i and tokens[i - 1] in ("a", "an"):
                values = meta["attributes"][token.strip("{}")]
                assert len({v[0] in "aeiou" for v in values}) == 1, template  # "a" fits every value alike
    assert meta["zeroshot_templates"]["video"] == meta["templates"]["video"][0]


# ------------------------------------------------------------------ reruns and mistakes


def test_rerun_skips_finished_files_and_redoes_missing_ones(tmp_path):
    out = str(tmp_path / "set")
    calls = []
    first = generate(out, TINY, progress=lambda done, total: calls.append((done, total)))
    total = sum(first.counts.values())
    assert first.written == total and calls[-1] == (total, total)
    stamps = {name: os.stat(os.path.join(out, name)).st_mtime_ns for name in files_of(out)}
    gone = os.path.join(first.videos, "test_v0003.mp4")
    content = Path(gone).read_bytes()
    os.remove(gone)
    stale = os.path.join(first.videos, "test_v0004.mp4.tmp-4194305")  # a killed run's temporary
    Path(stale).write_bytes(b"partial")
    again = generate(out, TINY)
    assert (again.written, again.skipped) == (1, total - 1)
    assert Path(gone).read_bytes() == content and not os.path.exists(stale)
    for name, stamp in stamps.items():
        if name.endswith((".mp4", ".png")) and name != "videos/test_v0003.mp4":
            assert os.stat(os.path.join(out, name)).st_mtime_ns == stamp


def test_another_config_or_a_foreign_directory_is_refused_in_one_line(tiny, tmp_path, capsys):
    out = str(tmp_path / "set")
    shutil.copytree(tiny.root, out)
    with pytest.raises(DatasetError) as err:
        generate(out, dataclasses.replace(TINY, seed=3))
    message = str(err.value)
    assert message.startswith(f"{out}: holds a synthetic set made with another config (seed 0 -> 3)")
    assert "\n" not in message
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty and not a synthetic set"):
        generate(str(tmp_path / "foreign"), TINY)
    assert main([out, "--preset", "tiny", "--seed", "3"]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: ") and stderr.count("\n") == 1
    assert main([out, "--preset", "tiny", "--workers", "1"]) == 0


def test_impossible_configs_are_one_line_errors():
    with pytest.raises(DatasetError, match="frame_size must be an even integer"):
        SyntheticConfig(frame_size=33)
    with pytest.raises(DatasetError, match="leaves the frame"):
        SyntheticConfig(frames=200)
    with pytest.raises(DatasetError, match="non-negative integer"):
        SyntheticConfig(test_videos=-1)
    with pytest.raises(DatasetError, match="ASR events of 9 s"):
        SyntheticConfig(asr_event_seconds=(9,))
