"""Evaluation's one error type (torch-free, so that config checks can raise it
before the evaluation stack is imported)."""

from __future__ import annotations


class EvalError(Exception):
    """A user mistake in evaluation (model, store, annotations); one line."""
