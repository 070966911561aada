"""Pre-training configuration: three dataclass sections read from YAML.

A YAML file holds only what differs from the defaults; ``key=value``
overrides on the command line go on top (``train.lr=3e-4``,
``data.sources.0.weight=2``). Values are parsed as YAML scalars, so
``train.amp=bf16`` is a string and ``train.steps=100`` an int. An unknown
key is an error naming the key and the file, with a suggestion::

    error: configs/cbt_tiny.yaml: unknown key 'train.lrr' (did you mean 'train.lr'?)
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field

import yaml

from videolm.data.config import DataConfig
from videolm.data.errors import DataError
from videolm.eval.errors import EvalError
from videolm.eval.validation_config import ValidationConfig
from videolm.model.config import ModelConfig
from videolm.model.errors import ModelError


class ConfigError(Exception):
    """A user mistake in a config file or override; the message is one line."""


@dataclass
class TrainConfig:
    out: str = "runs/pretrain"      # run directory: checkpoints/, model/, metrics.jsonl, loss.png
    steps: int = 10000              # optimizer steps
    batch_size: int = 32            # global batch per optimizer step (all ranks x accumulation)
    grad_accum: int = 1             # micro-batches per optimizer step on each rank
    lr: float = 1e-4                # peak learning rate
    weight_decay: float = 0.01      # AdamW decay; never on biases, LayerNorm or other 1-d parameters
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-6
    warmup_steps: int = 1000        # linear warmup (step s at lr * (s + 1) / warmup_steps), then cosine decay
    min_lr_ratio: float = 0.0       # the cosine ends at lr * min_lr_ratio
    schedule_steps: int = 0         # the cosine's length; 0 = train.steps (a resumed run keeps its saved length)
    clip_grad_norm: float = 1.0     # 0 switches clipping off
    amp: str = "none"               # none | bf16 | fp16 (fp16 only on CUDA)
    device: str = "auto"            # auto | cpu | cuda
    seed: int = 0
    num_workers: int = 0            # DataLoader worker processes per rank
    log_every: int = 10             # steps between metrics rows
    save_every: int = 500           # steps between checkpoints (and at the end)
    keep_checkpoints: int = 2       # newest checkpoints kept on disk
    max_steps_per_run: int = 0      # stop (with a checkpoint) after this many steps in this run; 0 = no limit

    def validate(self) -> None:
        if self.amp not in ("none", "bf16", "fp16"):
            raise ConfigError(f"train.amp must be none, bf16 or fp16, not {self.amp!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"train.device must be auto, cpu or cuda, not {self.device!r}")
        for name in ("steps", "batch_size", "grad_accum", "log_every", "save_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1, not {getattr(self, name)}")
        if self.schedule_steps < 0:
            raise ConfigError(f"train.schedule_steps must be >= 0 (0: train.steps), not {self.schedule_steps}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"train.betas must be two numbers in [0, 1), not {self.betas}")
        positive = {"eps": self.eps}
        at_least_zero = {"lr": self.lr, "weight_decay": self.weight_decay, "warmup_steps": self.warmup_steps,
                         "clip_grad_norm": self.clip_grad_norm, "num_workers": self.num_workers,
                         "max_steps_per_run": self.max_steps_per_run}
        for name, value in positive.items():   # checked before torch loads, not by AdamW after the data has
            if not (value > 0 and value != float("inf")):
                raise ConfigError(f"train.{name} must be a finite number > 0, not {value}")
        for name, value in at_least_zero.items():
            if not (value >= 0 and value != float("inf")):
                raise ConfigError(f"train.{name} must be >= 0"
                                  + (" (0 switches clipping off)" if name == "clip_grad_norm" else "")
                                  + f", not {value}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"train.min_lr_ratio must be in [0, 1], not {self.min_lr_ratio}")


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: ValidationConfig = field(default_factory=ValidationConfig)  # validation during training

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Keys that may change between a checkpoint and its resumption: they do not
# change what the run computes, only how long it runs, where it logs, or how
# fast data arrives. (train.steps does not stretch the LR schedule, which keeps
# its saved length; train.schedule_steps changes it, explicitly and announced.)
RESUMABLE_KEYS = {"train.steps", "train.schedule_steps", "train.log_every", "train.save_every", "train.keep_checkpoints",
                  "train.num_workers", "train.max_steps_per_run", "train.out", "train.device"}


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, v in enumerate(value):
                out.update(flatten(v, f"{name}.{i}."))
        else:
            out[name] = value
    return out


def config_differences(saved: dict, current: dict, ignore=RESUMABLE_KEYS) -> list[str]:
    """Keys (dotted) whose values differ between two config dicts."""
    a, b = flatten(saved), flatten(current)
    return sorted(k for k in set(a) | set(b) if k not in ignore and a.get(k) != b.get(k))


def _hints(cls) -> dict[str, object]:
    return typing.get_type_hints(cls)


def _suggest(key: str, choices) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Sources:
    """Where each value came from: the config file, or the ``key=value`` override that set it
    (or a section above it), so that a bad value is reported where the user wrote it."""

    def __init__(self, default: str, overrides: dict[str, str]):
        self.default, self.overrides = default, overrides

    def of(self, dotted: str) -> str:
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            item = self.overrides.get(".".join(parts[:n]))
            if item is not None:
                return f"override {item!r}"
        return self.default

    def of_message(self, message: str) -> str:
        """Where a check's message comes from: the first key it names that an
        override set ("model.hidden_size=32 is not divisible by
        model.num_heads=5" after model.num_heads=5 on the command line names
        that override), else the first key's own source."""
        keys = re.findall(r"\b(?:train|eval|data|model)\.[\w.]*\w", message)
        named = [self.of(key) for key in keys]
        return next((where for where in named if where != self.default), named[0] if named else self.default)


def _build(cls, data, where: str, source: _Sources):
    """A dataclass instance from a (partial) dict; unknown keys are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source.of(where)}: {where or 'the file'} must be a mapping, not {type(data).__name__}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in names:
            full = [f"{where}.{n}" if where else n for n in names]
            raise ConfigError(f"{source.of(dotted)}: unknown key {dotted!r}{_suggest(dotted, full)}")
        kwargs[key] = _coerce(hints[key], value, dotted, source)
    required = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs and
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if required:   # e.g. a data source without its kind or manifest
        dotted = f"{where}.{required[0]}" if where else required[0]
        raise ConfigError(f"{source.of(where) if where else source.default}: {dotted} is required")
    return cls(**kwargs)


def _coerce(tp, value, where: str, source: _Sources):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where, source)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, source)
    if origin is list:
        (item,) = typing.get_args(tp) or (object,)
        if not isinstance(value, list):
            raise ConfigError(f"{source.of(where)}: {where} must be a list, not {value!r}")
        return [_coerce(item, v, f"{where}.{i}", source) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source.of(where)}: {where} must be a mapping, not {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source.of(where)}: {where} must be true or false, not {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source.of(where)}: {where} must be an integer, not {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source.of(where)}: {where} must be a number, not {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{source.of(where)}: {where} must be a string, not {value!r}")
        return str(value)
    return value


def _check_key(cls, dotted: str, source: str) -> None:
    """An override must name a field (list items by index: data.sources.0.weight)."""
    tp, done = cls, []
    for part in dotted.split("."):
        origin = typing.get_origin(tp)
        if origin is list and part.isdigit():
            (tp,) = typing.get_args(tp)
        elif dataclasses.is_dataclass(tp) and part in {f.name for f in dataclasses.fields(tp)}:
            tp = _hints(tp)[part]
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
                tp = args[0]
        else:
            prefix = ".".join(done)
            names = ([f"{prefix}.{f.name}" if prefix else f.name for f in dataclasses.fields(tp)]
                     if dataclasses.is_dataclass(tp) else [])
            raise ConfigError(f"{source}: unknown key {dotted!r}{_suggest(dotted, names)}")
        done.append(part)


def _set_dotted(tree: dict, dotted: str, value, source: str) -> None:
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{source}: no list item {'.'.join(parts[:i + 1])!r}")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"{source}: {'.'.join(parts[:i + 1])!r} is not a section")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"{source}: no list item {dotted!r}")
        node[int(last)] = value
    else:
        node[last] = value


def load_config(path: str | None, overrides: list[str] = ()) -> PretrainConfig:
    """YAML file (may be None: all defaults) + ``key=value`` overrides."""
    tree: dict = {}
    if path is not None:
        try:
            with open(path) as f:
                tree = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{at}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    source = path or "defaults"
    if not isinstance(tree, dict):   # a bare scalar or a list at the top
        raise ConfigError(f"{source}: the file must be a mapping of sections (model, data, train, eval), "
                          f"not {type(tree).__name__}")
    overridden: dict[str, str] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        _check_key(PretrainConfig, key.strip(), f"override {item!r}")
        _set_dotted(tree, key.strip(), value, f"override {item!r}")
        overridden[key.strip()] = item
    sources = _Sources(source, overridden)
    cfg = _build(PretrainConfig, tree, "", sources)
    try:
        cfg.train.validate()
        cfg.eval.validate()
        if "sources" in (tree.get("data") or {}) and not cfg.data.sources:   # set, to nothing
            raise DataError("data.sources is empty; list at least one manifest (see docs/formats.md)")
        cfg.data.check_values()
        cfg.model.check_settings()
    except (ConfigError, EvalError, DataError, ModelError) as err:   # "train.steps must be ...": name where that key was set
        raise ConfigError(f"{sources.of_message(str(err))}: {err}") from None
    return cfg
