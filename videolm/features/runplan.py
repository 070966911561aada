"""The engine-independent half of an extraction run, torch-free.

Both engines plan and record a run with these: the clip a backbone takes
(``clip_spec_for``), the store's meta, what is left to do (``begin_run``)
and each finished input into the writer and the counts (``Run.record``).
Nothing here imports torch, so the Ray engine's driver (which plans the run
and writes the store; its actors run the networks) starts without it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from videolm.features.config import ExtractConfig
from videolm.features.inputs import InputError, InputItem
from videolm.features.registry import BACKBONES
from videolm.features.store import Finished, StoreWriter
from videolm.progress import Progress
from videolm.video.sampling import PRESETS, ClipSpec

log = logging.getLogger(__name__)

SOURCE_FPS = 30.0  # backbone sampling rates are given in frames of a 30 fps video


def clip_spec_for(cfg: ExtractConfig) -> ClipSpec:
    """The backbone's own clip (T frames every tau frames of a 30 fps video),
    or a preset's timing with the backbone's normalisation; then overrides.
    Sizes and mean/std follow the chosen official weights where they differ
    (torchvision's IMAGENET1K_V2 is evaluated at 232 px, V1 at 256)."""
    spec = BACKBONES[cfg.backbone]
    pre = spec.preprocessing(cfg.weights)
    if cfg.preset is not None:
        base = PRESETS[cfg.preset]
        values = dict(base.to_dict(), mean=pre["mean"], std=pre["std"])
    else:
        values = dict(ClipSpec().to_dict(), window_s=spec.frames * spec.sampling_rate / SOURCE_FPS,
                      frames=spec.frames, **pre)
    for key in ("window_s", "stride_s", "frames", "short_side", "crop"):
        if getattr(cfg, key) is not None:
            values[key] = getattr(cfg, key)
    if cfg.short_side is None and cfg.crop is not None and values["short_side"] < cfg.crop:
        values["short_side"] = cfg.crop
    if values["short_side"] < values["crop"]:
        raise ValueError(f"--short-side {values['short_side']} is smaller than the crop {values['crop']} "
                         "(--crop): the crop must fit inside the resized frame")
    values["drop_short"] = cfg.drop_short
    return ClipSpec.from_dict(values)


def _version() -> str:
    from videolm import __version__

    return __version__


def store_meta(cfg: ExtractConfig, spec: ClipSpec, dim: int) -> dict:
    meta = {"backbone": cfg.backbone, "weights": cfg.weights, "clip_spec": spec.to_dict(), "dim": dim,
            "dtype": cfg.dtype, "videolm_version": _version()}
    if cfg.temporal != "mean":  # stores of the default keep the meta they always had
        meta["temporal"] = cfg.temporal
    return meta


@dataclass
class ExtractResult:
    out: str
    ok: int = 0
    failed: int = 0
    skipped: int = 0  # already in the store from an earlier run
    skipped_failed: int = 0  # of those, inputs an earlier run could not extract (kept failed: no --retry-failed)
    clips: int = 0
    seconds: float = 0.0
    errors: list[dict] = field(default_factory=list)  # this run's failures and warnings

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else 0.0


class _Video:
    """An input whose clips are in flight."""

    def __init__(self):
        self.features: dict[int, np.ndarray] = {}
        self.times: dict[int, tuple[float, float]] = {}
        self.expected: int | None = None
        self.row: dict = {}
        self.warnings: list[str] = []

    @property
    def complete(self) -> bool:
        return self.expected is not None and len(self.features) == self.expected

    def finished(self, item: InputItem, dim: int) -> Finished:
        """Its result for the writer, once ``complete``."""
        n = self.expected
        feats = np.stack([self.features[i] for i in range(n)]) if n else np.zeros((0, dim), np.float32)  # (n, D)
        row = dict(self.row, clip_start=[self.times[i][0] for i in range(n)],
                   clip_end=[self.times[i][1] for i in range(n)])
        return Finished(item.video_id, item.path, feats, row, None, self.warnings)


def warn_random_weights(cfg: ExtractConfig) -> None:
    if cfg.weights == "none":
        log.warning("%s: --weights none: random weights (seed %d); the features carry no meaning beyond "
                    "testing the pipeline (see docs/backbones.md for real weights)", cfg.backbone, cfg.seed)


@dataclass
class Run:
    """One run over a store, as ``begin_run`` set it up: ``decode`` are the
    inputs to decode and embed now, in input order (an engine's ``pos`` is an
    index into it); ``input_rows`` go to ``writer.finalize``."""

    writer: StoreWriter
    result: ExtractResult
    progress: Progress
    decode: list[InputItem]
    input_rows: list[dict]
    dim: int

    def record(self, pos: int, res: Finished) -> None:
        """One finished input (ok or failed) into the store and the counts."""
        self.writer.add(res)
        _count(self.result, res, self.progress, self.decode[pos])

    def failed(self, pos: int, reason: str) -> None:
        item = self.decode[pos]
        self.record(pos, Finished(item.video_id, item.path, None, {}, reason))

    def end(self, t0: float) -> ExtractResult:
        self.writer.finalize(self.input_rows)
        self.result.seconds = time.perf_counter() - t0
        return self.result


@dataclass(frozen=True)
class Selection:
    """Which listed inputs a run takes (ExtractConfig has the same three):
    this shard, failed ones again, at most ``limit``."""

    shard: tuple[int, int] | None = None
    retry_failed: bool = False
    limit: int | None = None


def begin_run(items: list[InputItem], writer: StoreWriter, cfg: ExtractConfig | Selection,
              input_errors: list[InputError], progress: Progress, dim: int) -> Run:
    """What is left to do: this shard of the inputs, less ids stored from
    another file (their errors), finished inputs (skipped) and inputs a killed
    run finished (taken from its partials); plans the shards and starts the
    progress stages. Both engines and `store import` call it, so they write
    the same store and count the same way."""
    result = ExtractResult(writer.root)
    if cfg.shard is not None:
        items = items[cfg.shard[0] :: cfg.shard[1]]
    conflicts = []  # an id already stored from another file: that input's error, never written into a shard
    for it in items:
        reason = writer.conflict(it.video_id, it.path)
        if reason is not None:
            conflicts.append((it, InputError(it.path, reason)))
    clash = {it.video_id for it, _ in conflicts}
    items = [it for it in items if it.video_id not in clash]
    input_rows = [e.to_row() for e in input_errors + [e for _, e in conflicts]]  # once: each row records when
    result.errors += input_rows
    todo = [it for it in items if not writer.is_done(it.video_id, cfg.retry_failed)]
    result.skipped = len(items) - len(todo)
    if not cfg.retry_failed:  # with it, no failed input is skipped
        result.skipped_failed = sum(writer.committed_status(it.video_id) == "failed" for it in items)
    if cfg.limit is not None:
        todo = todo[: cfg.limit]
    writer.plan([it.video_id for it in todo])
    progress.start("inputs", len(todo) + len(conflicts))
    progress.start("clips")
    for it, err in conflicts:
        result.failed += 1
        progress.advance(1, "inputs")
        progress.finished(it.path, "failed", err.reason)
    for it in todo:  # finished by an earlier, killed run
        if writer.has_partial(it.video_id):
            res = writer.results[it.video_id]
            _count(result, res, progress, it)
    writer.commit_ready()
    decode = [it for it in todo if not writer.has_partial(it.video_id)]
    return Run(writer, result, progress, decode, input_rows, dim)


def _count(result: ExtractResult, res: Finished, progress: Progress, item: InputItem) -> None:
    if res.error is not None:
        result.failed += 1
        result.errors.append({"level": "error", "video_id": res.video_id, "path": res.path, "reason": res.error,
                              "time": res.time})
        progress.advance(1, "inputs")
        progress.finished(item.path, "failed", res.error)
        return
    result.ok += 1
    for w in res.warnings:
        result.errors.append({"level": "warning", "video_id": res.video_id, "path": res.path, "reason": w})
    progress.advance(1, "inputs")
    progress.finished(item.path, "ok", "; ".join(res.warnings) or None)
