"""`videolm pretrain CONFIG.yaml [key=value ...]` and `videolm plot RUN`."""

from __future__ import annotations

DESCRIPTION = """\
Pre-train the joint transformer (VideoBERT or CBT mode, set by model.mode).
CONFIG.yaml holds only what differs from the defaults; key=value overrides go
on top (train.lr=3e-4 train.out=runs/x data.sources.0.weight=2).
A rerun with the same train.out resumes from its latest checkpoint; a changed
config is refused (naming the keys) unless only run-length/logging keys changed.
Ctrl-C (or SIGTERM) finishes the step in progress, checkpoints it and exits 130.
Under torchrun --nproc-per-node N the same command trains with DDP.

  videolm pretrain configs/videobert_tiny.yaml
  videolm pretrain configs/cbt_tiny.yaml train.steps=200 train.out=runs/cbt
  torchrun --nproc-per-node 2 -m videolm.cli pretrain configs/cbt_tiny.yaml

Writes RUN/metrics.jsonl, RUN/loss.png, RUN/checkpoints/, RUN/model/ (save_pretrained)."""


def add_parser(subparsers) -> None:
    from videolm.cliutil import Formatter as _Formatter

    p = subparsers.add_parser("pretrain", formatter_class=_Formatter, help="pre-train the joint transformer",
                              description=DESCRIPTION)
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    plot = subparsers.add_parser("plot", formatter_class=_Formatter, help="draw a run's loss curves as PNG",
                                 description="Draw RUN/metrics.jsonl as a loss-curve PNG (works while training runs).")
    plot.add_argument("run", help="run directory (train.out) or a metrics.jsonl file")
    plot.add_argument("-o", "--out", default=None, help="PNG path (default: RUN/loss.png)")


def run_pretrain(args) -> int:
    from videolm.cliutil import EXIT_OK, CliError
    from videolm.data.errors import DataError
    from videolm.eval.errors import EvalError
    from videolm.model.errors import ModelError
    from videolm.text.tokenizer import TextError
    from videolm.train.config import ConfigError, load_config

    try:  # the config first, torch-free: a missing file or a bad key is one line in well under a second
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, DataError, ModelError, TextError, EvalError) as err:
        raise CliError(str(err), same_on_every_rank=True) from None  # every rank reads the same files
    from videolm.train.checkpoint import CheckpointError
    from videolm.train.distributed import env_from_torchrun
    from videolm.train.loop import pretrain

    try:
        bar = None
        show = not args.quiet and env_from_torchrun().is_main

        def progress(step: int, total: int, row: dict) -> None:
            nonlocal bar
            if not show:
                return
            if bar is None:
                from tqdm import tqdm

                bar = tqdm(total=total, initial=step - 1, unit="step", desc="pretrain")
            bar.update(1)
            if row:
                bar.set_postfix({k: f"{row[k]:.3f}" for k in ("loss", "mlm", "visual", "align", "contrastive")
                                 if k in row})

        try:
            result = pretrain(cfg, progress=progress)
        finally:
            if bar is not None:
                bar.close()
    except (ConfigError, DataError, ModelError, TextError, CheckpointError, EvalError) as err:
        raise CliError(str(err)) from None
    if env_from_torchrun().is_main:
        resumed = f" (resumed at step {result.resumed_from})" if result.resumed_from is not None else ""
        if result.resumed_from == result.step:
            resumed = " (already finished: nothing to do)"
        last = ", ".join(f"{k} {result.last[k]:.4f}" for k in ("loss", "mlm", "visual", "align", "contrastive")
                         if k in result.last)
        print(f"videolm pretrain: {result.step} steps{resumed}; {last}")
        print(f"  metrics {result.metrics}\n  curves  {result.loss_png}")
        if result.model_dir:
            print(f"  model   {result.model_dir}")
        else:
            print(f"  stopped at step {result.step} (train.max_steps_per_run); rerun the same command to continue")
    return EXIT_OK


def run_plot(args) -> int:
    import os

    from videolm.cliutil import EXIT_OK, CliError
    from videolm.train.metrics import plot_losses

    path = args.run if args.run.endswith(".jsonl") else os.path.join(args.run, "metrics.jsonl")
    if not os.path.exists(path):
        raise CliError(f"{path}: no metrics file (is {args.run} a run directory?)")
    out = args.out or os.path.join(os.path.dirname(path), "loss.png")
    print(plot_losses(path, out))
    return EXIT_OK
