"""Checkpoints: atomic, complete, loadable without pickled code."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from videolm.train.checkpoint import (CheckpointError, TrainState, latest_checkpoint, load_checkpoint,
                                      restore_python_numpy_rng, restore_torch_rng, save_checkpoint,
                                      torch_rng_state)
from videolm.train.optim import build_optimizer, build_scheduler


def trained(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, 0.1, 0.01, [0.9, 0.999], 1e-8)
    sched = build_scheduler(opt, 2, 10)
    for _ in range(3):
        model(torch.randn(5, 3)).pow(2).mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


def test_round_trip_restores_model_optimizer_schedule_and_rng(tmp_path):
    model, opt, sched = trained()
    state = TrainState(step=3, epoch=0, position=24, config={"train": {"lr": 0.1}}, world_size=1)
    random.seed(5)
    np.random.seed(6)
    path = save_checkpoint(str(tmp_path), model, opt, sched, None, state, [torch_rng_state(torch.device("cpu"))], 2)
    expect_torch, expect_py, expect_np = torch.rand(3), random.random(), np.random.rand()

    assert latest_checkpoint(str(tmp_path)) == path and path.endswith("step_00000003")
    ck = load_checkpoint(path)
    assert (ck.state.step, ck.state.position, ck.state.config) == (3, 24, {"train": {"lr": 0.1}})
    fresh, opt2, sched2 = trained(seed=1)
    fresh.load_state_dict(ck.model)
    opt2.load_state_dict(ck.optimizer["optimizer"])
    sched2.load_state_dict(ck.optimizer["scheduler"])
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    restore_torch_rng(ck.rng_ranks[0], torch.device("cpu"))
    restore_python_numpy_rng(ck.rng_python_numpy)
    assert torch.equal(torch.rand(3), expect_torch)
    assert random.random() == expect_py and np.random.rand() == expect_np


def test_keeps_the_newest_and_cleans_temporaries_of_a_killed_run(tmp_path):
    model, opt, sched = trained()
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / "step_00000009.tmp-123").mkdir()  # what a SIGKILL mid-write leaves
    for step in (1, 2, 3):
        save_checkpoint(str(tmp_path), model, opt, sched, None, TrainState(step, 0, 0, {}, 1),
                        [torch_rng_state(torch.device("cpu"))], keep=2)
    assert sorted(os.listdir(root)) == ["latest", "step_00000002", "step_00000003"]


def test_not_a_checkpoint(tmp_path):
    assert latest_checkpoint(str(tmp_path)) is None
    (tmp_path / "x").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_checkpoint(str(tmp_path / "x"))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step_00000005")
    with pytest.raises(CheckpointError, match="names 'step_00000005', which is not a checkpoint"):
        latest_checkpoint(str(tmp_path))


class Payload:
    def __reduce__(self):
        return (os.system, ("touch ran",))


def test_a_pickled_payload_is_refused_in_one_line_and_never_runs(tmp_path, monkeypatch):
    model, opt, sched = trained()
    path = save_checkpoint(str(tmp_path), model, opt, sched, None, TrainState(1, 0, 0, {}, 1),
                           [torch_rng_state(torch.device("cpu"))], keep=2)
    torch.save({"weight": Payload()}, os.path.join(path, "model.pt"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="refused to load: it holds objects other than tensors") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value) and not (tmp_path / "ran").exists()


def test_a_stop_while_replacing_a_checkpoint_keeps_the_old_one(tmp_path):
    """Killed inside atomic_directory between moving step N aside (.old-PID)
    and moving its replacement in: latest names a step that is not there."""
    model, opt, sched = trained()
    path = save_checkpoint(str(tmp_path), model, opt, sched, None, TrainState(2, 0, 0, {}, 1),
                           [torch_rng_state(torch.device("cpu"))], keep=2)
    os.replace(path, path + ".old-4242")
    assert latest_checkpoint(str(tmp_path)) == path and load_checkpoint(path).state.step == 2
    os.makedirs(path + ".old-77")   # a leftover beside a whole checkpoint: never counted as kept, removed
    save_checkpoint(str(tmp_path), model, opt, sched, None, TrainState(3, 0, 0, {}, 1),
                    [torch_rng_state(torch.device("cpu"))], keep=2)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["latest", "step_00000002", "step_00000003"]
