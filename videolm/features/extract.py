"""Clip-feature extraction: inputs in, a feature store out.

DataLoader workers open and decode inputs (one input per worker at a time)
and send uint8 clips; the main process batches clips across inputs, runs the
backbone, and hands each finished input to the store writer. Batches always
have ``batch_size`` clips (the last one is zero-padded), so a clip's features
do not depend on which other clips shared its batch: a resumed run writes the
same bytes as an uninterrupted one.

The pieces both engines share: ``embed_clips`` (one fixed-shape backbone
batch) lives here; torch-free, ``decode_input`` (opens, decodes and cuts one
input into messages) in ``videolm.features.decoding``, and ``begin_run`` /
``Run.record`` (what is left to do, and each finished input into the writer
and the counts) in ``videolm.features.runplan``.
``videolm.features.ray_engine`` runs the same pieces as Ray Data tasks and
actors.
"""

from __future__ import annotations

import os
import time
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from videolm.errors import first_line
from videolm.features.backbones import BackboneError, build_backbone
from videolm.features.config import ExtractConfig  # noqa: F401  (re-exported: the config lives torch-free)
from videolm.features.decoding import CHUNK, decode_input  # noqa: F401  (re-exported: decoding is torch-free)
from videolm.features.inputs import InputError, InputItem
# the engine-independent half of a run lives torch-free (the Ray driver's); re-exported here
from videolm.features.runplan import (SOURCE_FPS, ExtractResult, Run, _count, _Video, begin_run,  # noqa: F401
                                      clip_spec_for, store_meta, warn_random_weights)
from videolm.features.store import StoreWriter, remove_new_store
from videolm.progress import Progress
from videolm.video.sampling import ClipSpec
from videolm.video.transforms import normalize_clips


def decode_context():
    """The multiprocessing context of the decode workers (None: the default).
    On Linux: ``fork`` (named on Python 3.14, which made forkserver the
    default; a method the caller set is kept), unless PyAV is loaded
    in this process; then ``forkserver``, whose server process (started once,
    with this module imported) has never decoded, so a worker does not
    inherit a decoder's state. With PyAV 18.1.1 a worker forked after PyAV
    decoded in the parent hangs on a lock held at fork time (a notebook that
    looked at a video, a test suite). Fork stays the rule otherwise: its
    workers start at once and share the input list, while a forkserver worker
    gets a pickled copy of it and re-imports the caller's main script, which
    must then guard its work with ``if __name__ == "__main__":``. Elsewhere
    (macOS, Windows): the platform's default, spawn, which inherits nothing."""
    import multiprocessing
    import sys

    if not sys.platform.startswith("linux"):
        return None
    if "av" not in sys.modules:
        if multiprocessing.get_start_method(allow_none=True) is not None or sys.version_info < (3, 14):
            return None   # the caller's chosen method, or fork, the default: the DataLoader's own path
        return multiprocessing.get_context("fork")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["videolm.features.extract"])
    return ctx


def start_decode_server() -> None:
    """Start the forkserver (where ``decode_context`` picks it) now, so that its
    imports (1-3 s of torch on 2 cores) overlap building the backbone instead
    of delaying the first batch."""
    ctx = decode_context()
    if ctx is not None and ctx.get_start_method() == "forkserver":   # (None: fork)
        from multiprocessing import forkserver

        forkserver.ensure_running()


def _init_worker(main_pid: int, nice: int, _worker_id: int) -> None:
    """A decode worker's start. With ``nice``, it yields the CPU to the
    backbone's threads when both want it: on few cores an oversubscribed
    backbone stalls at every parallel barrier. A worker that is not the main
    process's child (a forkserver's) also watches the main process: torch's
    own watchdog notices only the death of the worker's parent, here the
    server, so a main process killed hard (SIGKILL, an OOM kill) left the
    worker and its server running, about 1 GB, measured."""
    if nice:
        os.nice(nice)
    if os.getppid() != main_pid:
        import threading

        threading.Thread(target=_exit_without, args=(main_pid,), daemon=True).start()


def _exit_without(pid: int) -> None:
    while True:
        time.sleep(1.0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:   # a process of another user: alive
            pass


class ClipStream(IterableDataset):
    """Decodes inputs; worker ``w`` of ``W`` takes inputs ``w, w+W, ...`` and
    yields their ``decode_input`` messages."""

    def __init__(self, items: list[InputItem], spec: ClipSpec, reader: str, threads: int):
        self.items, self.spec, self.reader, self.threads = items, spec, reader, threads

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            torch.set_num_threads(1)
        for pos in range(wid, len(self.items), nw):
            for message in decode_input(pos, self.items[pos], self.spec, self.reader, self.threads):
                if message[0] == "clips":  # a tensor: it reaches the main process through shared memory
                    message = message[:3] + (torch.from_numpy(message[3]),) + message[4:]
                yield message


def extract(items: list[InputItem], out: str, cfg: ExtractConfig, input_errors: list[InputError] = (),
            progress: Progress | None = None, backbone: torch.nn.Module | None = None) -> ExtractResult:
    """Extract features of ``items`` into the store at ``out``; resumable.
    ``backbone``: an already built ``build_backbone(cfg.backbone, cfg.weights)``
    to reuse across calls (it must be what the config names)."""
    progress = progress or Progress()
    t0 = time.perf_counter()
    spec = clip_spec_for(cfg)
    device = torch.device(cfg.device)
    warn_random_weights(cfg)
    if cfg.workers:
        start_decode_server()
    if backbone is None:
        backbone = build_backbone(cfg.backbone, cfg.weights, seed=cfg.seed, temporal=cfg.temporal)
    backbone = backbone.to(device).eval()
    check_input_size(backbone, spec)
    dim = backbone.dim
    fresh, existed = not os.path.exists(os.path.join(out, "meta.json")), os.path.isdir(out)
    abandon = False
    try:
        with StoreWriter(out, store_meta(cfg, spec, dim), cfg.videos_per_shard) as writer:
            run = begin_run(items, writer, cfg, list(input_errors), progress, dim)
            try:
                return _extract(run, cfg, spec, device, backbone, dim, progress, t0)
            except DegenerateOutput:
                # a store this run created and recorded nothing in goes, so that the rerun with real
                # weights the message asks for is not refused as "another setting"
                abandon = fresh and not (run.result.ok or run.result.failed)
                raise
    finally:
        if abandon:
            remove_new_store(out, existed)


def embed_clips(backbone: torch.nn.Module, clips: torch.Tensor, spec: ClipSpec, cfg: ExtractConfig, device,
                check: "OutputCheck | None" = None) -> np.ndarray:
    """(n, T, H, W, 3) uint8 clips, n <= cfg.batch_size -> (n, D) float32
    features. The batch is zero-padded to ``cfg.batch_size`` clips: a fixed
    shape, so a clip's features do not depend on its neighbours in the batch
    (which is what lets a resumed run, or another engine, write the same bytes)."""
    n = clips.shape[0]
    if n < cfg.batch_size:
        pad = clips.new_zeros((cfg.batch_size - n,) + tuple(clips.shape[1:]))
        clips = torch.cat([clips, pad])
    x = normalize_clips(clips.to(device, non_blocking=True), spec.mean, spec.std)  # (B, 3, T, H, W)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=cfg.amp and device.type == "cuda"):
        out = backbone(x).float()  # (B, D)
    if check is not None and not check.done:
        check(x[:n], out[:n])
    return out[:n].cpu().numpy()


def _extract(run, cfg: ExtractConfig, spec: ClipSpec, device, backbone, dim: int, progress: Progress,
             t0: float) -> ExtractResult:
    decode, result = run.decode, run.result
    stream = ClipStream(decode, spec, cfg.reader, cfg.decode_threads)
    workers = min(cfg.workers, len(decode))
    loader = DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
                        prefetch_factor=4 if workers else None,
                        multiprocessing_context=decode_context() if workers else None,
                        worker_init_fn=partial(_init_worker, os.getpid(), cfg.worker_nice) if workers else None)
    videos: dict[int, _Video] = {}
    queue: list[tuple[int, int, torch.Tensor]] = []  # (pos, clip index, (T, H, W, 3))
    check = OutputCheck(f"{cfg.backbone} (weights {cfg.weights})") if cfg.check_output else None

    def run_batch(batch):
        feats = embed_clips(backbone, torch.stack([c for _, _, c in batch]), spec, cfg, device, check)  # (b, D)
        for (pos, idx, _), f in zip(batch, feats):
            videos[pos].features[idx] = f
        progress.advance(len(batch), "clips")
        result.clips += len(batch)
        for pos in {p for p, _, _ in batch}:
            if videos[pos].complete:
                run.record(pos, videos.pop(pos).finished(decode[pos], dim))

    for message in loader:
        kind, pos = message[0], message[1]
        video = videos.setdefault(pos, _Video())
        if kind == "clips":
            _, _, first, clips, times = message
            for j in range(clips.shape[0]):
                queue.append((pos, first + j, clips[j]))
                video.times[first + j] = times[j]
        elif kind == "restart":  # its clips come again, from another reader
            queue = [q for q in queue if q[0] != pos]
            videos[pos] = _Video()
        elif kind == "done":
            _, _, video.row, video.expected, video.warnings = message
            if video.complete:
                run.record(pos, videos.pop(pos).finished(decode[pos], dim))
        else:  # error: drop whatever of it is queued
            queue = [q for q in queue if q[0] != pos]
            del videos[pos]
            run.failed(pos, message[2])
        while len(queue) >= cfg.batch_size:
            batch, queue = queue[: cfg.batch_size], queue[cfg.batch_size :]
            run_batch(batch)
    if queue:
        run_batch(queue)
    return run.end(t0)


class DegenerateOutput(BackboneError):
    """The backbone gives the same vector (or zeros) for clips that differ."""


NO_CHECK = "--no-output-check (ExtractConfig.check_output=False)"


class OutputCheck:
    """Stops a run whose backbone output carries no information, before a
    store fills with it: random-init MobileNetV2 gives all-zero vectors, and
    random ResNet-50 gives cosine > 0.99 between unrelated clips. Zero is
    checked on the first batch; "constant" on the first batch that holds two
    clips whose inputs clearly differ (cosine < 0.9), with real weights such
    clips are far apart (MobileNetV2 on the sample videos: cosine 0.3-0.5)."""

    INPUTS_DIFFER = 0.9  # input cosine below this: clearly different clips
    SAME_OUTPUT = 0.99  # ... and yet every such pair's features this close: constant

    def __init__(self, what: str):
        self.what = what
        self.done = False
        self.first = True

    def __call__(self, x: torch.Tensor, feats: torch.Tensor) -> None:
        """x: (n, 3, T, H, W) normalised clips; feats: (n, D) their vectors."""
        if self.first:
            self.first = False
            if feats.abs().max().item() < 1e-6:
                raise DegenerateOutput(f"{self.what}: every feature of the first batch is 0: this network gives no "
                                       "information with these weights; use real weights (--weights, see "
                                       f"docs/backbones.md), or {NO_CHECK} to store it anyway")
        if feats.shape[0] < 2:
            return
        xc = _cosine(x.flatten(1).double())
        fc = _cosine(feats.double())
        differ = torch.triu(xc < self.INPUTS_DIFFER, diagonal=1)
        if not differ.any():
            return  # undecided: look at the next batch
        self.done = True
        closest = fc[differ].min().item()
        if closest > self.SAME_OUTPUT:
            raise DegenerateOutput(f"{self.what}: clips that differ get the same vector (cosine >= {closest:.4f}): "
                                   "this network gives no information with these weights; use real weights "
                                   f"(--weights, see docs/backbones.md), or {NO_CHECK} to store it anyway")


def _cosine(v: torch.Tensor) -> torch.Tensor:
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return v @ v.T


def check_input_size(backbone, spec: ClipSpec) -> None:
    """Fail before decoding anything if the network cannot take these clips
    (fixed pooling windows and positional embeddings set a minimum size)."""
    x = torch.zeros(1, 3, spec.frames, spec.crop, spec.crop, device=next(backbone.parameters()).device)
    try:
        with torch.no_grad():
            backbone(x)
    except RuntimeError as err:
        raise BackboneError(f"{getattr(backbone, 'name', 'backbone')}: cannot take clips of {spec.frames} frames x {spec.crop} px "
                            f"({first_line(err)}); use the backbone's own sizes (see docs/backbones.md)") from None
