"""What every `videolm` sub-command shares: exit codes, the one-line user
error, and the help formatter. It sits below videolm.cli and the sub-command
modules (tokenize/cli.py, train/cli.py, eval/cli.py), so none imports another."""

from __future__ import annotations

import argparse

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell tool killed by `| head` returns


class CliError(Exception):
    """A user mistake: printed as one line, exit status 2.

    Under torchrun (WORLD_SIZE > 1) every rank runs the same command: an error that
    every rank meets alike (``same_on_every_rank``, e.g. a bad config key) is
    printed by rank 0 only; any other error is prefixed with the rank that met it."""

    def __init__(self, message: str, same_on_every_rank: bool = False):
        super().__init__(message)
        self.same_on_every_rank = same_on_every_rank

    def line(self, environ=None) -> str | None:
        """The line to print (``error: ...``), or None for a rank that stays silent."""
        import os

        environ = os.environ if environ is None else environ
        if int(environ.get("WORLD_SIZE", "1") or 1) <= 1:
            return f"error: {self}"
        rank = int(environ.get("RANK", "0") or 0)
        if self.same_on_every_rank:
            return f"error: {self}" if rank == 0 else None
        return f"error: rank {rank}: {self}"


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Appends "(default: X)" to an option's help, except where the help
    already says what the default is, or the default is None (which says nothing)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or "default" in text:
            return text
        return super()._get_help_string(action)
