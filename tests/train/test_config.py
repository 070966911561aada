"""YAML + key=value configs: defaults, types, unknown keys, resume checks."""

from __future__ import annotations

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
    b = load_config(None, ["train.steps=20", "train.lr=0.5", "model.hidden_size=64"]).to_dict()
    assert config_differences(a, b) == ["model.hidden_size", "train.lr"]
