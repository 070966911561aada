"""The dataset end to end on hand-built stores: which clips and which text an
example gets (worked out by hand), what it reads, determinism, mixing, memory."""

import json
import os
import pickle
import tracemalloc

import numpy as np
import pytest
import torch

from videolm.data.batch import IGNORE, Batch
from videolm.data.config import DataConfig, SourceConfig
from videolm.data.corpus import build_pretrain_dataset, group_id
from videolm.data.errors import DataError
from videolm.features.store import FeatureStore

COLOURS = ["red", "green", "blue", "black", "white"]
COUNTS = [3, 4, 5, 2, 6]  # words (one WordPiece each) in ASR segments 0..4
SEGMENTS = [(0.0, 1.0), (1.0, 2.5), (2.5, 5.0), (6.0, 7.0), (9.0, 12.0)]
# v_long has 8 clips [1.5 i, 1.5 (i + 1)). With budgets 4..9 the possible runs of
# segments, and the clips their union span gets by the 0.5-overlap rule, by hand:
ASR_RUNS = {(0,): [0], (0, 1): [0, 1], (1,): [1], (1, 2): [1, 2], (2,): [2], (2, 3): [2, 3, 4],
            (3,): [4], (3, 4): [4, 5, 6, 7], (4,): [6, 7]}


def original(ids, labels) -> np.ndarray:
    """The unmasked sequence: the label where a position was masked."""
    ids, labels = np.asarray(ids), np.asarray(labels)
    return np.where(labels != IGNORE, labels, ids)


def words(tokenizer, example) -> list[str]:
    return tokenizer.convert_ids_to_tokens(original(example.text_ids, example.text_labels)[1:-1].tolist())


@pytest.fixture
def manifests(tmp_path, jsonl):
    caps = jsonl(tmp_path / "caps.jsonl", [
        {"video_id": "v_long", "captions": [{"text": "a dog runs", "start": 2.0, "end": 4.0},
                                            "a dog in a park", {"text": "the end", "start": 20.0, "end": 21.0}]},
        {"video_id": "v_short", "caption": "two clips"},
        {"video_id": "gappy", "captions": [{"text": "between", "start": 1.1, "end": 1.3}]}])
    asr = jsonl(tmp_path / "asr.jsonl", [{"video_id": "v_long", "segments": [
        {"start": s, "end": e, "text": " ".join([c] * n)} for (s, e), c, n in zip(SEGMENTS, COLOURS, COUNTS)]}])
    imgs = jsonl(tmp_path / "imgs.jsonl", [{"image_id": "img_a", "captions": ["a photo"]},
                                           {"image_id": "img_b", "captions": ["another photo", "a picture"]}])
    return {"caption": caps, "asr": asr, "image": imgs}


def build(tiny, manifests, tokenizer, mode="videobert", kinds=("caption", "asr", "image"), seed=0, **kw):
    cfg = DataConfig(store=tiny["store"], vocab=tiny["vocab"], sources=[SourceConfig(k, manifests[k]) for k in kinds],
                     **kw)
    return build_pretrain_dataset(cfg, mode, tokenizer, seed=seed)


def stored(root, video_id, clips, tokens=False):
    """Plain numpy, as docs/formats.md and docs/tokenizer.md describe the files:
    a feature store's index/ columns, or a tokens directory's index.npy records."""
    if os.path.isdir(os.path.join(root, "index")):
        index = {name: np.load(os.path.join(root, "index", f"{name}.npy")) for name in ("video_id", "shard", "offset",
                                                                                       "num_clips")}
        r = index["video_id"].tolist().index(video_id.encode())
        shard = f"shards/{index['shard'][r]:05d}.npy"
    else:
        index = np.load(os.path.join(root, "index.npy"))
        r = index["video_id"].tolist().index(video_id.encode())
        shard = np.load(os.path.join(root, "index_shards.npy"))[index["shard"][r]].decode()
    return np.load(os.path.join(root, shard))[index["offset"][r] : index["offset"][r] + index["num_clips"][r]][clips]


def test_caption_alignment_and_visual_values(tiny, manifests, tokenizer):
    ds = build(tiny, manifests, tokenizer, kinds=("caption",), max_visual_len=3, epoch_size=50)
    seen = {}
    for p in range(len(ds)):
        e = ds[(0, p)]
        text = " ".join(words(tokenizer, e))
        seen[text] = (e.span, e.clips.tolist())
        if text == "a dog in a park":  # no times: all 8 clips, spread over runs [0,2) [2,5) [5,8)
            assert e.span is None and len(e.clips) == 3
            assert 0 <= e.clips[0] < 2 <= e.clips[1] < 5 <= e.clips[2] < 8
        assert np.array_equal(original(e.visual_ids, e.visual_labels), stored(tiny["tokens"], e.video_id, e.clips))
        assert e.group_id == group_id(e.video_id) and not e.is_image
    assert seen["a dog runs"] == ((2.0, 4.0), [1, 2])  # 1.0 s of clips 1 and 2 >= 0.5 x 1.5
    assert seen["the end"] == ((20.0, 21.0), [7])      # past the end: the last clip
    assert seen["two clips"] == (None, [0, 1])
    assert seen["between"] == ((1.1, 1.3), [0])        # in the gap [1, 2): nearest to the midpoint 1.2


def test_cbt_features_are_the_stored_rows(tiny, manifests, tokenizer):
    ds = build(tiny, manifests, tokenizer, mode="cbt", kinds=("caption", "image"))
    assert ds.vocab is None and ds.feature_dim == 8
    for p in range(len(ds)):
        e = ds[(0, p)]
        assert e.visual_ids is None and e.visual_feats.dtype == np.float32
        expected = stored(tiny["store"], e.video_id, e.clips).astype(np.float32)
        assert np.array_equal(e.visual_feats, expected)  # unmasked: the model swaps masked ones itself
        if e.video_id.startswith("img_"):
            assert e.is_image and e.clips.tolist() == [0] and e.span is None


def test_asr_examples_concatenate_segments_within_the_budget(tiny, manifests, tokenizer):
    assert [len(tokenizer(" ".join([c] * n), add_special_tokens=False)["input_ids"])
            for c, n in zip(COLOURS, COUNTS)] == COUNTS  # one WordPiece per colour word
    ds = build(tiny, manifests, tokenizer, kinds=("asr",), asr_min_tokens=4, asr_max_tokens=9, epoch_size=40)
    runs = set()
    for epoch in range(3):
        for p in range(len(ds)):
            e = ds[(epoch, p)]
            toks = words(tokenizer, e)
            run = tuple(COLOURS.index(w) for i, w in enumerate(toks) if i == 0 or toks[i - 1] != w)
            assert run in ASR_RUNS, run
            assert toks == [COLOURS[s] for s in run for _ in range(COUNTS[s])]  # whole segments, in order
            assert e.span == (SEGMENTS[run[0]][0], SEGMENTS[run[-1]][1])
            assert e.clips.tolist() == ASR_RUNS[run]
            runs.add(run)
    assert runs == set(ASR_RUNS)  # every start segment and both budget outcomes occur


def test_asr_budget_is_capped_by_the_text_length(tiny, manifests, tokenizer):
    ds = build(tiny, manifests, tokenizer, kinds=("asr",), max_text_len=7, asr_min_tokens=8, asr_max_tokens=20,
               epoch_size=30)
    for p in range(len(ds)):
        e = ds[(0, p)]
        assert len(e.text_ids) <= 7
        assert e.text_ids[0] == tokenizer.cls_token_id and e.text_ids[-1] == tokenizer.sep_token_id


def test_truncation_and_cap(tiny, tmp_path, jsonl, tokenizer):
    long = " ".join(["word"] * 100)
    path = jsonl(tmp_path / "c.jsonl", [{"video_id": "v_long", "caption": long}])
    cfg = DataConfig(store=tiny["store"], sources=[SourceConfig("caption", path)], max_text_len=10, max_visual_len=4,
                     clip_sampling="window")
    e = build_pretrain_dataset(cfg, "cbt", tokenizer)[(0, 0)]
    assert len(e.text_ids) == 10 and words(tokenizer, e) == ["word"] * 8  # [CLS] + first 8 + [SEP]
    assert len(e.clips) == 4 and np.all(np.diff(e.clips) == 1)              # a contiguous window of 4 of 8


def test_determinism_across_instances_pickling_and_workers(tiny, manifests, tokenizer):
    a = build(tiny, manifests, tokenizer, seed=3, epoch_size=24)
    b = build(tiny, manifests, tokenizer, seed=3, epoch_size=24)
    keys = [(5, 17), (0, 0), (2, 23), (0, 9)]  # any order: each key is computed on its own
    for key in keys:
        x, y = a[key], b[key]
        assert x.video_id == y.video_id and x.span == y.span
        for field in ("text_ids", "text_labels", "visual_ids", "visual_labels", "visual_masked", "clips"):
            assert np.array_equal(getattr(x, field), getattr(y, field)), field
    c = build(tiny, manifests, tokenizer, seed=4, epoch_size=24)
    assert [a[(0, p)].video_id for p in range(24)] != [c[(0, p)].video_id for p in range(24)]

    copy = pickle.loads(pickle.dumps(a))  # as a spawned worker gets it: no open stores, no vocabulary
    assert copy._stores == {} and copy._vocab is None
    assert np.array_equal(copy[(5, 17)].text_ids, a[(5, 17)].text_ids)
    assert copy.vocab.fingerprint() == a.vocab.fingerprint()  # reloaded on demand

    keys = [(1, p) for p in range(24)]
    loader = torch.utils.data.DataLoader(a, batch_size=8, sampler=keys, collate_fn=a.collate, num_workers=2)
    for i, batch in enumerate(loader):
        direct = a.collate([a[k] for k in keys[8 * i : 8 * i + 8]])
        for name in ("text_ids", "text_labels", "visual_ids", "visual_labels", "visual_masked", "group_ids"):
            assert torch.equal(getattr(batch, name), getattr(direct, name)), name


def test_mixing_follows_the_weights(tiny, tmp_path, jsonl, tokenizer):
    a = jsonl(tmp_path / "a.jsonl", [{"video_id": "v_long", "captions": [f"caption {i}" for i in range(7)]}])
    b = jsonl(tmp_path / "b.jsonl", [{"image_id": "img_a", "captions": ["x", "y", "z"]}])
    cfg = DataConfig(store=tiny["store"], sources=[SourceConfig("caption", a, weight=3.0),
                                                   SourceConfig("image", b, weight=1.0)], epoch_size=400)
    ds = build_pretrain_dataset(cfg, "cbt", tokenizer)
    source_of, _ = ds.plan(0)
    assert np.bincount(source_of).tolist() == [300, 100]       # exactly 3:1 each epoch
    assert 60 <= (source_of[:100] == 0).sum() <= 90             # and shuffled, not in blocks
    assert [ds[(0, p)].source for p in range(0, 400, 37)] == source_of[::37].tolist()

    # items are used evenly: every item once before any item twice, across epochs
    cfg.epoch_size = 20
    cfg.sources[0].weight = 1.0
    ds = build_pretrain_dataset(cfg, "cbt", tokenizer)
    used = {0: [], 1: []}
    for epoch in range(7):
        source_of, item_of = ds.plan(epoch)
        for s, i in zip(source_of, item_of):
            used[int(s)].append(int(i))
    assert np.bincount(used[0]).tolist() == [10] * 7           # 70 draws of 7 captions
    assert sorted(np.bincount(used[1]).tolist()) == [23, 23, 24]
    for s, size in ((0, 7), (1, 3)):
        for cycle in range(len(used[s]) // size):
            assert sorted(used[s][cycle * size : (cycle + 1) * size]) == list(range(size))


def test_group_ids_one_per_video(tiny, manifests, tokenizer, tmp_path, jsonl):
    ds = build(tiny, manifests, tokenizer, epoch_size=60)
    pairs = {(e.video_id, e.group_id, e.is_image) for e in (ds[(0, p)] for p in range(60))}
    by_video = {v: g for v, g, _ in pairs}
    assert len(by_video) == len(pairs) == len(set(by_video.values()))  # a bijection videos <-> group ids
    assert {v for v, _, img in pairs if img} == {"img_a", "img_b"}
    asr = next(e for e in (ds[(0, p)] for p in range(60)) if e.source == 1)
    assert asr.group_id == by_video["v_long"]                          # the same video in another source
    assert group_id("v_long") == group_id("v_long") and 0 <= group_id("v_long") < 2**63


def test_collate_pads_and_masks(tiny, manifests, tokenizer):
    ds = build(tiny, manifests, tokenizer, epoch_size=30)
    examples = [ds[(0, p)] for p in range(6)]
    batch = ds.collate(examples)
    assert isinstance(batch, Batch) and len(batch) == 6 and batch.visual_feats is None
    tt = max(len(e.text_ids) for e in examples)
    tv = max(len(e.visual_ids) for e in examples)
    assert batch.text_ids.shape == (6, tt) and batch.visual_ids.shape == (6, tv)
    vocab = ds.vocab
    for i, e in enumerate(examples):
        t, v = len(e.text_ids), len(e.visual_ids)
        assert batch.text_ids[i, :t].tolist() == e.text_ids.tolist()
        assert (batch.text_ids[i, t:] == tokenizer.pad_token_id).all()
        assert batch.text_attention[i].tolist() == [True] * t + [False] * (tt - t)
        assert (batch.text_labels[i, t:] == IGNORE).all()
        assert batch.visual_ids[i, :v].tolist() == e.visual_ids.tolist()
        assert (batch.visual_ids[i, v:] == vocab.pad_id).all() and (batch.visual_labels[i, v:] == IGNORE).all()
        assert batch.visual_attention[i].tolist() == [True] * v + [False] * (tv - v)
        assert batch.visual_masked[i].tolist() == e.visual_masked.tolist() + [False] * (tv - v)
        assert batch.is_image[i] == e.is_image and batch.group_ids[i] == e.group_id
    masked = batch.visual_masked
    assert ((batch.visual_labels != IGNORE) == masked).all()
    cbt = build(tiny, manifests, tokenizer, mode="cbt", epoch_size=30)
    batch = cbt.collate([cbt[(0, p)] for p in range(6)])
    assert batch.visual_ids is None and batch.visual_feats.dtype == torch.float32
    assert (batch.visual_feats[~batch.visual_attention] == 0).all()


def test_nonfinite_clips_are_dropped(tmp_path, store_maker, jsonl, tiny, tokenizer):
    from videolm.tokenize.vocab import encode_store

    store = store_maker(tmp_path / "store", {"v": [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)], "img": None})
    for video_id, clip in (("v", 1), ("img", 0)):
        row = FeatureStore(store).entry(video_id)
        data = np.load(os.path.join(store, row["shard"]))
        data[row["offset"] + clip, 3] = np.nan
        np.save(os.path.join(store, row["shard"]), data)
    encode_store(store, tiny["vocab"])
    path = jsonl(tmp_path / "c.jsonl", [{"video_id": "v", "caption": "three"}, {"video_id": "img", "caption": "x"}])
    for mode in ("videobert", "cbt"):
        cfg = DataConfig(store=store, vocab=tiny["vocab"], sources=[SourceConfig("caption", path)])
        ds = build_pretrain_dataset(cfg, mode, tokenizer)
        got = {ds[(0, p)].video_id: ds[(0, p)] for p in range(2)}
        assert got["v"].clips.tolist() == [0, 2] and len(got["img"].clips) == 0
        batch = ds.collate([got["img"]])
        assert batch.visual_attention.shape == (1, 1) and not batch.visual_attention.any()


def test_memory_does_not_grow_with_reads(tiny, manifests, tokenizer):
    ds = build(tiny, manifests, tokenizer, mode="cbt", epoch_size=60)
    for p in range(60):
        ds[(0, p)]  # open the shards, cache the plan
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for epoch in (0, 0, 0):
        for p in range(60):
            ds[(epoch, p)]
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 50_000, grown

    held = []  # every array the dataset holds, however deep: only memory maps may be large

    def walk(obj, seen):
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            held.append(obj)
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v, seen)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v, seen)
        elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("videolm"):
            walk(vars(obj), seen)
        elif hasattr(obj, "__slots__"):
            for name in obj.__slots__:
                walk(getattr(obj, name, None), seen)

    walk(ds, set())
    assert any(isinstance(a, np.memmap) for a in held)
    assert all(isinstance(a, np.memmap) or a.size <= ds.epoch_size for a in held)


def test_collator_refuses_a_visual_word_outside_the_vocabulary():
    """The id range check runs here, on the CPU batch (the model checks only
    CPU tensors: on CUDA it would sync the device every step)."""
    from videolm.data.collate import Collator, Example

    def example(words):
        words = np.asarray(words, dtype=np.int64)
        return Example(np.array([1, 5, 2]), np.full(3, -100), np.zeros(len(words), bool), 0, False,
                       visual_ids=words, visual_labels=np.full(len(words), -100), video_id="v1")

    collate = Collator("videobert", text_pad_id=0, visual_pad_id=9, visual_vocab_size=11)
    assert collate([example([0, 10]), example([])]).visual_ids.tolist() == [[0, 10], [9, 9]]
    with pytest.raises(DataError, match="v1: visual-word id 11 is outside the visual vocabulary") as err:
        collate([example([3, 11])])
    assert "\n" not in str(err.value)


def test_clip_subsample_in_the_dataset(tiny, tmp_path, jsonl, tokenizer):
    path = jsonl(tmp_path / "c.jsonl", [{"video_id": "v_long", "caption": "a long video"}])
    cfg = DataConfig(store=tiny["store"], sources=[SourceConfig("caption", path)], max_visual_len=8,
                     clip_subsample=3, epoch_size=40)
    dataset = build_pretrain_dataset(cfg, "cbt", tokenizer)
    strides = set()
    for position in range(40):
        clips = dataset[(0, position)].clips
        assert len(set(np.diff(clips).tolist())) <= 1
        strides.add(int(clips[1] - clips[0]) if len(clips) > 1 else 0)
    assert {1, 2, 3} <= strides  # 8 clips (tiny store): stride 1 keeps all, 3 keeps 2 or 3
    with pytest.raises(DataError, match="data.clip_subsample must be at least 1"):
        DataConfig(store="s", sources=[SourceConfig("caption", path)], clip_subsample=0).validate()


def test_a_batch_pins_every_tensor_when_the_loader_pins_memory(monkeypatch):
    """torch's pin_memory pins tensors, mappings, sequences and objects with a
    pin_memory method; a dataclass without one came back unpinned."""
    import torch
    from torch.utils.data._utils.pin_memory import pin_memory

    from videolm.data.batch import Batch

    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a: pinned.append(self.shape) or self.clone())
    b = Batch(text_ids=torch.zeros(2, 3, dtype=torch.long), text_attention=torch.ones(2, 3, dtype=torch.bool),
              text_labels=torch.zeros(2, 3, dtype=torch.long), visual_attention=torch.ones(2, 4, dtype=torch.bool),
              visual_masked=torch.zeros(2, 4, dtype=torch.bool), group_ids=torch.arange(2),
              visual_feats=torch.zeros(2, 4, 5))
    out = pin_memory(b)
    assert isinstance(out, Batch) and len(pinned) == 7 and out.visual_ids is None
