"""AdamW groups and the warmup + cosine schedule, checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from videolm.train.optim import build_optimizer, build_scheduler, param_groups, warmup_cosine


def test_no_decay_on_biases_and_layernorm():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.Embedding(5, 3))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}


@pytest.mark.parametrize("step, expected", [
    (0, 0.25), (3, 1.0),                     # linear warmup over 4 steps: (s + 1) / 4
    (4, 1.0),                                # cosine starts at the peak
    (9, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 10))),
    (14, 0.1), (20, 0.1),                    # ends (and stays) at min_ratio
])
def test_warmup_cosine_by_hand(step, expected):
    assert warmup_cosine(step, warmup=4, total=14, min_ratio=0.1) == pytest.approx(expected)


def test_scheduler_drives_the_optimizer_lr():
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, lr=1.0, weight_decay=0.0, betas=[0.9, 0.999], eps=1e-8)
    sched = build_scheduler(opt, warmup=2, total=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 4)))


def test_a_metrics_row_cut_short_at_the_end_does_not_block_a_resume(tmp_path, caplog):
    import pytest

    from videolm.train.metrics import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 10, "loss": 7.1}\n{"step": 20, "loss": 6.9}\n{"step": 30, "lo')
    log = MetricsLog(str(path))
    log.truncate_after(20)
    assert log.rows() == [{"step": 10, "loss": 7.1}, {"step": 20, "loss": 6.9}]
    assert "cut short" in caplog.text
    path.write_text('{"step": 10}\n{"ste\n{"step": 30}\n')   # not at the end: not a kill, an error naming the line
    with pytest.raises(ValueError, match="metrics.jsonl:2: not a metrics row"):
        log.rows()
