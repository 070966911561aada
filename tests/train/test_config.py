"""YAML + key=value configs: defaults, types, unknown keys, resume checks."""

from __future__ import annotations

import re

import pytest

from videolm.train.config import ConfigError, config_differences, load_config

ROOT = __file__.rsplit("/tests/", 1)[0]


def write(tmp_path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name", ["videobert_tiny", "cbt_tiny", "videobert_base", "cbt_base"])
def test_shipped_configs_load(name):
    cfg = load_config(f"{ROOT}/configs/{name}.yaml")
    assert cfg.model.mode == name.split("_")[0]
    assert cfg.data.sources and cfg.train.steps > 0
    if name.endswith("base"):
        assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_heads) == (768, 12, 12)


def test_file_then_overrides_with_types(tmp_path):
    path = write(tmp_path, "train:\n  lr: 1e-3\n  steps: 5\ndata:\n  sources:\n"
                           "    - {kind: caption, manifest: a.jsonl}\n    - {kind: image, manifest: b.jsonl}\n")
    cfg = load_config(path, ["train.steps=7", "train.amp=bf16", "data.sources.1.weight=2.5", "model.mode=cbt"])
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)  # YAML 1.1 reads "1e-3" as a string
    assert cfg.train.steps == 7 and cfg.train.amp == "bf16"
    assert [s.weight for s in cfg.data.sources] == [1.0, 2.5]
    assert cfg.data.sources[1].kind == "image" and cfg.model.mode == "cbt"
    assert cfg.train.batch_size == 32  # untouched default


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'train\.lrr' \(did you mean 'train\.lr'\?\)"):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown key 'modle'"):
        load_config(write(tmp_path, "modle: {}\n"))
    with pytest.raises(ConfigError, match="unknown key 'data.sources.0.wieght'"):
        load_config(write(tmp_path, "data:\n  sources:\n    - {kind: asr, manifest: a, wieght: 1}\n"))


def test_unknown_or_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'train.stpes'"):
        load_config(None, ["train.stpes=3"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(None, ["train.steps"])
    with pytest.raises(ConfigError, match="train.steps must be an integer"):
        load_config(None, ["train.steps=many"])
    with pytest.raises(ConfigError, match="train.amp must be none, bf16 or fp16"):
        load_config(None, ["train.amp=fp8"])


def test_bad_yaml_names_line_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.yaml:3: not valid YAML"):
        load_config(write(tmp_path, "train:\n  lr: 1\n   steps: [\n"))
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(str(tmp_path / "none.yaml"))


def test_config_differences_ignore_run_length_keys():
    a = load_config(None, ["train.steps=10"]).to_dict()
    b = load_config(None, ["train.steps=20", "train.lr=0.5", "model.hidden_size=48"]).to_dict()
    assert config_differences(a, b) == ["model.hidden_size", "train.lr"]


def test_a_bad_value_is_reported_where_it_was_written(tmp_path):
    path = write(tmp_path, "train:\n  steps: -3\n  lr: 1e-3\neval:\n  ties: worst\n")
    # the file's own mistake names the file, even with unrelated overrides on top
    with pytest.raises(ConfigError, match=r"^[^ ]*c\.yaml: train\.steps must be at least 1, not -3$"):
        load_config(path, ["train.lr=0.1"])
    # a value set on the command line names the override, not the file it overrides
    with pytest.raises(ConfigError, match=r"^override 'train\.steps=0': train\.steps must be at least 1, not 0$"):
        load_config(path, ["train.steps=0"])
    with pytest.raises(ConfigError, match=r"^override 'train\.lr=abc': train\.lr must be a number, not 'abc'$"):
        load_config(path, ["train.steps=5", "train.lr=abc"])
    with pytest.raises(ConfigError, match=r"^override 'data\.sources=\[1\]': data\.sources\.0 must be a mapping"):
        load_config(None, ["data.sources=[1]"])
    with pytest.raises(ConfigError, match=r"c\.yaml: eval\.ties must be one of pessimistic, optimistic, mean, "
                                          r"not 'worst'$"):
        load_config(path, ["train.steps=5"])


@pytest.mark.parametrize("override, message", [
    ("eval.every=-1", "eval.every must be >= 0, not -1"),
    ("eval.v2t_rule=max", "eval.v2t_rule must be one of best-caption, group-max, not 'max'"),
    ("eval.ks=[0,5]", r"eval.ks must be numbers >= 1, not \[0, 5\]"),
    ("eval.rerank_k=-2", "eval.rerank_k must be >= 0, not -2"),
    ("eval.batch_size=0", "eval.batch_size must be >= 1, not 0"),
])
def test_validation_settings_are_checked_before_training(override, message):
    with pytest.raises(ConfigError, match=f"^override '{re.escape(override)}': {message}$"):
        load_config(None, [override])


@pytest.mark.parametrize("override, message", [
    ("data.sources.0.kind=captions", "data.sources.0.kind must be one of caption, asr, image, not 'captions'"),
    ("data.text_mask_prob=1.5", r"data.text_mask_prob must be in \[0, 1\], not 1.5"),
    ("model.align_loss=hinge", "model.align_loss must be one of bce, nce, listwise, not 'hinge'"),
    ("model.num_layers=0", "model.num_layers must be at least 1, not 0"),
    (r"data.sources=[]", r"data.sources is empty; list at least one manifest \(see docs/formats.md\)"),
    # a message naming two keys names the one the command line set, not the file's
    ("model.num_heads=5", "model.hidden_size=32 is not divisible by model.num_heads=5"),
])
def test_data_and_model_mistakes_are_reported_before_training(override, message):
    """Before the tokenizer, the store and torch load: the sizes the data gives
    (feature_dim, visual_vocab_size) are not needed to see these."""
    with pytest.raises(ConfigError, match=f"^override '{re.escape(override)}': {message}$"):
        load_config(f"{ROOT}/configs/cbt_tiny.yaml", [override])


def test_a_model_mistake_in_the_file_names_the_file(tmp_path):
    path = write(tmp_path, "model:\n  mode: cbt\n  hidden_size: 30\n  num_heads: 4\n")
    with pytest.raises(ConfigError, match=r"^[^ ]*c\.yaml: model\.hidden_size=30 is not divisible by "
                                          r"model\.num_heads=4$"):
        load_config(path, ["train.steps=5"])


def test_every_shipped_config_passes_the_early_checks():
    import glob

    paths = sorted(glob.glob(f"{ROOT}/configs/*.yaml"))
    assert len(paths) >= 10
    for path in paths:
        load_config(path)   # raises on a key the early checks reject


@pytest.mark.parametrize("override, message", [
    ("train.lr=-1", "train.lr must be >= 0, not -1.0"),   # 0 is allowed: a run that keeps its init
    ("train.eps=0", "train.eps must be a finite number > 0, not 0.0"),
    ("train.betas=[0.9,2]", r"train.betas must be two numbers in \[0, 1\), not \[0.9, 2.0\]"),
    ("train.num_workers=-1", "train.num_workers must be >= 0, not -1"),
    ("train.warmup_steps=-3", "train.warmup_steps must be >= 0, not -3"),
    ("train.clip_grad_norm=-1", r"train.clip_grad_norm must be >= 0 \(0 switches clipping off\), not -1.0"),
    ("train.min_lr_ratio=2", r"train.min_lr_ratio must be in \[0, 1\], not 2.0"),
])
def test_train_values_are_checked_before_training(override, message):
    """Each of these got past the config and failed in AdamW or the DataLoader
    after the data had loaded (a traceback, exit 1), or trained wrongly."""
    with pytest.raises(ConfigError, match=f"^override '{re.escape(override)}': {message}$"):
        load_config(None, [override])


def test_a_source_without_its_kind_or_a_file_that_is_not_a_mapping(tmp_path):
    path = write(tmp_path, "data:\n  sources:\n    - {manifest: x.jsonl}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: data.sources.0.kind is required$"):
        load_config(path)
    path = write(tmp_path, "hello\n")
    for overrides in ([], ["train.out=x"]):   # with an override it was an AttributeError
        with pytest.raises(ConfigError, match="c.yaml: the file must be a mapping of sections"):
            load_config(path, overrides)
