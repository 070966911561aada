"""The pre-training loop: one function, read top to bottom.

Same code for one process and for ``torchrun --nproc-per-node N`` (DDP;
gloo on CPU, NCCL on CUDA). Only rank 0 writes files. A rerun of the same
command resumes from ``RUN/checkpoints/latest`` and computes exactly the
steps an uninterrupted run would have computed: the data position is the
step (see ResumableDistributedSampler), per-example randomness is seeded by
``(seed, epoch, position)``, the model's negative sampling by
``(seed, step, accumulation index)``, and dropout's RNG state is checkpointed.

Under torchrun the contrastive candidates come from every rank
(videolm.model.gather): N ranks compute the optimizer step one process with
the same ``grad_accum`` computes over the whole batch. Accumulation is not
gathered: each of its micro-batch groups is a batch of its own for the
negatives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from videolm.data.batch import Batch
from videolm.data.corpus import build_pretrain_dataset
from videolm.eval.validation import Validator
from videolm.fileio import atomic_write_jsonl
from videolm.model.config import ModelConfig
from videolm.model.errors import ModelError
from videolm.model.gather import RankGroup
from videolm.model import io
from videolm.model.io import InputSettings
from videolm.model.pretraining import VideoLMForPretraining
from videolm.text.tokenizer import load_tokenizer
from videolm.train import distributed as D
from videolm.train.checkpoint import (CheckpointError, TrainState, latest_checkpoint, load_checkpoint,
                                      restore_python_numpy_rng, restore_torch_rng, save_checkpoint,
                                      torch_rng_state, write_resolved_config)
from videolm.train.config import PretrainConfig, config_differences
from videolm.train.metrics import MetricsLog, plot_losses
from videolm.train.optim import build_optimizer, build_scheduler, warmup_cosine

log = logging.getLogger(__name__)

OBJECTIVES = {"mlm": "mlm_weight", "visual": "visual_weight", "align": "align_weight",
              "contrastive": "contrastive_weight"}

# progress(step, total_steps, row): called on rank 0 after every step
Progress = Callable[[int, int, dict], None]


@dataclass
class PretrainResult:
    run_dir: str
    step: int                     # optimizer steps completed
    resumed_from: int | None      # step of the checkpoint resumed, None for a fresh run
    model_dir: str | None         # the final model (save_pretrained), None if the run stopped early
    metrics: str
    loss_png: str | None
    last: dict                    # last logged row


def pick_device(name: str, env: D.DistEnv) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ModelError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda", env.local_rank)
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def complete_model_config(cfg: ModelConfig, tokenizer, dataset) -> ModelConfig:
    """Sizes that come from the data: text vocabulary and special ids from the
    tokenizer, visual vocabulary (VideoBERT) or feature dim (CBT) from the
    store. A value set in the config that disagrees is an error."""
    text = {"text_vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
            "cls_token_id": tokenizer.cls_token_id, "sep_token_id": tokenizer.sep_token_id,
            "mask_token_id": tokenizer.mask_token_id}
    if cfg.mode == "videobert":
        vocab = dataset.vocab
        visual = {"visual_vocab_size": vocab.vocab_size, "visual_pad_id": vocab.pad_id,
                  "visual_mask_id": vocab.mask_id}
        checked = {"visual_vocab_size"}
    else:
        visual = {"feature_dim": dataset.feature_dim}
        checked = {"feature_dim"}
    default = ModelConfig()
    for key in checked:
        given = getattr(cfg, key)
        if given not in (0, getattr(default, key)) and given != visual[key]:
            raise ModelError(f"model.{key}={given} but the data gives {visual[key]} "
                             f"(store {dataset.describe()['store']}); remove the key or use matching data")
    return dataclasses.replace(cfg, **text, **visual)


def input_settings(data_cfg, dataset) -> InputSettings:
    """What preprocessor_config.json records: how this run built its inputs."""
    store = dataset._store(dataset.sources[0].store)
    meta = {k: store.meta.get(k) for k in ("backbone", "weights", "clip_spec", "dim", "dtype", "temporal")}
    return InputSettings(max_text_len=data_cfg.max_text_len, max_visual_len=data_cfg.max_visual_len,
                         train_clip_sampling=data_cfg.clip_sampling, align_min_overlap=data_cfg.align_min_overlap,
                         feature_store=meta)


def init_source(model: ModelConfig, ckpt) -> ModelConfig | None:
    """model.init_from: the saved model's config, read from its directory; a
    resumed run takes it from its checkpoint (``_init``) and never reads the
    directory again (its weights are in the checkpoint)."""
    if not model.init_from:
        return None
    recorded = ckpt.state.config.get("_init") if ckpt is not None else None
    if recorded:
        return ModelConfig.from_dict(recorded["config"], source=f"{ckpt.path}/state.json")
    return io.read_config(model.init_from)


def load_init_from(model: VideoLMForPretraining, directory: str, data_cfg, dataset) -> None:
    """Every weight of a saved model (safetensors: nothing is unpickled), after
    checking that this run's data is the data it was built for: in VideoBERT
    mode the same visual vocabulary (fingerprint of its vocab/), and features
    from the same backbone and weights."""
    from videolm.tokenize.vocab import TokenizeError, Vocabulary

    if model.config.mode == "videobert":
        vocab_dir = os.path.join(directory, io.VOCAB_DIR)
        try:
            saved_vocab = Vocabulary.from_pretrained(vocab_dir)
        except TokenizeError as err:
            raise ModelError(f"model.init_from={directory}: its visual vocabulary cannot be read ({err}); a "
                             "VideoBERT model needs the vocab/ it was trained with") from None
        if saved_vocab.fingerprint() != dataset.vocab.fingerprint():
            raise ModelError(f"data.vocab={data_cfg.vocab} is not the vocabulary model.init_from={directory} was "
                             f"trained with; set data.vocab={vocab_dir} and encode the store with it "
                             f"(videolm tokenize encode STORE --vocab {vocab_dir})")
    saved, found = io.read_input_settings(directory)
    theirs, mine = saved.feature_store or {}, input_settings(data_cfg, dataset).feature_store or {}
    for key in ("backbone", "weights"):
        a, b = theirs.get(key), mine.get(key)
        if found and a is not None and b is not None and os.path.basename(str(a)) != os.path.basename(str(b)):
            raise ModelError(f"the store's features come from {key} {b!r} but model.init_from={directory} was "
                             f"trained on {a!r}; extract the features with the same backbone and weights")
    tensors = io.load_state(directory)
    io.check_state(model, tensors, f"{directory}/{io.WEIGHTS_FILE}")
    model.load_state_dict(tensors)


class StopRequest:
    """SIGINT (Ctrl-C) or SIGTERM (a scheduler preempting the job) asks the
    loop to stop after the current step, with a checkpoint, so nothing done is
    lost; a second Ctrl-C (or SIGTERM) stops at once. Handlers are installed
    only in the main thread and restored on exit."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.requested = True
        log.warning("stopping after this step with a checkpoint (Ctrl-C again to stop at once)")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which finishes
    its step and checkpoints before shutting them down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def negatives_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """The model's random alignment negatives for one accumulation step:
    seeded by (seed, step, accumulation index) and the same on every rank, as
    the model draws them for the global batch; so any number of ranks draws
    what one process draws."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + step) * 1_009 + micro)
    return g


def schedule_length(t, ckpt, env: D.DistEnv) -> int:
    """The cosine schedule's length in steps. A fresh run: train.schedule_steps,
    or train.steps when that is 0. A resumed run keeps the length it was saved
    with, whatever train.steps now says (so extending a run never makes the LR
    jump); a train.schedule_steps that differs is an explicit schedule change,
    announced with the jump it makes."""
    if ckpt is None:
        return t.schedule_steps or t.steps
    saved = ckpt.state.schedule_steps
    step = ckpt.state.step

    def multiplier(total: int) -> float:
        return warmup_cosine(step, t.warmup_steps, total, t.min_lr_ratio)

    if t.schedule_steps and t.schedule_steps != saved:
        if env.is_main:
            log.warning("train.schedule_steps=%d changes the LR schedule from %d to %d steps: at step %d the lr "
                        "multiplier goes from %.3f to %.3f", t.schedule_steps, saved, t.schedule_steps, step,
                        multiplier(saved), multiplier(t.schedule_steps))
        return t.schedule_steps
    if t.steps != saved and env.is_main:
        log.warning("train.steps=%d; the LR schedule keeps the %d steps it was saved with (lr multiplier %.3f at "
                    "step %d)%s; set train.schedule_steps=%d to change the schedule", t.steps, saved,
                    warmup_cosine(t.steps - 1, t.warmup_steps, saved, t.min_lr_ratio), t.steps,
                    f", and is {t.min_lr_ratio:g} from step {saved}" if t.steps > saved else "", t.steps)
    return saved


def pretrain(cfg: PretrainConfig, progress: Progress | None = None) -> PretrainResult:
    env = D.env_from_torchrun()
    device = pick_device(cfg.train.device, env)
    D.init_distributed(env, device)
    try:
        return _pretrain(cfg, env, device, progress)
    finally:
        D.shutdown_distributed()


def _pretrain(cfg: PretrainConfig, env: D.DistEnv, device: torch.device, progress: Progress | None) -> PretrainResult:
    t = cfg.train
    run_dir = t.out
    given_config = cfg.to_dict()

    # Resume? Check the config before spending time on data and model.
    ckpt_path = latest_checkpoint(run_dir)
    ckpt = load_checkpoint(ckpt_path) if ckpt_path else None
    if ckpt is not None:
        diff = [k for k in config_differences(ckpt.state.config, given_config)
                if not k.startswith(("_data.", "_init.", "eval."))]  # validation never changes what training computes
        if diff:
            shown = ", ".join(diff[:6]) + (f" and {len(diff) - 6} more" if len(diff) > 6 else "")
            raise CheckpointError(f"{ckpt_path}: config differs from the checkpoint's in {shown}; "
                                  f"use another train.out or the same config")
    if t.amp == "fp16" and device.type != "cuda":
        raise ModelError("train.amp=fp16 needs CUDA; use train.amp=bf16 on the CPU")
    parts = env.world_size * t.grad_accum
    if t.batch_size % parts:
        raise ModelError(f"train.batch_size={t.batch_size} must be a multiple of processes x train.grad_accum "
                         f"= {parts}")
    micro = t.batch_size // parts

    # model.init_from: the saved model's architecture; objective weights and training keys stay this run's
    saved = init_source(cfg.model, ckpt)
    model_section = cfg.model.inherit_architecture(saved, cfg.model.init_from) if saved is not None else cfg.model

    seed_everything(t.seed + env.rank)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    dataset = build_pretrain_dataset(cfg.data, model_section.mode, tokenizer, seed=t.seed)
    # What the data *is*, beyond its paths: a rebuilt vocabulary or store at
    # the same path must not slip into a resumed run.
    given_config["_data"] = {"feature_dim": dataset.feature_dim,
                             "vocab": dataset.vocab.fingerprint() if dataset.vocab is not None else None}
    if ckpt is not None and "_data" in ckpt.state.config and ckpt.state.config["_data"] != given_config["_data"]:
        was = ckpt.state.config["_data"]
        what = ("the vocabulary at data.vocab is not the one" if was.get("vocab") != given_config["_data"]["vocab"]
                else "the store's feature dim is not the one")
        raise CheckpointError(f"{ckpt_path}: {what} this run started with; use another train.out")
    if len(dataset) < t.batch_size:
        raise ModelError(f"an epoch has {len(dataset)} examples, fewer than train.batch_size={t.batch_size}; "
                         f"lower the batch size or set data.epoch_size")
    model_cfg = complete_model_config(model_section, tokenizer, dataset)
    if saved is not None:
        model_cfg.check_data_keys(saved, cfg.model.init_from)
        given_config["_init"] = {"config": saved.to_dict()}
    model = VideoLMForPretraining(model_cfg, load_init=ckpt is None)   # resumed: the weights are the checkpoint's
    if saved is not None and ckpt is None:  # a resumed run has its weights in the checkpoint
        load_init_from(model, cfg.model.init_from, cfg.data, dataset)
        if env.is_main:
            log.info("model: initialised from %s (every weight)", cfg.model.init_from)
    elif model_cfg.mode == "videobert" and model_cfg.init_visual_from_centroids and ckpt is None:
        model.transformer.init_visual_from_centroids(dataset.vocab.word_centroids())
    if model_cfg.mode == "videobert" and model_cfg.freeze_visual_table:
        # not trained, so the embeddings of words that training never shows (held-out
        # compositions) stay consistent with the rest; the masked-word head reads the same table
        model.transformer.visual_embeddings.table.weight.requires_grad_(False)
    model.to(device)
    if env.is_main:
        d = dataset.describe()
        parts = ", ".join(f"{src['kind']} {src['per_epoch']} ({os.path.basename(src['manifest'])})" for src in d["sources"])
        log.info("data: %d examples per epoch: %s", len(dataset), parts)
        depth = (f"{model_cfg.num_layers} layers" if model_cfg.arch == "single_stream" else
                 f"{model_cfg.text_layers} text + {model_cfg.visual_layers} visual + {model_cfg.cross_layers} cross layers")
        log.info("model: %s mode, %s, %.1f M parameters, %s x %d hidden; %d process(es) on %s",
                 model_cfg.mode, model_cfg.arch, sum(p.numel() for p in model.parameters()) / 1e6, depth,
                 model_cfg.hidden_size, env.world_size, device)
        log.info("parameters: %s", ", ".join(f"{part} {n / 1e6:.3f} M" for part, n in model.parameter_counts().items()))

    optimizer = build_optimizer(model, t.lr, t.weight_decay, t.betas, t.eps, fused=True)
    schedule_steps = schedule_length(t, ckpt, env)
    scheduler = build_scheduler(optimizer, t.warmup_steps, schedule_steps, t.min_lr_ratio)
    scaler = torch.amp.GradScaler("cuda") if t.amp == "fp16" else None
    start_step = 0
    if ckpt is not None:
        model.load_state_dict(ckpt.model)
        optimizer.load_state_dict(ckpt.optimizer["optimizer"])
        scheduler.load_state_dict(ckpt.optimizer["scheduler"])
        if scaler is not None and ckpt.optimizer["scaler"]:
            scaler.load_state_dict(ckpt.optimizer["scaler"])
        start_step = ckpt.state.step
        # the next step's lr under the schedule in force (not the saved one, after an explicit change)
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * warmup_cosine(start_step, t.warmup_steps, schedule_steps, t.min_lr_ratio)
        if ckpt.state.world_size != env.world_size and env.is_main:
            log.warning("resuming a %d-process run with %d processes: every step reads the same examples in the "
                        "same micro-batch groups, with the same negatives (train.batch_size and grad_accum are "
                        "unchanged); only dropout draws start afresh and float sums run in another order%s",
                        ckpt.state.world_size, env.world_size,
                        "; the swapped visual sides of model.align_on_masked_pass are drawn per rank and change"
                        if model_cfg.align_on_masked_pass and model_cfg.align_weight > 0 else "")
    ranks = RankGroup.new(env.world_size, env.rank)  # contrastive candidates from every rank
    train_model = model
    if env.enabled:
        # find_unused_parameters: a micro-batch may mask no visual position
        # (so e.g. CBT's mask embedding gets no gradient on that rank).
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                              find_unused_parameters=True)

    sampler = D.ResumableDistributedSampler(dataset, t.batch_size, t.grad_accum, env.world_size, env.rank,
                                            start_step, t.steps)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=micro, sampler=sampler, collate_fn=dataset.collate, num_workers=t.num_workers,
        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(t.seed),
        worker_init_fn=_ignore_stop_signals, persistent_workers=False)

    # Validation during training (rank 0 runs it; the protocol and store are checked now)
    validator = None
    if cfg.eval.enabled and env.is_main:
        validator = Validator(cfg.eval, cfg.data.store or dataset.sources[0].store, tokenizer, dataset.vocab,
                              input_settings(cfg.data, dataset))

    # Files (rank 0), then restore RNG last so nothing above consumes draws.
    metrics = MetricsLog(os.path.join(run_dir, "metrics.jsonl"))
    if env.is_main:
        os.makedirs(run_dir, exist_ok=True)
        write_resolved_config(run_dir, {"given": given_config, "model": dataclasses.asdict(model_cfg)})
        metrics.truncate_after(start_step)
        if validator is not None:
            validator.restore_best(metrics.rows())
        if dataset.missing:
            atomic_write_jsonl(os.path.join(run_dir, "missing.jsonl"), dataset.missing)
            log.warning("%d manifest rows have no features; listed in %s", len(dataset.missing),
                        os.path.join(run_dir, "missing.jsonl"))
    if ckpt is not None:
        restore_python_numpy_rng(ckpt.rng_python_numpy)
        if env.rank < len(ckpt.rng_ranks) and ckpt.state.world_size == env.world_size:
            restore_torch_rng(ckpt.rng_ranks[env.rank], device)
        log.info("resumed from %s (step %d)", ckpt.path, start_step)

    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.amp)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    batches = iter(loader)
    step, stopped_early = start_step, False
    logged = metrics.rows() if start_step and env.is_main else []  # a resumed run reports its last row
    last = logged[-1] if logged else {}
    steps_this_run = 0
    # Logged values are means over the steps since the last row (and over ranks).
    # The same keys on every rank and micro-batch (an objective a micro-batch had
    # nothing for counts as 0), so ranks can average them; kept as tensors so a
    # GPU is not synchronised every step.
    keys = ["loss", *(name for name, key in OBJECTIVES.items() if model_cfg.enabled(key)), "grad_norm"]
    sums = {k: torch.zeros((), device=device) for k in keys}
    window_start, window_steps, window_examples, window_tokens = time.perf_counter(), 0, 0, 0
    model.train()
    interrupted = False
    with StopRequest() as stop_request:
        while step < t.steps:
            for a in range(t.grad_accum):
                batch: Batch = next(batches).to(device, non_blocking=True)
                window_examples += len(batch)
                window_tokens += batch.text_attention.sum() + batch.visual_attention.sum()  # tensor: no sync
                sync = contextlib.nullcontext() if (not env.enabled or a == t.grad_accum - 1) else train_model.no_sync()
                with sync:
                    with autocast():
                        out = train_model(batch, generator=negatives_generator(t.seed, step, a), ranks=ranks)
                    loss = out.loss / t.grad_accum
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                sums["loss"] += out.loss.detach().float() / t.grad_accum
                for name, value in out.losses.items():
                    sums[name] += value.detach().float() / t.grad_accum
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad_norm if t.clip_grad_norm > 0
                                                       else float("inf"))
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            model.clamp_parameters()  # the temperature's bound, on the value (as CLIP), not inside forward
            lr = optimizer.param_groups[0]["lr"]  # the lr this step used
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            sums["grad_norm"] += grad_norm.detach().float()
            step += 1
            steps_this_run += 1
            window_steps += 1

            if step % t.log_every == 0 or step == t.steps:
                values = D.mean_across_ranks({k: float(v) / window_steps for k, v in sums.items()}, env)
                elapsed = max(1e-9, time.perf_counter() - window_start)
                rates = D.mean_across_ranks({"examples_per_s": window_examples / elapsed,
                                             "tokens_per_s": float(window_tokens) / elapsed}, env)
                last = {"step": step, **{k: round(v, 6) for k, v in values.items()},
                        "lr": lr, **{k: round(v * env.world_size, 2) for k, v in rates.items()}}
                for v in sums.values():
                    v.zero_()
                window_start, window_steps, window_examples, window_tokens = time.perf_counter(), 0, 0, 0
                if env.is_main:
                    metrics.append(last)
            if cfg.eval.enabled and (step % cfg.eval.every == 0 or step == t.steps):
                if env.is_main:
                    _validate(validator, model, step, run_dir, metrics, last, tokenizer, dataset)
                D.barrier(env)
            if env.is_main and progress is not None:
                progress(step, t.steps, last)
            interrupted = D.broadcast_flag(stop_request.requested, env)  # every rank stops at the same step
            stop = interrupted or (t.max_steps_per_run > 0 and steps_this_run >= t.max_steps_per_run)
            stop = stop and step < t.steps
            if step % t.save_every == 0 or step == t.steps or stop:
                _checkpoint(run_dir, model, optimizer, scheduler, scaler, step, sampler, given_config, env, device,
                            t.keep_checkpoints, schedule_steps)
            if stop:
                stopped_early = True
                break
    if interrupted and step < t.steps:
        if env.is_main:
            plot_losses(metrics.path, os.path.join(run_dir, "loss.png"))
            log.warning("stopped at step %d; checkpoint %s", step, os.path.join(run_dir, "checkpoints", "latest"))
        raise KeyboardInterrupt

    model_dir = png = None
    if env.is_main:
        png = plot_losses(metrics.path, os.path.join(run_dir, "loss.png"))
        if not stopped_early:
            model_dir = os.path.join(run_dir, "model")
            if steps_this_run or not os.path.exists(os.path.join(model_dir, "config.json")):
                model.save_pretrained(model_dir, tokenizer=tokenizer, vocabulary=dataset.vocab,
                                      inputs=input_settings(cfg.data, dataset))
    D.barrier(env)
    return PretrainResult(run_dir, step, ckpt.state.step if ckpt else None, model_dir, metrics.path, png, last)


def _validate(validator, model, step, run_dir, metrics, last, tokenizer, dataset) -> None:
    """One validation pass (rank 0): a metrics row, the progress bar's figures, best/."""
    model.eval()
    try:
        values = validator.run(model, step)
    finally:
        model.train()
    metrics.append({"step": step, **values})
    last.update(values)
    if validator.cfg.keep_best and validator.improved(values):
        validator.save_best(model, run_dir, step, values, tokenizer, dataset.vocab,
                            input_settings(dataset.cfg, dataset))


def _checkpoint(run_dir, model, optimizer, scheduler, scaler, step, sampler, config, env, device, keep,
                schedule_steps) -> None:
    """All ranks call this (RNG states are gathered); rank 0 writes."""
    rng = torch_rng_state(device)
    if env.enabled:
        gathered: list = [None] * env.world_size
        torch.distributed.all_gather_object(gathered, {k: v.cpu() for k, v in rng.items()})
    else:
        gathered = [rng]
    if env.is_main:
        epoch, within = divmod(step, sampler.steps_per_epoch)
        state = TrainState(step, epoch, within * sampler.global_batch, config, env.world_size, schedule_steps)
        save_checkpoint(run_dir, model, optimizer, scheduler, scaler, state, gathered, keep)
    D.barrier(env)
