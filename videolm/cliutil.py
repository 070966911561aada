"""What every `videolm` sub-command shares: exit codes, the one-line user
error, and the help formatter. It sits below videolm.cli and the sub-command
modules (tokenize/cli.py, train/cli.py, eval/cli.py), so none imports another."""

from __future__ import annotations

import argparse

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell tool killed by `| head` returns


class CliError(Exception):
    """A user mistake: printed as one line, exit status 2."""


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Appends "(default: X)" to an option's help, except where the help
    already says what the default is, or the default is None (which says nothing)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or "default" in text:
            return text
        return super()._get_help_string(action)
