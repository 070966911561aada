"""The extraction config and the backbone names, without importing torch, so
``videolm --help`` (which lists them) starts fast. ``backbones.BACKBONES``
must hold exactly ``BACKBONE_NAMES`` (a test checks it)."""

from __future__ import annotations

from dataclasses import dataclass

from videolm.video.sampling import PRESETS

BACKBONE_NAMES = ("s3d", "r2plus1d_18", "mvit_v2_s", "x3d_xs", "x3d_s", "x3d_m", "slow_r50", "slowfast_r50",
                  "i3d_r50", "r2plus1d_r50", "mobilenet_v2", "resnet50")
# How a 2-D backbone turns a clip's frames into one vector: "mean" of the
# frames' vectors; "mean+diff": that mean beside the vector of the clip's
# last-minus-first frame difference (TSN's RGB-difference modality);
# "mean+flow": that mean beside the vector of the clip's normal-flow image
# (-I_t * dI/dx, -I_t * dI/dy and |I_t| from its first and last frames), which
# unlike the difference does not flip with the object's contrast against the
# background. Either second half makes the vector carry motion (direction,
# speed) as well as appearance (measured: docs/results.md).
TEMPORAL_MODES = ("mean", "mean+diff", "mean+flow")


@dataclass
class ExtractConfig:
    backbone: str = "s3d"
    weights: str = "none"  # "none" (random, seeded), a file, or an official weight name
    preset: str | None = None  # None: the backbone's own T x tau clip; or "videobert" / "cbt"
    window_s: float | None = None  # None values come from the preset / backbone
    stride_s: float | None = None
    frames: int | None = None
    short_side: int | None = None
    crop: int | None = None
    drop_short: bool = False
    batch_size: int = 8
    workers: int = 1  # DataLoader workers decoding while the backbone runs (0: decode in-process)
    decode_threads: int = 1  # decoder threads per worker
    worker_nice: int = 10  # raise the workers' nice value by this much: the backbone gets the CPU first
    device: str = "cpu"
    amp: bool = False  # float16 autocast on CUDA
    dtype: str = "float16"  # stored dtype: float16 or float32
    reader: str = "auto"  # auto (decord, PyAV fallback), decord, pyav
    limit: int | None = None  # at most this many inputs this run
    shard: tuple[int, int] | None = None  # (i, n): take inputs i, i+n, i+2n, ...
    videos_per_shard: int = 256
    retry_failed: bool = False
    check_output: bool = True  # stop at the first batch if the backbone's output is degenerate (zero / constant)
    seed: int = 0
    temporal: str = "mean"  # 2-D backbones: see TEMPORAL_MODES

    def __post_init__(self):
        """Each message names the setting as the command line spells it."""
        if self.backbone not in BACKBONE_NAMES:
            raise ValueError(f"unknown backbone {self.backbone!r}; valid: {', '.join(BACKBONE_NAMES)}")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"--dtype must be float16 or float32, got {self.dtype!r}")
        if self.temporal not in TEMPORAL_MODES:
            raise ValueError(f"--temporal must be one of {', '.join(TEMPORAL_MODES)}, got {self.temporal!r}")
        if self.reader not in ("auto", "decord", "pyav"):
            raise ValueError(f"--reader must be auto, decord or pyav, got {self.reader!r}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r} ({', '.join(PRESETS)})")
        for name, flag in (("window_s", "--window"), ("stride_s", "--stride")):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{flag} must be > 0 seconds, got {value}")
        for name, least in (("frames", 1), ("short_side", 1), ("crop", 1), ("batch_size", 1), ("decode_threads", 1),
                            ("videos_per_shard", 1), ("workers", 0), ("limit", 0)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise ValueError(f"--{name.replace('_', '-')} must be >= {least}, got {value}")
        if self.shard is not None and not 0 <= self.shard[0] < self.shard[1]:
            raise ValueError(f"--shard must be i/n with 0 <= i < n, got {self.shard[0]}/{self.shard[1]}")
