"""Training checkpoints: everything an exact resume needs, written atomically.

``RUN/checkpoints/step_00000100/``::

    model.pt         model state dict (torch.save of tensors only)
    optimizer.pt     AdamW state; scheduler and grad-scaler state
    rng.pt           torch CPU (and CUDA) generator state of every rank
    state.json       step, data position, LR schedule length, python/numpy RNG, the run's config

A checkpoint is written into a temporary directory that is renamed into place,
then ``checkpoints/latest`` is rewritten (temp + rename) to name it; a run
killed at any moment leaves the previous checkpoint intact. Everything loads
with ``torch.load(..., weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
from dataclasses import dataclass

import numpy as np
import torch

from videolm.errors import first_line
from videolm.fileio import atomic_directory, atomic_write_bytes, atomic_write_json, restore_moved_aside

log = logging.getLogger(__name__)

FORMAT = "videolm-checkpoint"


class CheckpointError(Exception):
    """A checkpoint directory that cannot be resumed; the message is one line."""


@dataclass
class TrainState:
    step: int                 # optimizer steps completed
    epoch: int                # epoch of the next step
    position: int             # first position of the next step's global batch in that epoch
    config: dict              # the run's config (as given, before sizes were filled from data)
    world_size: int
    schedule_steps: int = 0   # the LR schedule's length in force; 0 = the config's train.steps (older checkpoints)

    def __post_init__(self):
        if not self.schedule_steps:
            self.schedule_steps = int(self.config.get("train", {}).get("steps", 0))


def python_numpy_rng() -> dict:
    version, state, gauss = random.getstate()
    return {"python": [version, list(state), gauss], "numpy": _numpy_state()}


def _numpy_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def restore_python_numpy_rng(saved: dict) -> None:
    version, state, gauss = saved["python"]
    random.setstate((version, tuple(state), gauss))
    n = saved["numpy"]
    np.random.set_state((n["name"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))


def torch_rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_torch_rng(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def latest_checkpoint(run_dir: str) -> str | None:
    """The directory ``checkpoints/latest`` names, or None for a fresh run."""
    root = os.path.join(run_dir, "checkpoints")
    pointer = os.path.join(root, "latest")
    if not os.path.exists(pointer):
        return None
    with open(pointer) as f:
        name = f.read().strip()
    path = os.path.join(root, name)
    if not os.path.isdir(path):
        # killed while a rerun replaced this step's checkpoint (fileio.atomic_directory's swap)
        aside = restore_moved_aside(path)
        if aside is None:
            raise CheckpointError(f"{pointer}: names {name!r}, which is not a checkpoint directory")
        log.warning("%s: restored from %s (a run was stopped while replacing it)", path, aside)
    return path


def save_checkpoint(run_dir: str, model: torch.nn.Module, optimizer, scheduler, scaler, state: TrainState,
                    rng_per_rank: list[dict], keep: int) -> str:
    """Rank 0 only. Returns the checkpoint directory."""
    root = os.path.join(run_dir, "checkpoints")
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, checkpoint_name(state.step))
    with atomic_directory(final) as tmp:  # a rerun that reaches the same step again replaces it
        torch.save(model.state_dict(), os.path.join(tmp, "model.pt"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else {}}, os.path.join(tmp, "optimizer.pt"))
        torch.save({"ranks": rng_per_rank}, os.path.join(tmp, "rng.pt"))
        with open(os.path.join(tmp, "state.json"), "w") as f:
            json.dump({"format": FORMAT, "step": state.step, "epoch": state.epoch, "position": state.position,
                       "world_size": state.world_size, "schedule_steps": state.schedule_steps,
                       "config": state.config, "rng": python_numpy_rng()}, f)
    atomic_write_bytes(os.path.join(root, "latest"), checkpoint_name(state.step).encode())
    _prune(root, keep)
    return final


def _prune(root: str, keep: int) -> None:
    names = sorted(n for n in os.listdir(root) if n.startswith("step_") and ".tmp-" not in n and ".old-" not in n)
    for name in names[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    for name in os.listdir(root):  # temporaries of a killed run (never counted as kept checkpoints)
        if ".tmp-" in name or ".old-" in name:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


@dataclass
class Checkpoint:
    path: str
    state: TrainState
    model: dict
    optimizer: dict
    rng_ranks: list[dict]
    rng_python_numpy: dict


def load_checkpoint(path: str) -> Checkpoint:
    try:
        with open(os.path.join(path, "state.json")) as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not a videolm checkpoint (format {meta.get('format')!r})")
        model = torch.load(os.path.join(path, "model.pt"), map_location="cpu", weights_only=True)
        optim = torch.load(os.path.join(path, "optimizer.pt"), map_location="cpu", weights_only=True)
        rng = torch.load(os.path.join(path, "rng.pt"), map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: not a checkpoint directory (missing {os.path.basename(e.filename)})") from None
    except pickle.UnpicklingError as e:   # weights_only refused an object: nothing of it ran
        raise CheckpointError(f"{path}: refused to load: it holds objects other than tensors and plain "
                              f"containers (torch.load weights_only=True; {first_line(e)})") from None
    except (json.JSONDecodeError, RuntimeError, KeyError, EOFError, ValueError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {first_line(e)})") from None
    state = TrainState(meta["step"], meta["epoch"], meta["position"], meta["config"], meta["world_size"],
                       meta.get("schedule_steps", 0))
    return Checkpoint(path, state, model, optim, rng["ranks"], meta["rng"])


def write_resolved_config(run_dir: str, config: dict) -> None:
    atomic_write_json(os.path.join(run_dir, "config.json"), config)
