"""Extraction on a Ray cluster: ``videolm extract --engine ray``.

The same run as ``extract.extract``, with the work spread by Ray Data::

    inputs (Dataset) --flat_map--> clips     CPU tasks: decoding.decode_rows (torch-free)
                     --map_batches--> features   actor pool: the backbone (a GPU each on CUDA)
                     --iter_rows--> driver       the one StoreWriter, as in the local engine

Execution streams: a decode task emits its clips in small blocks while it
reads, and Ray Data's backpressure bounds what is in flight, so neither a
long video nor a large corpus sits in memory. The driver runs the local
engine's ``begin_run`` (what is left, partials, the shard plan) and writes
each finished input through ``Run.record``, both torch-free
(``videolm.features.runplan``): only the actors import torch. A store
written here equals one written by ``--engine local`` on the same inputs and
settings, and either engine resumes the other's store.

Rows flowing through the dataset are one clip each (``clip``: its uint8 bytes)
or one closing message per input attempt (``info``: the JSON of decode_input's
"done" / "error" message). Rows arrive at the driver in any order, so a clip
carries its input's ``pos``, its index and the decode ``attempt``: a video
that decord fails midway is read again with PyAV (attempt 1) and the features
of attempt 0 are dropped when the input closes.

Features equal the local engine's bit for bit: every backbone batch has the
fixed shape ``batch_size`` (``embed_clips`` pads it), so a clip's vector does
not depend on which clips shared its batch, on either engine.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from videolm.errors import first_line
from videolm.features.config import ExtractConfig
from videolm.features.decoding import decode_rows
from videolm.features.inputs import InputError, InputItem
from videolm.features.registry import BackboneError, feature_dim, weights_path
from videolm.features.runplan import ExtractResult, _Video, begin_run, clip_spec_for, store_meta, warn_random_weights
from videolm.features.store import StoreWriter, remove_new_store
from videolm.progress import Progress
from videolm.video.sampling import ClipSpec

log = logging.getLogger(__name__)

INSTALL_HINT = "--engine ray needs Ray: pip install 'videolm[ray]'"
MAX_INPUT_BLOCKS = 10_000  # the input list's blocks: one input per decode task up to this many inputs
MIN_BLOCK_BYTES = 1 << 20  # a decode task emits a block of clips at least this often (and once per backbone batch)
ACTOR_CPUS = 1  # each backbone actor's CPU reservation, on CUDA too (its Python side feeds the GPU)
RAY_WORKER_NICENESS = 15  # Ray's default nice value for its workers (RAY_worker_niceness); a local Ray of ours uses 0
DECODE_RETRIES = 2  # a decode task that dies (a decoder crash, an OOM kill) is tried again this many times
CONNECT_TIMEOUT_S = 10.0  # a HOST:PORT that does not accept a TCP connection in this long is reported, not retried


class RayEngineError(Exception):
    """Ray is missing, or the cluster cannot run what was asked; one line."""


@dataclass
class RayConfig:
    address: str | None = None  # None: a local Ray started for the run; "auto" or "HOST:PORT": an existing cluster
    actors: int = 1  # backbone actors in the pool
    gpus_per_actor: float = 1.0  # on CUDA (a fraction puts several actors on one GPU)
    num_cpus: int | None = None  # CPUs of the local Ray (None: the machine's)
    object_store_memory: int | None = None  # bytes, local Ray only (None: Ray's default)
    threads: int | None = None  # torch threads per CPU actor (None: the node's cores, like the local engine)

    def __post_init__(self):
        if self.actors < 1:
            raise ValueError(f"--ray-actors must be >= 1, got {self.actors}")
        if not 0 < self.gpus_per_actor <= 1:   # an actor embeds on one device; Ray refuses fractions above 1
            raise ValueError(f"--ray-gpus-per-actor must be in (0, 1] (a fraction puts several actors on one GPU), "
                             f"got {self.gpus_per_actor}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"--ray-cpus must be >= 1, got {self.num_cpus}")
        if self.address is not None and self.num_cpus is not None:
            raise ValueError("--ray-cpus sizes the local Ray started without --ray-address; a cluster's CPUs are "
                             "its nodes' (`ray start --num-cpus N`)")
        if self.address is not None and self.address != "auto" and _host_port(self.address) is None:
            raise ValueError(f"--ray-address must be auto, HOST:PORT or ray://HOST:PORT (e.g. 10.0.0.1:6379), "
                             f"got {self.address!r}")


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT`` or ``ray://HOST:PORT`` (IPv6 in brackets), else None."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """RayEngineError unless ``address``'s port accepts a TCP connection: ray.init
    retries a head that is not there for minutes, printing a warning every few
    seconds, before it gives up (measured: still retrying after 4 minutes)."""
    given = address
    if address == "auto" and os.environ.get("RAY_ADDRESS"):  # ray.init("auto") joins RAY_ADDRESS when it is set
        given, address = f"auto (RAY_ADDRESS={os.environ['RAY_ADDRESS']})", os.environ["RAY_ADDRESS"]
    target = _host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout).close()
    except OSError as err:
        why = err.strerror or str(err) or type(err).__name__
        raise RayEngineError(f"--ray-address {given}: nothing answers at {target[0]}:{target[1]} ({why}); "
                             f"start the head there with `ray start --head --port {target[1]}`") from None


def import_ray():
    """``ray`` with Ray Data, or RayEngineError saying what to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (the `data` extra: pandas, pyarrow)
    except ImportError as err:
        raise RayEngineError(f"{INSTALL_HINT} ({err})") from None
    return ray


# ---------------------------------------------------------------- the workers


class _Embedder:
    """A backbone actor: clip rows in, feature rows out (closing rows pass through).
    A BackboneError (weights that do not load, clips the network cannot take,
    a degenerate output) becomes one "fatal" row, on which the driver stops the
    run with that line, as the local engine does: Ray would hand it over as a
    traceback in a string. The network is built when the actor starts, while
    the first clips are still being decoded (Ray Data dispatches the first
    decode task only once its own helper actors are up, so the actor waits
    for its first batch anyway); an error there is kept and raised on the
    first batch, so that it becomes such a row too, not a failed actor start."""

    def __init__(self, cfg: ExtractConfig, spec: dict, threads: int | None):
        import torch  # here, in the actor: the driver, which imports this module too, never needs torch

        from videolm.features.extract import OutputCheck

        self.cfg, self.spec, self.threads = cfg, ClipSpec.from_dict(spec), threads
        self.device = torch.device("cuda" if cfg.device.startswith("cuda") else "cpu")  # Ray picked the GPU
        self.shape = (self.spec.frames, self.spec.crop, self.spec.crop, 3)  # one clip, uint8
        self.check = OutputCheck(f"{cfg.backbone} (weights {cfg.weights})") if cfg.check_output else None
        self.net, self.error = None, None
        try:
            self._build()
        except Exception as err:  # raised on the first batch: a BackboneError becomes the fatal row
            self.error = err

    def _build(self) -> None:
        import torch

        from videolm.features.backbones import build_backbone
        from videolm.features.extract import check_input_size

        if self.device.type == "cpu":
            torch.set_num_threads(self.threads or usable_cpus())
        elif not torch.cuda.is_available():  # Ray reserved a GPU that this node's torch cannot use
            import ray  # in an actor: there
            raise BackboneError(f"--device cuda: the backbone actor on node {ray.util.get_node_ip_address()} got GPU "
                                f"{os.environ.get('CUDA_VISIBLE_DEVICES', '?')} from Ray, but its torch sees no CUDA "
                                f"device (torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                                "install a CUDA build of torch on the GPU nodes")
        self.net = build_backbone(self.cfg.backbone, self.cfg.weights, seed=self.cfg.seed,
                                  temporal=self.cfg.temporal).to(self.device).eval()
        check_input_size(self.net, self.spec)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            if self.error is not None:   # the build failed, whatever the error: the run stops in one line
                raise BackboneError(f"the backbone actor could not build {self.cfg.backbone}: "
                                    f"{first_line(self.error)}") if not isinstance(self.error, BackboneError) \
                    else self.error
            return self._embed(batch)
        except BackboneError as err:
            return {"pos": np.array([-1]), "attempt": np.array([0]), "idx": np.array([-1]), "start": np.array([0.0]),
                    "end": np.array([0.0]), "info": np.array([json.dumps(["fatal", first_line(err)])], dtype=object),
                    "feature": np.array([b""], dtype=object)}

    def _embed(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from videolm.features.extract import embed_clips

        if self.error is not None:
            raise self.error
        has_clip = [i for i, c in enumerate(batch["clip"]) if len(c)]
        features = np.empty(len(batch["clip"]), dtype=object)
        features[:] = b""
        for k in range(0, len(has_clip), self.cfg.batch_size):
            rows = has_clip[k : k + self.cfg.batch_size]
            clips = torch.from_numpy(np.stack([np.frombuffer(batch["clip"][i], np.uint8).reshape(self.shape)
                                               for i in rows]))  # (b, T, H, W, 3)
            feats = embed_clips(self.net, clips, self.spec, self.cfg, self.device, self.check)  # (b, D) float32
            for i, f in zip(rows, feats):
                features[i] = f.tobytes()
        out = {k: v for k, v in batch.items() if k != "clip"}
        out["feature"] = features
        return out


# ---------------------------------------------------------------- the driver


def extract_ray(items: list[InputItem], out: str, cfg: ExtractConfig, ray_cfg: RayConfig | None = None,
                input_errors: list[InputError] = (), progress: Progress | None = None) -> ExtractResult:
    """``extract.extract`` on Ray: the same store, resumable the same way."""
    ray = import_ray()
    ray_cfg = ray_cfg or RayConfig()
    progress = progress or Progress()
    t0 = time.perf_counter()
    spec = clip_spec_for(cfg)
    if cfg.device not in ("cpu", "cuda"):
        raise RayEngineError(f"--device {cfg.device}: with --engine ray, use cpu or cuda (Ray gives each actor "
                             "its GPU)")
    # the decode tasks and the actors open these on other nodes, in the raylet's working directory
    items = [dataclasses.replace(it, path=os.path.abspath(it.path)) for it in items]
    if cfg.weights and os.path.exists(cfg.weights):
        cfg = dataclasses.replace(cfg, weights=os.path.abspath(cfg.weights))
    if ray_cfg.address is None and not ray.is_initialized():  # a local Ray of ours: its CPUs are known now
        short = _pool_shortfall(ray_cfg, ray_cfg.num_cpus or usable_cpus(), 0, cuda=False)
        if short:  # said before Ray starts or the store is begun
            raise RayEngineError(f"{short}: use fewer --ray-actors or more --ray-cpus")
    warn_random_weights(cfg)
    # The driver builds no network, nor imports torch (5-6 s on 2 cores, and a head node may have none): the
    # store's dim is the registry's, and the actors load the weights. What can be checked here is, at once: an
    # unknown backbone or weight name, and, on a local Ray (this machine's files are the actors'), a missing
    # weights file. A file that does not load stops the run from the actor, in one line, as the local engine's.
    dim = feature_dim(cfg.backbone, cfg.temporal)
    weights_path(cfg.backbone, cfg.weights, must_exist=ray_cfg.address is None)
    fresh = not os.path.exists(os.path.join(out, "meta.json"))
    existed = os.path.isdir(out)
    started = abandon = False
    with ThreadPoolExecutor(1) as pool:
        try:
            if fresh and not ray.is_initialized():  # a new store: something to do, Ray starts at once
                _init(ray, ray_cfg)
                started = True
            with StoreWriter(out, store_meta(cfg, spec, dim), cfg.videos_per_shard) as writer:
                run = begin_run(items, writer, cfg, list(input_errors), progress, dim)
                if run.decode:  # a rerun with nothing left starts no Ray
                    if not ray.is_initialized():
                        _init(ray, ray_cfg)
                        started = True
                    # a local Ray of ours starts its workers at nice 0, a cluster's at Ray's default
                    own = started and ray_cfg.address is None
                    try:
                        _drive(ray, run, cfg, spec, ray_cfg,
                               min(19, (0 if own else RAY_WORKER_NICENESS) + cfg.worker_nice), own)
                    except BackboneError:
                        # the network could not run (weights that do not load): a store this run created and
                        # recorded no input in goes (its input-list errors are only written at the end), as
                        # the local engine, which builds first, never makes one
                        abandon = fresh and not (run.result.ok or run.result.failed)
                        raise
                stopping = pool.submit(ray.shutdown) if started else None  # the workers go while the index is written
                started = False
                result = run.end(t0)
                if stopping is not None:
                    stopping.result()
                return result
        finally:
            if started:
                ray.shutdown()
            if abandon:
                remove_new_store(out, existed)


def _init(ray, ray_cfg: RayConfig) -> None:
    if ray_cfg.address is not None:
        check_reachable(ray_cfg.address)
        try:
            ray.init(address=ray_cfg.address, logging_level=logging.WARNING)
        except ConnectionError as err:
            hint = "start the cluster with `ray start --head`"
            # Ray 2.59+ starts a head with token authentication when ~/.ray/auth_token exists, and (so as not to
            # send the token anywhere) turns it on in a driver given an explicit address only on request; a refused
            # token shows as Ray's warnings above and this ConnectionError after about 20 s
            if ray_cfg.address != "auto":
                printed = "`ray get-auth-token` on the head prints it"
                if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
                    hint += (", or, if it uses token authentication, set RAY_AUTH_MODE=token and give the head's "
                             f"token (RAY_AUTH_TOKEN, or ~/.ray/auth_token; {printed})")
                else:
                    hint += f", or check that RAY_AUTH_TOKEN (or ~/.ray/auth_token) holds the head's token ({printed})"
            raise RayEngineError(f"--ray-address {ray_cfg.address}: cannot connect ({str(err).splitlines()[0]}); "
                                 f"{hint}") from None
        return
    # workers at nice 0 (Ray's default is 15): the backbone actor then runs at the priority the local engine's
    # backbone has, and decode tasks --worker-nice below it, as the local engine's DataLoader workers.
    # address="local": a new Ray even where `ray start` left a cluster (running, or stale in
    # /tmp/ray/ray_current_cluster), which ray.init() without an address would try to join, and refuse
    # because num_cpus is given
    ray.init(address="local", num_cpus=ray_cfg.num_cpus or usable_cpus(),
             object_store_memory=ray_cfg.object_store_memory, include_dashboard=False, logging_level=logging.WARNING,
             _system_config={"worker_niceness": 0})


def usable_cpus() -> int:
    """The CPUs this process may use: Ray's own count (it reads a container's
    cgroup quota), else the affinity mask; not os.cpu_count(), which in a pod
    capped at 4 CPUs on a 64-core host says 64."""
    try:
        from ray._private.utils import get_num_cpus

        return max(1, int(get_num_cpus()))
    except Exception:   # a Ray without it: the affinity mask (taskset, cpusets)
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _pool_shortfall(ray_cfg: RayConfig, cpus: float, gpus: float, cuda: bool) -> str:
    """What the actor pool needs that the cluster lacks ("" when nothing): the pool holds its
    resources for the whole run, so without a CPU left over no decode task ever starts."""
    need_cpus = ray_cfg.actors * ACTOR_CPUS + 1
    need_gpus = ray_cfg.actors * ray_cfg.gpus_per_actor if cuda else 0
    if cpus >= need_cpus and gpus >= need_gpus:
        return ""
    gpu_need, gpu_have = (f" and {need_gpus:g} GPUs", f" and {gpus:g} GPUs") if cuda else ("", "")
    return (f"--ray-actors {ray_cfg.actors} needs {need_cpus:g} CPUs{gpu_need} (one CPU per backbone actor and "
            f"one to decode); the Ray cluster has {cpus:g} CPUs{gpu_have}")


def _drive(ray, run, cfg: ExtractConfig, spec: ClipSpec, ray_cfg: RayConfig, decode_nice: int, own: bool) -> None:
    """Decode on CPU tasks, embed on the actor pool, write here. ``own``: the
    Ray is a local one started for this run (its resources cannot grow)."""
    resources = ray.cluster_resources()
    cuda = cfg.device == "cuda"
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    if cuda and gpus < ray_cfg.gpus_per_actor:
        line = (f"--device cuda: the Ray cluster has {gpus:g} GPUs (each actor takes {ray_cfg.gpus_per_actor:g})")
        if own:
            raise RayEngineError(f"{line}; start GPU nodes or use --device cpu")
        log.warning("%s: the run waits for GPU nodes (an autoscaling cluster starts them on request)", line)
    line = _pool_shortfall(ray_cfg, cpus, gpus, cuda)
    if line:
        if own:
            raise RayEngineError(f"{line}: use fewer --ray-actors or more --ray-cpus")
        log.warning("%s: the run waits until the cluster has them", line)
    log.info("ray: %g CPUs, %g GPUs; %d backbone actor(s) on %s; %d inputs to extract",
             cpus, gpus, ray_cfg.actors, "cuda" if cuda else "cpu", len(run.decode))
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.target_max_block_size, ctx.enable_progress_bars, ctx.print_on_execution_start,
             ctx.max_errored_blocks)
    ray_log = logging.getLogger("ray.data")  # Ray Data's own lines ("progress bars disabled", "finished")
    ray_level = ray_log.level
    if not log.isEnabledFor(logging.DEBUG):
        ray_log.setLevel(logging.CRITICAL)  # a failure still raises, with Ray's trace
    clip_bytes = spec.frames * spec.crop * spec.crop * 3
    # small blocks: the backbone starts on a video's first clips while the rest is still being decoded
    ctx.target_max_block_size = max(MIN_BLOCK_BYTES, clip_bytes * cfg.batch_size)
    ctx.enable_progress_bars = False  # progress is ours (Progress), as in the local engine
    ctx.print_on_execution_start = False
    ctx.max_errored_blocks = -1   # a block whose task died DECODE_RETRIES + 1 times is dropped; its inputs fail
    try:
        inputs = [{"pos": pos, "video_id": it.video_id, "path": it.path} for pos, it in enumerate(run.decode)]
        with warnings.catch_warnings():   # only while the pipeline is built: the filters are restored after
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            ds = (ray.data.from_items(inputs, override_num_blocks=min(len(inputs), MAX_INPUT_BLOCKS))
                  .flat_map(decode_rows, fn_kwargs={"spec": spec.to_dict(), "reader": cfg.reader,
                                                     "threads": cfg.decode_threads, "nice": decode_nice},
                            num_cpus=1, **_decode_task_options())
                  .map_batches(_Embedder, fn_constructor_kwargs={"cfg": cfg, "spec": spec.to_dict(),
                                                                 "threads": ray_cfg.threads},
                               batch_size=cfg.batch_size, batch_format="numpy",
                               **actor_options(ray, cuda, ray_cfg)))
        _collect(ds.iter_rows(), run)
    finally:
        (ctx.target_max_block_size, ctx.enable_progress_bars, ctx.print_on_execution_start,
         ctx.max_errored_blocks) = saved
        ray_log.setLevel(ray_level)


def _decode_task_options() -> dict:
    """Each decode task's Ray options: a task that dies is tried again
    DECODE_RETRIES times, not forever (Ray Data's default max_retries is -1).
    Ray 2.60 has no named parameter for it and deprecates passing it this
    way (removal announced for 2.64; the extra asks for an older Ray)."""
    return {"max_retries": DECODE_RETRIES}


def actor_options(ray, cuda: bool, ray_cfg: RayConfig) -> dict:
    """The backbone stage's ``map_batches`` placement: a pool of ``actors``
    actors, each reserving one CPU (on CUDA the one that feeds its GPU) and
    ``gpus_per_actor`` GPUs on CUDA (Ray sets its CUDA_VISIBLE_DEVICES).

    ``enable_true_multi_threading``: the backbone runs in the actor's main
    thread, the one that built it, not in the one-thread pool that Ray Data
    otherwise wraps a class UDF in (to overlap batching with the UDF, which
    needs more than one call in flight per actor; the pool takes one at a
    time, so nothing runs concurrently either way). In the pool thread the
    network's OpenMP threads are a second team beside the one its build
    started, and libgomp, managing more threads than there are cores, barely
    spins at a barrier before it sleeps. Measured on 2 cores (60 s 720p,
    S3D, 20 s windows): the compute threads' voluntary context switches
    were 1680-2920, now 74-86 (the local engine's: 62-94), and the CPUs
    sat idle 3.6-4.4 s of each 20, now 0.8. The forward passes' time did not
    change beyond this machine's noise (15 batches, 3 pairs in turn: 59.1 s
    median against 62.0 s, pairs 0.98, 1.05, 0.93), so this is for a sound
    use of the cores, not a speed-up to count on."""
    resources = {"num_gpus": ray_cfg.gpus_per_actor} if cuda else {}
    return {"compute": ray.data.ActorPoolStrategy(size=ray_cfg.actors, enable_true_multi_threading=True),
            "num_cpus": ACTOR_CPUS, **resources}


def _collect(rows, run) -> None:
    """Assemble each input's features as they arrive (in any order) and hand
    every finished input to the writer."""
    attempts: dict[int, dict[int, _Video]] = {}  # pos -> attempt -> what has arrived
    closed: set[int] = set()  # inputs already recorded: late rows of a dropped attempt are ignored
    for row in rows:
        pos, attempt = int(row["pos"]), int(row["attempt"])
        if pos < 0:  # the backbone cannot run: the run stops, what is finished stays
            raise BackboneError(json.loads(row["info"])[1])
        if pos in closed:
            continue
        video = attempts.setdefault(pos, {}).setdefault(attempt, _Video())
        if row["feature"]:
            idx = int(row["idx"])
            new = idx not in video.features   # a retried task may deliver a clip again: counted once
            video.features[idx] = np.frombuffer(row["feature"], np.float32)  # (D,)
            video.times[idx] = (float(row["start"]), float(row["end"]))
            if new:
                run.progress.advance(1, "clips")
                run.result.clips += 1
        else:
            kind, *rest = json.loads(row["info"])
            if kind == "error":
                closed.add(pos)
                del attempts[pos]
                run.failed(pos, rest[0])
                continue
            video.row, video.expected, video.warnings = rest
        if video.complete:
            closed.add(pos)
            del attempts[pos]
            run.record(pos, video.finished(run.decode[pos], run.dim))
    for pos in range(len(run.decode)):   # inputs of a dropped block: their task died every time it was tried
        if pos not in closed:
            run.failed(pos, f"its decode task died {DECODE_RETRIES + 1} times (a decoder crash, or out of memory), "
                            f"with any other input of its block; --retry-failed tries it again")
