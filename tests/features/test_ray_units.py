"""The Ray engine's checks and its row collector, without starting Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest

from videolm.features.inputs import InputItem
from videolm.features.ray_engine import DECODE_RETRIES, RayConfig, _collect, usable_cpus


@pytest.mark.parametrize("kwargs, message", [
    ({"gpus_per_actor": 1.5}, r"--ray-gpus-per-actor must be in \(0, 1\]"),
    ({"gpus_per_actor": 0}, r"--ray-gpus-per-actor must be in \(0, 1\]"),
    ({"threads": -1}, "--threads must be >= 1"),
    ({"actors": 0}, "--ray-actors must be >= 1"),
])
def test_settings_that_cannot_work_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RayConfig(**kwargs)


def test_usable_cpus_is_what_this_process_may_use():
    import os

    assert 1 <= usable_cpus() <= (os.cpu_count() or 1)


class FakeRun:
    def __init__(self, n):
        self.decode = [InputItem(f"v{i}", f"/v{i}.mp4", "test") for i in range(n)]
        self.dim, self.recorded, self.failures = 2, {}, {}
        self.progress = type("P", (), {"advance": lambda *a: None})()
        self.result = type("R", (), {"clips": 0})()

    def record(self, pos, finished):
        self.recorded[pos] = finished

    def failed(self, pos, reason):
        self.failures[pos] = reason


def test_an_input_whose_decode_task_kept_dying_is_failed_not_lost():
    """Ray Data drops a block whose task died every time (max_errored_blocks):
    its input never gets a closing row, and must be recorded as failed (a
    rerun then skips it unless --retry-failed), not left out silently."""
    run = FakeRun(3)
    feature = np.ones(2, np.float32).tobytes()
    rows = [
        {"pos": 0, "attempt": 0, "idx": 0, "start": 0.0, "end": 1.0, "feature": feature, "info": ""},
        {"pos": 0, "attempt": 0, "idx": 0, "start": 0.0, "end": 1.0, "feature": feature, "info": ""},   # again
        {"pos": 0, "attempt": 0, "idx": -1, "start": 0.0, "end": 0.0, "feature": b"",
         "info": json.dumps(["done", {"kind": "video"}, 1, []])},
        {"pos": 2, "attempt": 0, "idx": -1, "start": 0.0, "end": 0.0, "feature": b"",
         "info": json.dumps(["error", "cannot decode (test)"])},
    ]
    _collect(iter(rows), run)
    assert sorted(run.recorded) == [0] and run.failures[2] == "cannot decode (test)"
    assert f"its decode task died {DECODE_RETRIES + 1} times" in run.failures[1]
    assert run.result.clips == 1   # a clip delivered twice (a retried task) counts once
