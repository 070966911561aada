"""The one exception data/ raises for a user's mistake or unusable input."""

from __future__ import annotations


class DataError(Exception):
    """A manifest, store, vocabulary or config that cannot be used as given;
    the message is one line and names the file (and line) at fault."""
