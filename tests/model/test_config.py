from __future__ import annotations

import pytest

from videolm.model.config import ModelConfig
from videolm.model.errors import ModelError

from .conftest import one_line, tiny_config


def test_dict_round_trip_and_unknown_key():
    cfg = tiny_config("cbt", align_random_negatives=3, init_text_from="pkg:x/y")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ModelError, match=r"unknown model config key 'hiden_size' \(did you mean 'hidden_size'\?\)") as err:
        ModelConfig.from_dict({**cfg.to_dict(), "hiden_size": 8}, source="x.json")
    assert one_line(err) and str(err.value).startswith("x.json: ")


@pytest.mark.parametrize("overrides, message", [
    ({"mode": "videobert", "visual_vocab_size": 0}, "model.mode=videobert needs model.visual_vocab_size"),
    ({"mode": "cbt", "feature_dim": 0}, "model.mode=cbt needs model.feature_dim"),
    ({"hidden_size": 30, "num_heads": 4}, "model.hidden_size=30 is not divisible by model.num_heads=4"),
    ({"mode": "bert"}, "model.mode must be videobert or cbt"),
    ({"mlm_weight": 0, "visual_weight": 0, "align_weight": 0, "contrastive_weight": 0}, "all objective weights are 0"),
    ({"visual_weight": -1.0}, "model.visual_weight must be >= 0"),
    ({"contrastive_temperature": 0.001}, "model.contrastive_temperature must be >= 0.01"),
    ({"mode": "videobert", "visual_mask_id": 99}, "model.visual_mask_id=99 is outside the visual vocabulary"),
    ({"hidden_act": "swish"}, "model.hidden_act must be one of"),
])
def test_validate_names_the_key(overrides, message):
    cfg = tiny_config(overrides.get("mode", "cbt"))
    cfg.__dict__.update(overrides)
    with pytest.raises(ModelError, match=message) as err:
        cfg.validate()
    assert one_line(err)
