"""Where a store's sources are now. The store keeps each source's path as
extraction was given it (relative paths relative to the directory extraction
ran in), so a store read from another directory or machine names files that
are not there. What reads the sources back (`tokenize gallery`, evaluate's
retrieval examples) takes ``--media-root``:

* ``DIR``: a relative stored path is found under DIR (absolute ones as stored);
* ``OLD=NEW``: a stored path under OLD is found under NEW instead
  (``/cluster/videos=/mnt/videos``); other paths as stored.

Features never depend on it: only the pictures read the media again."""

from __future__ import annotations

import os


class MediaRootError(ValueError):
    """A --media-root that names no directory; one line."""


class MediaRoot:
    def __init__(self, spec: str | None = None):
        self.spec, self.old, self.new = spec, None, None
        if spec is None:
            return
        if os.path.isdir(spec):                        # DIR (even one whose name holds '=')
            self.new = spec
            return
        old, sep, new = spec.partition("=")
        if not sep:
            raise MediaRootError(f"--media-root {spec}: no such directory (give DIR, or OLD=NEW to replace "
                                 f"the stored paths' prefix OLD)")
        if not old:
            raise MediaRootError(f"--media-root {spec}: OLD is empty; give OLD=NEW with OLD the stored paths' prefix")
        if not os.path.isdir(new):
            raise MediaRootError(f"--media-root {spec}: NEW ({new or 'empty'}) is not a directory; "
                                 f"give OLD=NEW with NEW where the sources are now")
        self.old, self.new = os.path.normpath(old), new

    def __call__(self, stored: str) -> str:
        """The path to read for a stored source path."""
        if self.new is None:
            return stored
        if self.old is None:
            return stored if os.path.isabs(stored) else os.path.join(self.new, stored)
        norm = os.path.normpath(stored)
        if norm == self.old:
            return self.new
        if norm.startswith(self.old.rstrip(os.sep) + os.sep):   # a whole path component, not /data2 for /data
            return os.path.join(self.new, os.path.relpath(norm, self.old))
        return stored

    def source(self, row: dict) -> str:
        """The file to read a stored row's frames from: its source media (an
        imported store's ``media``, else ``path``), through this root."""
        return self(row.get("media") or row["path"])

    def hint(self, missing: list[str]) -> str:
        """What to say after sources could not be read: how to point at where they are now."""
        if self.spec is not None:
            return f"(--media-root {self.spec} gave these paths)"
        relative = any(not os.path.isabs(p) for p in missing)
        return ("the store keeps each source's path as extraction was given it"
                + (" (relative paths: relative to the directory extraction ran in)" if relative else "")
                + "; --media-root DIR or OLD=NEW says where they are now")
