"""The embedded synthetic video-caption world: the demo's data, made from a seed.

A coloured shape moves across a background; captions, transcripts and a
table of attributes say what is shown. ``generate(out_dir, config)`` writes

```
OUT/videos/{split}_vNNNN.mp4     caption videos (libx264, yuv420p; 1.5 s, 30 frames at 20 fps by default)
OUT/images/{split}_iNNNN.png     stills of the same world
OUT/asr/train_aNNNN.mp4          longer videos of successive events, narrated
OUT/{train,val,test}_captions.jsonl   {"video_id", "captions": [...]}
OUT/{train,val,test}_images.jsonl     {"image_id", "captions": [...]}
OUT/train_asr.jsonl                   {"video_id", "segments": [{"start", "end", "text"}]}
OUT/attributes.jsonl             one row per item: id, split, kind, each attribute, the geometry
OUT/meta.json                    config, counts, held-out pairs, vocabularies, templates, version
```

Ids are the file names without extension, which is what ``videolm extract
OUT/videos OUT/images OUT/asr`` assigns; the prefixes v / i / a keep them
unique across the three folders.

**Held-out compositions.** The 8 colours x 8 shapes = 64 pairs are dealt
into 8 "diagonals": with the colours and shapes in a seeded order, pair
(c, s) is in diagonal (s - c) mod 8, so each diagonal holds every colour
once and every shape once. Four diagonals (32 pairs) are for training, two
for validation and two for test. Each split's pairs are thus disjoint from
the others', every colour and every shape appears in training, and in every
split each colour goes with several shapes and each shape with several
colours (shape never implies colour).

**Balance.** The other attributes of a video (direction 4, background 4,
speed 2, size 2: 64 combinations) are written as bits (a, b) = direction,
(c, d) = background, speed = a^c^e, size = b^d^f. A *block* (one value of
(e, f)) holds 16 combinations, one per (direction, background); each half of
a block (a^b^c^d = h) holds 8 in which every direction, background, speed
and size occurs equally often. Each (colour, shape) pair of a split is given
whole half-blocks in turn, round-robin over the pairs, so when a split's
count is a multiple of 8 x its pairs (4 x for stills: background x size),
every other attribute is exactly independent of the pair (hence of colour
and of shape), and when the half-blocks are used equally often (pairs x
half-blocks per pair a multiple of 8) the split holds each of the 64
combinations equally often: the other attributes are then independent of
each other as well. The default counts meet both; ``meta.json`` records
per split whether they do.

Same seed and config -> byte-identical files (with the same PyAV / libx264
build). A rerun skips the files already written (each is written to a
temporary name and renamed); a rerun into the same directory with another
config is refused.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import product
from multiprocessing import get_context
from typing import Callable

import numpy as np

from videolm.fileio import atomic_write_bytes, atomic_write_json, atomic_write_jsonl

log = logging.getLogger(__name__)

VERSION = 1  # bump when the same config would give different files

# ------------------------------------------------------------------ the world's vocabulary

# Every value is one WordPiece token of the uncased BERT vocabulary, and no
# word belongs to two attributes: a masked attribute word can be predicted
# from a restricted list of single tokens.
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "heart", "ring")
# (purple was confused with blue and pink by a linear probe on ImageNet MobileNetV2
# features; turquoise fills the empty hues between green and blue)
COLOURS = {  # RGB, saturated, so they stand out on the grey backgrounds
    "red": (230, 20, 20),
    "orange": (255, 130, 0),
    "yellow": (250, 230, 20),
    "green": (30, 170, 60),
    "turquoise": (40, 210, 200),
    "blue": (30, 60, 240),
    "pink": (255, 125, 200),
    "brown": (135, 80, 35),
}
DIRECTIONS = ("left", "right", "up", "down")
SPEEDS = ("slowly", "quickly")
SIZES = ("small", "large")
BACKGROUNDS = ("dark", "light", "striped", "dotted")

ATTRIBUTES = {
    "shape": SHAPES, "colour": tuple(COLOURS), "direction": DIRECTIONS,
    "speed": SPEEDS, "size": SIZES, "background": BACKGROUNDS,
}
IMAGE_ATTRIBUTES = ("shape", "colour", "size", "background")

RADIUS = {"small": 0.12, "large": 0.2}        # circumradius, fraction of the frame side
SPEED = {"slowly": 0.1, "quickly": 0.28}      # frame sides per second
STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # image axes: x right, y down
MARGIN = 1.0                                  # px kept between a caption video's shape and the frame edge
ASR_EXIT = 0.25  # an ASR event's shape centre stays >= this * radius inside the frame (it may leave partly)

GREY = {"dark": 35, "light": 200}
STRIPE_GREYS, DOT_GREYS = (55, 120), (95, 165)

SPLITS = ("train", "val", "test")
DIAGONALS = {"train": (0, 1, 2, 3), "val": (4, 5), "test": (6, 7)}

# caption templates; the first names every attribute (and is the zero-shot prompt)
# (an attribute word never follows "a": "an orange" would give the colour away when it is masked)
VIDEO_TEMPLATES = (
    "a {size} {colour} {shape} moves {direction} {speed} on a {background} background",
    "the {colour} {shape} slides {direction}",
    "a {size} {colour} {shape} is moving {direction}",
    "the {colour} {shape} goes {direction} {speed}",
    "on a {background} background the {colour} {shape} moves {speed}",
    "the {colour} {shape} heads {direction} on a {background} background",
)
IMAGE_TEMPLATES = (
    "a {size} {colour} {shape} on a {background} background",
    "a picture of the {colour} {shape}",
    "the {colour} {shape} on a {background} background",
    "a {size} {colour} {shape}",
)
VIDEO_CAPTIONS, IMAGE_CAPTIONS = 3, 2  # the full caption, then distinct others drawn at random
ASR_OPENERS = ("first", "then", "next", "now", "finally")  # first event, middle ones (drawn), last

# seeds of the random streams, so that no two draws ever share one
PAIRS_STREAM, DESIGN_STREAM, ORDER_STREAM, ITEM_STREAM, ASR_STREAM = 1, 2, 3, 4, 5
KIND_CODE = {"video": 0, "image": 1, "asr": 2}


class DatasetError(Exception):
    """A config or output directory that cannot be used; the message is one line naming it."""


# ------------------------------------------------------------------ config


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. Counts are items per split; exact balance needs video
    counts that are multiples of 8 x the split's pairs (32 train, 16 val, 16
    test) and still counts multiples of 4 x them (see the module docstring)."""

    seed: int = 0
    train_videos: int = 512
    val_videos: int = 128
    test_videos: int = 256
    train_images: int = 256
    val_images: int = 64
    test_images: int = 128
    asr_videos: int = 64                 # training only
    asr_events: int = 4                  # events per ASR video
    asr_event_seconds: tuple[float, ...] = (1.5, 2.0, 2.5, 3.0)  # each event's length is drawn from these
    frame_size: int = 112                # square frames, even (yuv420p)
    frames: int = 30                     # per caption video
    fps: int = 20
    crf: int = 18                        # libx264 quality (lower: closer to the rendered pixels)

    def __post_init__(self):
        counts = {k: v for k, v in asdict(self).items() if k.endswith(("_videos", "_images"))}
        for key, value in counts.items():
            if not isinstance(value, int) or value < 0:
                raise DatasetError(f"SyntheticConfig.{key} must be a non-negative integer, not {value!r}")
        if self.train_videos + self.train_images < 1:
            raise DatasetError("SyntheticConfig: the train split needs at least one video or still")
        if not isinstance(self.frame_size, int) or self.frame_size < 16 or self.frame_size % 2:
            raise DatasetError(f"SyntheticConfig.frame_size must be an even integer >= 16, not {self.frame_size!r}")
        if self.frames < 2 or self.fps < 1:
            raise DatasetError(f"SyntheticConfig: need frames >= 2 and fps >= 1 (got {self.frames}, {self.fps})")
        if self.asr_videos and (self.asr_events < 1 or not self.asr_event_seconds
                                or min(self.asr_event_seconds) * self.fps < 2):
            raise DatasetError("SyntheticConfig: ASR events need asr_events >= 1 and lengths of >= 2 frames")
        side = self.frame_size
        room = side - 2 * (RADIUS["large"] * side + MARGIN)
        travel = SPEED["quickly"] * side / self.fps * (self.frames - 1)
        if travel > room:
            raise DatasetError(f"SyntheticConfig: a fast shape leaves the frame in {self.frames} frames at "
                               f"{self.fps} fps; use fewer frames or a higher fps")
        longest = max(self.asr_event_seconds, default=0.0)
        if self.asr_videos and SPEED["quickly"] * longest > 1 - 2 * ASR_EXIT * RADIUS["large"]:
            raise DatasetError(f"SyntheticConfig: ASR events of {longest} s are too long for a fast shape to "
                               f"stay in the frame")

    def to_dict(self) -> dict:
        """As JSON stores it (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))


TINY = SyntheticConfig(train_videos=16, val_videos=8, test_videos=8, train_images=8, val_images=4, test_images=4,
                       asr_videos=2, asr_events=3, asr_event_seconds=(1.0, 1.5), frame_size=32, frames=8, fps=8)
PRESETS = {"default": SyntheticConfig(), "tiny": TINY}


# ------------------------------------------------------------------ the plan


@dataclass
class Event:
    """What one video (or one part of an ASR video, or one still) shows. Geometry in
    pixels, origin top-left, x right, y down: the shape's centre is at (x, y) on the
    event's first frame and moves by (vx, vy) per frame; every point of it lies
    within ``radius`` of the centre."""

    shape: str
    colour: str
    size: str
    background: str
    direction: str | None   # None for a still
    speed: str | None
    frames: int
    x: float
    y: float
    vx: float
    vy: float
    radius: float
    phase: int              # offset of the background's stripes or dots, px

    def words(self) -> dict[str, str]:
        names = ATTRIBUTES if self.direction is not None else IMAGE_ATTRIBUTES
        return {name: getattr(self, name) for name in names}


@dataclass
class Item:
    id: str
    split: str
    kind: str                # "video" | "image" | "asr"
    events: list[Event]      # one, or the ASR video's parts in order
    texts: list[str]         # captions, or one transcript segment per event

    @property
    def path(self) -> str:
        """Relative to the output directory."""
        folder, ext = {"video": ("videos", ".mp4"), "image": ("images", ".png"), "asr": ("asr", ".mp4")}[self.kind]
        return f"{folder}/{self.id}{ext}"


@dataclass
class Plan:
    config: SyntheticConfig
    pairs: dict[str, list[tuple[str, str]]]   # split -> its (colour, shape) pairs
    balanced: dict[str, bool]                  # "train_videos" etc. -> whether the count gives exact balance
    items: list[Item]

    def count(self, split: str, kind: str) -> int:
        return sum(1 for item in self.items if item.split == split and item.kind == kind)

    def counts(self) -> dict[str, int]:
        return {f"{split}_{kind}": self.count(split, kind) for split in SPLITS for kind in ("video", "image", "asr")}


def split_pairs(seed: int) -> dict[str, list[tuple[str, str]]]:
    """Each split's (colour, shape) pairs, diagonal by diagonal (shuffled within
    one), so that the first 8 pairs of any split hold every colour and shape once."""
    rng = np.random.default_rng([PAIRS_STREAM, seed])
    colour_pos = rng.permutation(len(COLOURS))  # colour i sits at position colour_pos[i]
    shape_pos = rng.permutation(len(SHAPES))
    diagonals = {d: [] for d in range(len(SHAPES))}
    for (ci, colour), (si, shape) in product(enumerate(COLOURS), enumerate(SHAPES)):
        diagonals[int(shape_pos[si] - colour_pos[ci]) % len(SHAPES)].append((colour, shape))
    out = {}
    for split in SPLITS:
        out[split] = []
        for d in DIAGONALS[split]:
            out[split] += [diagonals[d][i] for i in rng.permutation(len(diagonals[d]))]
    return out


def video_half_blocks() -> list[list[dict]]:
    """The 64 (direction, background, speed, size) combinations as 8 half-blocks
    of 8; in each, every value of every attribute occurs equally often."""
    halves = []
    for e, f in product((0, 1), repeat=2):      # the block
        for h in (0, 1):                        # its half
            halves.append([{"direction": DIRECTIONS[2 * a + b], "background": BACKGROUNDS[2 * c + d],
                            "speed": SPEEDS[a ^ c ^ e], "size": SIZES[b ^ d ^ f]}
                           for a, b, c, d in product((0, 1), repeat=4) if a ^ b ^ c ^ d == h])
    return halves


def image_half_blocks() -> list[list[dict]]:
    """The 8 (background, size) combinations of a still as 2 halves of 4, each
    holding every background once and each size twice."""
    return [[{"background": BACKGROUNDS[2 * c + d], "size": SIZES[c ^ d ^ h]} for c, d in product((0, 1), repeat=2)]
            for h in (0, 1)]


def design(pairs: list[tuple[str, str]], count: int, halves: list[list[dict]], rng) -> tuple[list[dict], bool]:
    """``count`` attribute sets over ``pairs``: item k goes to pair k mod P, and each
    pair walks through whole half-blocks (pair q's t-th is (q * u + t) mod H, u
    the half-blocks a pair needs), so equal shares of whole half-blocks make the
    other attributes independent of the pair. Returns (rows, exact balance)."""
    n_pairs, n_halves, per_half = len(pairs), len(halves), len(halves[0])
    if count == 0:
        return [], True
    per_pair = math.ceil(count / n_pairs)
    u = max(1, math.ceil(per_pair / per_half))
    orders = {}  # (pair, half) -> its combinations in a drawn order (matters only for a partial half)
    rows = []
    for k in range(count):
        q, j = k % n_pairs, k // n_pairs
        g = (q * u + j // per_half) % n_halves
        if (q, g) not in orders:
            orders[q, g] = rng.permutation(per_half)
        colour, shape = pairs[q]
        rows.append({"colour": colour, "shape": shape, **halves[g][orders[q, g][j % per_half]]})
    exact = count % (n_pairs * per_half) == 0 and (n_pairs * (count // (n_pairs * per_half))) % n_halves == 0
    return rows, exact


def _place(rng, side: int, radius: float, travel: float, step: tuple[int, int], lo: float) -> tuple[float, float]:
    """A start centre such that the whole path stays within [lo, side - lo] along
    the motion and within [radius + MARGIN, side - radius - MARGIN] across it."""
    along = rng.uniform(lo, side - lo - travel)
    across = rng.uniform(radius + MARGIN, side - radius - MARGIN)
    if step[0]:
        return (along + travel if step[0] < 0 else along), across
    return across, (along + travel if step[1] < 0 else along)


def make_event(attrs: dict, frames: int, config: SyntheticConfig, rng, inside: bool = True) -> Event:
    side = config.frame_size
    radius = RADIUS[attrs["size"]] * side
    direction, speed = attrs.get("direction"), attrs.get("speed")
    if direction is None:  # a still
        x, y = (rng.uniform(radius + MARGIN, side - radius - MARGIN) for _ in range(2))
        vx = vy = 0.0
    else:
        step = STEP[direction]
        per_frame = SPEED[speed] * side / config.fps
        lo = radius + MARGIN if inside else ASR_EXIT * radius
        x, y = _place(rng, side, radius, per_frame * (frames - 1), step, lo)
        vx, vy = step[0] * per_frame, step[1] * per_frame
    phase = int(rng.integers(0, side))
    return Event(shape=attrs["shape"], colour=attrs["colour"], size=attrs["size"], background=attrs["background"],
                 direction=direction, speed=speed, frames=frames, x=float(x), y=float(y), vx=float(vx), vy=float(vy),
                 radius=float(radius), phase=phase)


def captions(words: dict, templates: tuple[str, ...], n: int, rng) -> list[str]:
    others = 1 + rng.permutation(len(templates) - 1)[: n - 1]
    return [templates[0].format(**words)] + [templates[i].format(**words) for i in others]


def _no_repeat(events: list[dict], per_video: int) -> list[dict]:
    """Reorder so that successive events of one ASR video show different
    (colour, shape) pairs: a repeat is swapped with the next later event that
    differs (later positions are checked in turn, so a swap cannot leave one)."""
    events = list(events)
    pair = lambda e: (e["colour"], e["shape"])  # noqa: E731
    for i in range(1, len(events)):
        if i % per_video == 0 or pair(events[i]) != pair(events[i - 1]):
            continue
        j = next((j for j in range(i + 1, len(events)) if pair(events[j]) != pair(events[i - 1])), None)
        if j is not None:
            events[i], events[j] = events[j], events[i]
    return events


def make_plan(config: SyntheticConfig | None = None) -> Plan:
    """Every item, its attributes, geometry and texts; nothing is rendered."""
    config = config or SyntheticConfig()
    seed = config.seed
    pairs = split_pairs(seed)
    items, balanced = [], {}
    specs = [(split, kind) for split in SPLITS for kind in ("video", "image")]
    for split, kind in specs:
        count = getattr(config, f"{split}_{kind}s")
        halves = video_half_blocks() if kind == "video" else image_half_blocks()
        rows, exact = design(pairs[split], count, halves,
                             np.random.default_rng([DESIGN_STREAM, seed, SPLITS.index(split), KIND_CODE[kind]]))
        balanced[f"{split}_{kind}s"] = exact
        order = np.random.default_rng([ORDER_STREAM, seed, SPLITS.index(split), KIND_CODE[kind]]).permutation(count)
        letter = kind[0]
        for n, k in enumerate(order):
            rng = np.random.default_rng([ITEM_STREAM, seed, SPLITS.index(split), KIND_CODE[kind], n])
            event = make_event(rows[k], config.frames if kind == "video" else 1, config, rng)
            templates, how_many = (VIDEO_TEMPLATES, VIDEO_CAPTIONS) if kind == "video" else (IMAGE_TEMPLATES,
                                                                                              IMAGE_CAPTIONS)
            items.append(Item(f"{split}_{letter}{n:04d}", split, kind, [event],
                              captions(event.words(), templates, how_many, rng)))
    # ASR: training pairs only, balanced over all the events like the caption videos
    total = config.asr_videos * config.asr_events
    rows, exact = design(pairs["train"], total, video_half_blocks(), np.random.default_rng([ASR_STREAM, seed, 0]))
    balanced["asr_events"] = exact
    rng = np.random.default_rng([ASR_STREAM, seed, 1])
    rows = _no_repeat([rows[k] for k in rng.permutation(total)], config.asr_events)
    lengths = np.asarray(config.asr_event_seconds, dtype=np.float64)
    for n in range(config.asr_videos):
        rng = np.random.default_rng([ITEM_STREAM, seed, 0, KIND_CODE["asr"], n])
        events, texts = [], []
        for e in range(config.asr_events):
            frames = int(round(float(rng.choice(lengths)) * config.fps))
            event = make_event(rows[n * config.asr_events + e], frames, config, rng, inside=False)
            if e == 0:
                opener = ASR_OPENERS[0]
            elif e == config.asr_events - 1:
                opener = ASR_OPENERS[-1]
            else:
                opener = ASR_OPENERS[1 + int(rng.integers(0, len(ASR_OPENERS) - 2))]
            body = VIDEO_TEMPLATES[int(rng.integers(0, len(VIDEO_TEMPLATES)))].format(**event.words())
            events.append(event)
            texts.append(f"{opener} {body}")
        items.append(Item(f"train_a{n:04d}", "train", "asr", events, texts))
    return Plan(config, pairs, balanced, items)


# ------------------------------------------------------------------ rendering

SUPERSAMPLE = 4  # sub-pixels per pixel side when drawing a shape (anti-aliased edges, smooth sub-pixel motion)


def _unit_outlines() -> dict[str, np.ndarray]:
    """Polygon outlines, circumradius <= 1, centred on the origin, y down."""
    def ring_of(radii, count, start=-math.pi / 2):
        angles = start + 2 * math.pi * np.arange(count) / count
        return np.stack([np.cos(angles), np.sin(angles)], 1) * np.resize(radii, count)[:, None]

    t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    heart = np.stack([16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))], 1)
    heart -= (heart.max(0) + heart.min(0)) / 2
    heart /= np.linalg.norm(heart, axis=1).max()
    w, arm = 0.32, math.sqrt(1 - 0.32 ** 2)
    cross = np.array([(-w, -arm), (w, -arm), (w, -w), (arm, -w), (arm, w), (w, w), (w, arm), (-w, arm),
                      (-w, w), (-arm, w), (-arm, -w), (-w, -w)])
    return {
        "square": np.array([(-0.7, -0.7), (0.7, -0.7), (0.7, 0.7), (-0.7, 0.7)]),
        "triangle": ring_of([1.0], 3),
        "star": ring_of([1.0, 0.45], 10),
        "diamond": np.array([(0, -1.0), (0.7, 0), (0, 1.0), (-0.7, 0)]),
        "cross": cross,
        "heart": heart,
    }


OUTLINES = _unit_outlines()
DISCS = {"circle": (0.92, 0.0), "ring": (0.95, 0.55)}  # (outer, inner) radius


def shape_alpha(shape: str, cx: float, cy: float, radius: float, side: int) -> tuple[int, int, np.ndarray]:
    """Coverage (0..1) of the shape over its bounding box: (x0, y0, alpha (h, w) float32)."""
    from PIL import Image, ImageDraw

    x0, y0 = max(0, math.floor(cx - radius) - 1), max(0, math.floor(cy - radius) - 1)
    x1, y1 = min(side, math.ceil(cx + radius) + 1), min(side, math.ceil(cy + radius) + 1)
    if x1 <= x0 or y1 <= y0:
        return 0, 0, np.zeros((0, 0), np.float32)
    s = SUPERSAMPLE
    canvas = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    draw = ImageDraw.Draw(canvas)
    ox, oy = (cx - x0) * s, (cy - y0) * s  # the centre on the canvas
    if shape in DISCS:
        outer, inner = DISCS[shape]
        r = outer * radius * s
        draw.ellipse([ox - r, oy - r, ox + r, oy + r], fill=255)
        if inner:
            r = inner * radius * s
            draw.ellipse([ox - r, oy - r, ox + r, oy + r], fill=0)
    else:
        points = OUTLINES[shape] * radius * s + (ox, oy)
        draw.polygon([tuple(p) for p in points.tolist()], fill=255)
    coverage = canvas.reduce(s)  # the mean of each pixel's s x s sub-pixels
    return x0, y0, np.asarray(coverage, dtype=np.float32) / 255.0


def background(kind: str, phase: int, side: int) -> np.ndarray:
    """(side, side, 3) uint8 greys: plain dark / light, diagonal stripes, a grid of dots."""
    if kind in GREY:
        return np.full((side, side, 3), GREY[kind], np.uint8)
    yy, xx = np.mgrid[0:side, 0:side]
    if kind == "striped":
        period = max(2, side // 10)
        value = np.where(((xx + yy + phase) // period) % 2 == 0, *STRIPE_GREYS)
    else:  # dotted
        spacing, r = max(4, side // 7), max(1.0, side / 40)
        dx = (xx + 0.5 + phase) % spacing - spacing / 2
        dy = (yy + 0.5 + phase * 3) % spacing - spacing / 2
        value = np.where(dx * dx + dy * dy <= r * r, DOT_GREYS[1], DOT_GREYS[0])
    return np.repeat(value.astype(np.uint8)[..., None], 3, axis=2)


def render_event(event: Event, side: int) -> np.ndarray:
    """The event's frames, (T, side, side, 3) uint8 RGB."""
    base = background(event.background, event.phase, side)
    colour = np.asarray(COLOURS[event.colour], np.float32)
    out = np.empty((event.frames, side, side, 3), np.uint8)
    out[:] = base
    for t in range(event.frames):
        x0, y0, alpha = shape_alpha(event.shape, event.x + event.vx * t, event.y + event.vy * t, event.radius, side)
        h, w = alpha.shape
        under = base[y0:y0 + h, x0:x0 + w].astype(np.float32)  # only the shape's box changes
        out[t, y0:y0 + h, x0:x0 + w] = np.rint(under + alpha[..., None] * (colour - under))
    return out


def _yuv_frame(rgb: np.ndarray, pts: int):
    """A yuv420p frame of ``rgb`` whose row padding is zeroed: libx264 reads the
    chroma planes' padding (56-pixel rows in 64-byte lines at 112 px), and
    PyAV leaves it uninitialised, which made the same frames encode to
    different bytes from one call to the next."""
    import av

    yuv = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()
    height, width = rgb.shape[:2]
    planes = (yuv[:height], yuv[height:height * 5 // 4].reshape(height // 2, width // 2),
              yuv[height * 5 // 4:].reshape(height // 2, width // 2))
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane, data in zip(frame.planes, planes):
        lines = np.zeros((data.shape[0], plane.line_size), np.uint8)
        lines[:, :data.shape[1]] = data
        plane.update(lines)
    frame.pts = pts
    return frame


def encode_mp4(frames: np.ndarray, fps: int, crf: int) -> bytes:
    """H.264 (libx264, yuv420p, one thread) in an mp4, in memory. The same
    frames give the same bytes in any process: zeroed frame padding, one
    thread, no macroblock tree (with either left as it was, about 1 file in 12
    came out different from one run to the next)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # mbtree off: x264's macroblock-tree pass let uninitialised memory change the bytes
        stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}
        stream.codec_context.thread_count = 1
        for t, frame in enumerate(frames):
            for packet in stream.encode(_yuv_frame(frame, t)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def encode_png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def render_item(item: Item, config: SyntheticConfig) -> bytes:
    """The file's bytes: an mp4 for a video or ASR video, a PNG for a still."""
    frames = np.concatenate([render_event(e, config.frame_size) for e in item.events])
    if item.kind == "image":
        return encode_png(frames[0])
    return encode_mp4(frames, config.fps, config.crf)


def _write_item(args: tuple[str, Item, SyntheticConfig]) -> str:
    path, item, config = args
    atomic_write_bytes(path, render_item(item, config))
    return item.id


# ------------------------------------------------------------------ rows and files


def event_row(event: Event, start: float | None = None, fps: int | None = None) -> dict:
    row = dict(event.words())
    if event.direction is not None:
        row.update(frames=event.frames, vx=round(event.vx, 6), vy=round(event.vy, 6))
    row.update(x=round(event.x, 6), y=round(event.y, 6), radius=round(event.radius, 6))
    if start is not None:
        row.update(start=round(start, 6), end=round(start + event.frames / fps, 6))
    return row


def attribute_row(item: Item, fps: int) -> dict:
    key = "image_id" if item.kind == "image" else "video_id"
    row = {"id": item.id, key: item.id, "split": item.split, "kind": item.kind, "path": item.path}
    if item.kind != "asr":
        return {**row, **event_row(item.events[0])}
    starts = np.cumsum([0] + [e.frames for e in item.events])[:-1] / fps
    return {**row, "frames": int(sum(e.frames for e in item.events)),
            "events": [event_row(e, float(s), fps) for e, s in zip(item.events, starts)]}


def manifest_rows(plan: Plan) -> dict[str, list[dict]]:
    """File name -> rows, in the formats of docs/formats.md ("Corpus manifests")."""
    fps = plan.config.fps
    out = {f"{split}_{what}.jsonl": [] for split in SPLITS for what in ("captions", "images")}
    out["train_asr.jsonl"] = []
    for item in plan.items:
        if item.kind == "video":
            out[f"{item.split}_captions.jsonl"].append({"video_id": item.id, "captions": item.texts})
        elif item.kind == "image":
            out[f"{item.split}_images.jsonl"].append({"image_id": item.id, "captions": item.texts})
        else:
            starts = np.cumsum([0] + [e.frames for e in item.events]) / fps
            out["train_asr.jsonl"].append({"video_id": item.id, "segments": [
                {"start": round(float(starts[i]), 6), "end": round(float(starts[i + 1]), 6), "text": text}
                for i, text in enumerate(item.texts)]})
    return out


def meta(plan: Plan) -> dict:
    return {
        "generator": "videolm.datasets.synthetic",
        "version": VERSION,
        "seed": plan.config.seed,
        "config": plan.config.to_dict(),
        "counts": plan.counts(),
        "balanced": plan.balanced,
        "pairs": {split: [list(p) for p in pairs] for split, pairs in plan.pairs.items()},
        "attributes": {name: list(values) for name, values in ATTRIBUTES.items()},
        "image_attributes": list(IMAGE_ATTRIBUTES),
        "colours_rgb": {name: list(rgb) for name, rgb in COLOURS.items()},
        "templates": {"video": list(VIDEO_TEMPLATES), "image": list(IMAGE_TEMPLATES),
                      "asr_openers": list(ASR_OPENERS)},
        "zeroshot_templates": {"video": VIDEO_TEMPLATES[0], "image": IMAGE_TEMPLATES[0]},
        "geometry": {"radius": RADIUS, "speed_sides_per_second": SPEED, "clip_seconds": plan.config.frames /
                     plan.config.fps},
    }


@dataclass
class GeneratedSet:
    root: str
    videos: str                  # folder of caption videos
    images: str                  # folder of stills
    asr: str                     # folder of ASR videos
    manifests: dict[str, str]    # "train_captions", "test_images", "train_asr", ... -> path
    attributes: str
    meta: str
    counts: dict[str, int]       # "train_video", "test_image", "train_asr", ... -> items
    written: int                 # files made by this call
    skipped: int                 # files found finished
    seconds: float
    pairs: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    @property
    def media_dirs(self) -> list[str]:
        """The folders to extract features from (`videolm extract` inputs)."""
        return [self.videos, self.images, self.asr]


def _check_directory(out_dir: str, config: SyntheticConfig) -> None:
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.isfile(meta_path):
        try:
            with open(meta_path, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise DatasetError(f"{meta_path}: unreadable ({err}); remove the directory to regenerate") from None
        if old.get("generator") != "videolm.datasets.synthetic":
            raise DatasetError(f"{meta_path}: not a synthetic set's meta.json; use another directory")
        new = config.to_dict()
        differ = [k for k in new if old.get("config", {}).get(k) != new[k]]
        if differ or old.get("version") != VERSION:
            what = ", ".join(f"{k} {old.get('config', {}).get(k)!r} -> {new[k]!r}" for k in differ[:3])
            what = what or f"generator version {old.get('version')} -> {VERSION}"
            raise DatasetError(f"{out_dir}: holds a synthetic set made with another config ({what}); "
                               f"use another directory or remove this one")
    elif os.path.isdir(out_dir) and os.listdir(out_dir):
        raise DatasetError(f"{out_dir}: not empty and not a synthetic set (no meta.json); use an empty directory")


def _remove_stale_temporaries(folder: str) -> None:
    """Temporaries left by a killed run (``NAME.tmp-PID``) whose process is gone."""
    for name in os.listdir(folder):
        stem, sep, pid = name.rpartition(".tmp-")
        if not sep or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            os.remove(os.path.join(folder, name))
        except PermissionError:
            pass  # a live process of another user


def generate(out_dir: str, config: SyntheticConfig | None = None,
             progress: Callable[[int, int], None] | None = None, workers: int = 1) -> GeneratedSet:
    """Write the set into ``out_dir`` (see the module docstring). ``progress(done, total)``
    is called after each file; ``workers`` > 1 renders in that many processes
    (the files are the same)."""
    config = config or SyntheticConfig()
    started = time.perf_counter()
    _check_directory(out_dir, config)
    plan = make_plan(config)
    folders = {kind: os.path.join(out_dir, name) for kind, name in (("video", "videos"), ("image", "images"),
                                                                     ("asr", "asr"))}
    for folder in folders.values():
        os.makedirs(folder, exist_ok=True)
        _remove_stale_temporaries(folder)
    atomic_write_json(os.path.join(out_dir, "meta.json"), meta(plan))

    todo = [(os.path.join(out_dir, item.path), item, config) for item in plan.items]
    todo = [job for job in todo if not os.path.isfile(job[0])]
    total, skipped = len(plan.items), len(plan.items) - len(todo)
    log.info("%s: %d files to write, %d already there", out_dir, len(todo), skipped)
    done = skipped
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for _ in pool.map(_write_item, todo, chunksize=8):
                done += 1
                if progress:
                    progress(done, total)
    else:
        for job in todo:
            _write_item(job)
            done += 1
            if progress:
                progress(done, total)

    manifests = {}
    for name, rows in manifest_rows(plan).items():
        path = os.path.join(out_dir, name)
        atomic_write_jsonl(path, rows)
        manifests[name[: -len(".jsonl")]] = path
    attributes = os.path.join(out_dir, "attributes.jsonl")
    atomic_write_jsonl(attributes, [attribute_row(item, config.fps) for item in plan.items])
    seconds = time.perf_counter() - started
    log.info("%s: synthetic set ready (%d written, %d skipped) in %.1f s", out_dir, len(todo), skipped, seconds)
    return GeneratedSet(out_dir, folders["video"], folders["image"], folders["asr"], manifests, attributes,
                        os.path.join(out_dir, "meta.json"), plan.counts(), len(todo), skipped, seconds, plan.pairs)


# ------------------------------------------------------------------ command line


def main(argv: list[str] | None = None) -> int:
    """``python -m videolm.datasets OUT [--preset tiny] [--seed N] [--workers N]``"""
    import argparse
    import dataclasses
    import sys

    parser = argparse.ArgumentParser(prog="python -m videolm.datasets",
                                     description="Write the synthetic video-caption demo set.")
    parser.add_argument("out", help="output directory (new, empty, or an earlier run with the same settings)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--seed", type=int, default=None, help="overrides the preset's seed (0)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes that render and encode (default: 2, or 1 on one core)")
    args = parser.parse_args(argv)
    config = PRESETS[args.preset]
    try:
        if args.seed is not None:
            config = dataclasses.replace(config, seed=args.seed)
        result = generate(args.out, config, workers=max(1, args.workers))
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items() if v)
    print(f"{result.root}: {counts} ({result.written} written, {result.skipped} skipped, {result.seconds:.1f} s)")
    return 0

