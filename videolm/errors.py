"""Helpers for the one-line messages users see."""

from __future__ import annotations


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when empty):
    library messages often run to a paragraph; ours stay one line."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
