"""The model's one error type."""

from __future__ import annotations


class ModelError(Exception):
    """A user mistake (bad config, wrong inputs, not a model directory); the
    message is one line and names the key or file."""
