"""The progress hooks every long job calls (extraction, tokenizer fit and
encode, the gallery), so a front end can show progress; the library itself
never draws anything. The CLI draws tqdm bars on a terminal and plain lines
elsewhere."""

from __future__ import annotations


class Progress:
    """The default does nothing; override what you display."""

    def start(self, stage: str, total: int | None = None) -> None:
        """A stage begins: ``total`` steps, or None when not known ahead."""

    def advance(self, n: int = 1, stage: str | None = None) -> None:
        """``n`` more steps of ``stage`` (None: the stage started last)."""

    def finished(self, path: str, status: str, message: str | None = None) -> None:
        """One input is done: ``status`` "ok" or "failed"; ``message`` is the
        failure's reason or a warning."""
