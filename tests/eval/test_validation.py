"""Validation during pre-training on the tiny configs: rows in metrics.jsonl,
best/ kept by the chosen metric, the figures equal a separate evaluation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from videolm.eval.evaluate import EvalConfig, evaluate
from videolm.train.config import ConfigError, load_config


def rows(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_validation_rows_best_and_plot(trainer, eval_corpus, tmp_path):
    run = str(tmp_path / "run")
    annotations = f"[{eval_corpus['captions']},{eval_corpus['images']}]"
    trainer(eval_corpus, run, "cbt", steps=20, **{"eval.protocol": "captions", "eval.annotations": annotations,
                                                  "eval.every": 10, "eval.metric": "t2v/R@1"})
    val = [r for r in rows(run) if "val/t2v/R@1" in r]
    assert [r["step"] for r in val] == [10, 20]
    assert {"val/v2t/R@5", "val/t2i/MdR", "val/i2t/MnR", "val/mean/R@1"} <= set(val[0])
    best = json.loads(Path(os.path.join(run, "best", "validation.json")).read_text())
    assert best["metric"] == "t2v/R@1" and best["value"] == max(r["val/t2v/R@1"] for r in val)
    assert best["step"] == next(r["step"] for r in val if r["val/t2v/R@1"] == best["value"])
    assert os.path.isfile(os.path.join(run, "best", "model.safetensors"))
    # the last validation is the final model's: a separate evaluation gives the same figures
    result = evaluate(os.path.join(run, "model"), eval_corpus["store"],
                      EvalConfig(annotations=[eval_corpus["captions"], eval_corpus["images"]], split="val"))
    for name, d in result.directions.items():
        assert d.metrics["dual"].recall[1] == pytest.approx(val[-1][f"val/{name}/R@1"], abs=1e-3)
    assert os.path.getsize(os.path.join(run, "loss.png")) > 1000


def test_validation_config_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="eval.split=test"):
        load_config(None, ["eval.protocol=captions", "eval.every=5", "eval.split=test"])
    with pytest.raises(ConfigError, match="eval.metric must look like"):
        load_config(None, ["eval.protocol=captions", "eval.every=5", "eval.metric=R1"])
    with pytest.raises(ConfigError, match="eval.every is set but eval.protocol is empty"):
        load_config(None, ["eval.every=5"])
    # figures validation would never produce: refused at load, not at the first validation hours in
    for metric, message in (("mean/MdR", "mean is of R@K only"), ("t2v/R@3", r"R@3 is not among eval.ks \[1, 5, 10\]"),
                            ("x2v/R@1", "eval.metric must look like")):
        with pytest.raises(ConfigError, match=message):
            load_config(None, ["eval.protocol=captions", "eval.every=5", f"eval.metric={metric}"])
    from videolm.eval.errors import EvalError
    from videolm.eval.validation_config import ValidationConfig
    with pytest.raises(EvalError, match="the protocol's items give t2v, v2t, not i2t"):
        ValidationConfig(protocol="captions", every=5, metric="i2t/R@1").check_directions({"video"})


@pytest.mark.parametrize("name", ["videobert_tiny", "cbt_tiny"])
def test_shipped_tiny_configs_validate(name, sample_media_store, tmp_path, monkeypatch):
    """configs/*_tiny.yaml with an eval: section on the sample media (which is
    also their training data: this checks the wiring, not generalisation)."""
    from videolm.cli import main as cli

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    monkeypatch.chdir(repo)
    out = tmp_path / name
    assert cli(["pretrain", f"configs/{name}.yaml", f"data.store={sample_media_store}/store",
                f"data.vocab={sample_media_store}/vocab", f"train.out={out}", "train.steps=6",
                "eval.protocol=captions", "eval.annotations=[configs/data/sample_captions.jsonl]",
                "eval.every=3", "eval.rerank_k=2", "-q"]) == 0
    val = [r for r in rows(str(out)) if "val/t2v/R@1" in r]
    assert [r["step"] for r in val] == [3, 6]
    assert json.loads((out / "best" / "validation.json").read_text())["metric"] == "mean/R@1"
