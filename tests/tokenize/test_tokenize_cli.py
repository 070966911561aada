"""`videolm tokenize` end to end on the store built from the sample clips."""

import json
import os
import shutil

import numpy as np
from PIL import Image

from videolm.cli import main
from videolm.features.store import FeatureStore, Finished, StoreWriter


def run_cli(*args):
    return main([str(a) for a in args])


def test_fit_info_encode_gallery(sample_store, tmp_path, capsys):
    store = tmp_path / "store"
    shutil.copytree(sample_store, store)
    vocab = tmp_path / "vocab"
    assert run_cli("tokenize", "fit", store, "-o", vocab, "--k", 3, "--depth", 2, "--seed", 1, "-q") == 0
    out = capsys.readouterr().out
    assert "9 words (k=3, depth=2) from 52 of 52 clips" in out
    meta = json.loads((vocab / "meta.json").read_text())
    assert meta["config"]["seed"] == 1 and meta["source"]["backbone"] == "mobilenet_v2"

    assert run_cli("tokenize", "info", vocab) == 0
    info = capsys.readouterr().out
    assert "9 = 3^2; ids 0..8, then [PAD]=9, [MASK]=10 (vocab size 11)" in info
    assert "1280-dim mobilenet_v2" in info and "sample 52" in info
    lines = info.splitlines()
    level1 = lines[[i for i, l in enumerate(lines) if l.startswith("level")][0] + 1].split()
    assert level1[:3] == ["1", "3", "3"]  # 3 clusters, all non-empty
    sizes = [int(v) for v in level1[3].split("/")]
    assert sizes[0] <= sizes[1] <= sizes[2] and sizes[2] <= 52

    assert run_cli("tokenize", "encode", store, "--vocab", vocab, "-q") == 0
    assert "52 clips in 2 shard(s), 0 shard(s) already done" in capsys.readouterr().out
    # the index as docs/tokenizer.md describes it, read with plain numpy
    index = np.load(store / "tokens" / "vocab" / "index.npy")
    names = [n.decode() for n in np.load(store / "tokens" / "vocab" / "index_shards.npy")]
    assert [v.decode() for v in index["video_id"]] == FeatureStore(str(store)).ids()
    assert sorted(index["video_id"]) == list(index["video_id"][index["by_id"]])
    ids = np.concatenate([np.load(store / "tokens" / "vocab" / names[r["shard"]])[r["offset"]: r["offset"] + r["num_clips"]]
                          for r in index])
    assert len(ids) == 52 and ids.min() >= 0 and ids.max() < 9
    assert run_cli("tokenize", "encode", store, "--vocab", vocab, "-q") == 0
    assert "0 clips in 0 shard(s), 2 shard(s) already done" in capsys.readouterr().out

    png = tmp_path / "words.png"
    assert run_cli("tokenize", "gallery", store, "--vocab", vocab, "-o", png, "--num-words", 3, "--per-word", 4,
                   "--size", 48, "-q") == 0
    assert "-> " + str(png) in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as img:
        img.load()
        assert 300 <= img.width <= 1200 and 200 <= img.height <= 1200
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 20  # frames were drawn, not an empty canvas
    assert run_cli("tokenize", "gallery", store, "--vocab", vocab, "-o", tmp_path / "w.png", "--words", "0,8",
                   "-q") == 0
    assert "words 0 (" in capsys.readouterr().out


def test_user_mistakes_are_one_line_errors(sample_store, tmp_path, capsys):
    assert run_cli("tokenize", "encode", sample_store, "--vocab", tmp_path / "missing") == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'missing'}: no such vocabulary directory"
    assert run_cli("tokenize", "fit", sample_store, "-o", tmp_path / "v", "--k", 100, "--depth", 1, "-q") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "52 usable clip(s), need at least k=100" in err and "\n" not in err
    assert not os.path.exists(tmp_path / "v")
    assert run_cli("tokenize", "fit", sample_store, "-o", tmp_path / "v", "--k", 1, "-q") == 2
    assert "k must be >= 2" in capsys.readouterr().err
    assert run_cli("tokenize", "fit", sample_store, "-o", tmp_path / "v", "--k", 3, "--depth", 1, "-q") == 0
    assert run_cli("tokenize", "fit", sample_store, "-o", tmp_path / "v", "--k", 3, "--depth", 1, "-q") == 2
    assert "already exists" in capsys.readouterr().err
    assert run_cli("tokenize", "gallery", sample_store, "--vocab", tmp_path / "v", "-o", tmp_path / "g.png",
                   "--words", "3") == 2
    assert "word 3 is out of range" in capsys.readouterr().err


def test_help_lists_every_setting_with_its_default(capsys):
    import pytest

    from videolm.tokenize.kmeans import KMeansConfig

    with pytest.raises(SystemExit) as exit_:
        run_cli("tokenize", "fit", "--help")
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name, value in vars(KMeansConfig()).items():
        flag = "--" + name.replace("_", "-")
        assert flag in text, flag
        if not isinstance(value, bool):
            assert f"(default: {value})" in text, name
    with pytest.raises(SystemExit):
        run_cli("--help")
    assert "tokenize" in capsys.readouterr().out


def test_nan_clips_and_unreadable_sources_exit_1(nan_store, sample_store, tmp_path, capsys):
    vocab = tmp_path / "vocab"
    assert run_cli("tokenize", "fit", nan_store, "-o", vocab, "--k", 3, "--depth", 2, "-q") == 0
    assert "skipped 2 sampled clips with NaN/Inf features in 2 video(s)" in capsys.readouterr().out
    assert run_cli("tokenize", "fit", nan_store, "-o", tmp_path / "v2", "--k", 3, "--strict", "-q") == 2
    assert "video 'bikes' has NaN/Inf features in clip 2" in capsys.readouterr().err
    assert run_cli("tokenize", "encode", nan_store, "--vocab", vocab, "-q") == 1
    assert "2 clips in 2 video(s) have NaN/Inf features: their token is -1" in capsys.readouterr().out

    # a source that moved away: its tiles are grey, the rest is drawn
    src = FeatureStore(sample_store)  # the same store, written again with the sources of all but 'bikes' gone
    for name, gone in (("moved", str(tmp_path / "gone")), ("relative", "gone")):
        store = tmp_path / name
        writer = StoreWriter(str(store), {k: v for k, v in src.meta.items() if k not in ("format", "format_version")})
        writer.plan(src.ids())
        for video_id in src.ids():
            e = src.entry(video_id)
            row = {k: v for k, v in e.items()
                   if k not in ("video_id", "path", "shard", "offset", "num_clips", "status")}
            path = e["path"] if video_id == "bikes" else os.path.join(gone, os.path.basename(e["path"]))
            writer.add(Finished(video_id, path, np.asarray(src.features(video_id)), row))
        writer.finalize()
        png = tmp_path / f"{name}.png"
        assert run_cli("tokenize", "gallery", store, "--vocab", vocab, "-o", png, "--size", 32, "-q") == 1
        out = capsys.readouterr().out
        assert "source(s) could not be read (grey tiles)" in out and "gone" in out
        # the line says how to point at the sources; a relative one is relative to extraction's directory
        assert "--media-root DIR or OLD=NEW says where they are now" in out
        assert ("relative paths: relative to the directory extraction ran in" in out) == (name == "relative")
        with Image.open(png) as img:
            assert img.format == "PNG" and img.width > 100

    # --media-root: the sources, found where they are now, draw with no grey tile
    now = tmp_path / "now"
    now.mkdir()
    for video_id in src.ids():
        os.symlink(os.path.abspath(src.entry(video_id)["path"]), now / os.path.basename(src.entry(video_id)["path"]))
    (tmp_path / "base").mkdir()
    os.symlink(now, tmp_path / "base" / "gone")
    for name, root in (("moved", f"{tmp_path / 'gone'}={now}"), ("relative", str(tmp_path / "base"))):
        png = tmp_path / f"{name}-found.png"
        assert run_cli("tokenize", "gallery", tmp_path / name, "--vocab", vocab, "-o", png, "--size", 32, "-q",
                       "--media-root", root) == 0, name
        assert "could not be read" not in capsys.readouterr().out
    # a root that names no directory: one line, before any work
    assert run_cli("tokenize", "gallery", tmp_path / "moved", "--vocab", vocab, "-o", tmp_path / "x.png",
                   "--media-root", str(tmp_path / "nowhere")) == 2
    assert capsys.readouterr().err.strip() == (f"error: --media-root {tmp_path / 'nowhere'}: no such directory "
                                               "(give DIR, or OLD=NEW to replace the stored paths' prefix OLD)")


def test_encode_never_reuses_tokens_of_another_store(sample_store, tmp_path, capsys):
    """Tokens of store A in -o, then store B encoded into the same -o: B's
    shards are encoded, not skipped for having as many rows."""
    import shutil

    import numpy as np

    from videolm.features.store import FeatureStore
    from videolm.tokenize.vocab import TokenStore, Vocabulary

    assert run_cli("tokenize", "fit", sample_store, "-o", tmp_path / "v", "--k", 3, "--depth", 1, "-q") == 0
    assert run_cli("tokenize", "encode", sample_store, "--vocab", tmp_path / "v", "-o", tmp_path / "t", "-q") == 0
    other = tmp_path / "b"
    shutil.copytree(sample_store, other)
    for shard in (other / "shards").glob("*.npy"):   # the same shapes, other features
        a = np.load(shard)
        np.save(shard, (a[::-1] * 3).astype(a.dtype))
    capsys.readouterr()
    assert run_cli("tokenize", "encode", other, "--vocab", tmp_path / "v", "-o", tmp_path / "t", "-q") == 0
    tokens, vocab, store = TokenStore(str(tmp_path / "t")), Vocabulary.from_pretrained(str(tmp_path / "v")), \
        FeatureStore(str(other))
    for video_id in store.ids():
        assert np.array_equal(np.asarray(tokens.tokens(video_id)), vocab.encode(np.asarray(store.features(video_id))).ids)
    assert run_cli("tokenize", "encode", other, "--vocab", tmp_path / "v", "-o", tmp_path / "t", "--batch-size", "-5",
                   "-q") == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err


def test_bad_outputs_and_vocabulary_files_are_one_line(sample_store, tmp_path, capsys):
    import json

    assert run_cli("tokenize", "fit", sample_store, "-o", tmp_path / "no" / "such" / "v", "--k", 3, "--depth", 1,
                   "-q") == 2
    assert "is not a writable directory" in capsys.readouterr().err   # before the fit, not after it
    assert run_cli("tokenize", "fit", sample_store, "-o", tmp_path / "big", "--k", 64, "--depth", 5, "-q") == 2
    assert "GiB of centroid tables" in capsys.readouterr().err
    assert run_cli("tokenize", "fit", sample_store, "-o", tmp_path / "v", "--k", 3, "--depth", 1, "-q") == 0
    assert run_cli("tokenize", "gallery", sample_store, "--vocab", tmp_path / "v", "-o",
                   tmp_path / "nowhere" / "g.png") == 2
    assert "no such directory" in capsys.readouterr().err
    meta_path = tmp_path / "v" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(dict(meta, config=dict(meta["config"], k="x"))))
    assert run_cli("tokenize", "info", tmp_path / "v") == 2
    err = capsys.readouterr().err
    assert f"{meta_path}: config:" in err and "centroids.safetensors" not in err
    meta_path.write_text(json.dumps(meta))
    assert run_cli("tokenize", "encode", sample_store, "--vocab", tmp_path / "v", "-o", tmp_path / "t", "-q") == 0
    (tmp_path / "t" / "meta.json").write_text("{oops")
    assert run_cli("tokenize", "encode", sample_store, "--vocab", tmp_path / "v", "-o", tmp_path / "t", "-q") == 2
    assert "meta.json" in capsys.readouterr().err


def test_fit_on_listed_ids_samples_only_their_clips(sample_store, tmp_path, capsys):
    """The training split's vocabulary: held-out clips never shape a word."""
    import json

    from videolm.features.store import FeatureStore

    store = FeatureStore(sample_store)
    videos = [v for v in store.ids() if store.entry(v)["num_clips"] >= 2][:2]
    ids = tmp_path / "train.txt"
    ids.write_text("# the training split\n" + "".join(f"{v}\n" for v in videos))
    assert run_cli("tokenize", "fit", sample_store, "-o", tmp_path / "v", "--k", 2, "--depth", 1, "--ids", ids,
                   "-q") == 0
    meta = json.loads((tmp_path / "v" / "meta.json").read_text())
    clips = sum(store.entry(v)["num_clips"] for v in videos)
    assert meta["sample"]["points"] == clips and meta["source"]["fit_on_ids"] == 2
    ids.write_text("nope\n")
    assert run_cli("tokenize", "fit", sample_store, "-o", tmp_path / "w", "--k", 2, "--depth", 1, "--ids", ids,
                   "-q") == 2
    assert "1 of the 1 ids to fit on are not in the store (e.g. 'nope')" in capsys.readouterr().err
