"""Where a store's sources are now. The store keeps each source's path as
extraction was given it (relative paths relative to the directory extraction
ran in), so a store read from another directory or machine names files that
are not there. What reads the sources back (`tokenize gallery`, evaluate's
retrieval examples) takes ``--media-root``:

* ``DIR``: a relative stored path is found under DIR (absolute ones as stored);
* ``OLD=NEW``: a stored path under OLD is found under NEW instead
  (``/cluster/videos=/mnt/videos``); other paths as stored.

An imported store (`videolm store import`) keeps a source only where import
was given ``--media``; for the others, ``--media-root DIR`` finds
``DIR/<id>.<ext>`` (or the one ``<id>.<ext>`` below DIR), and without it
there is nothing to read: ``source`` raises ``NoSource``, never decoding the
imported ``.npy`` as a video.

Features never depend on it: only the pictures read the media again."""

from __future__ import annotations

import os


class MediaRootError(ValueError):
    """A --media-root that names no directory; one line."""


NO_SOURCE = "(imported without --media)"   # how a missing list names such an input


class NoSource(LookupError):
    """An imported input with no recorded source, and no --media-root DIR that has it."""


class MediaIndex:
    """Where each id's source is under a directory: the video or photo
    (extensions in any case) at ``DIR/<id>.<ext>``, else the one file named
    ``<last part of the id>.<ext>`` anywhere below DIR (YouCook2 keeps its
    videos under split/recipe folders, released features flat)."""

    def __init__(self, root: str):
        from videolm.features.inputs import media_files

        self.by_path: dict[str, str] = {}
        by_stem: dict[str, list[str]] = {}
        for path in media_files(root):
            rel = os.path.splitext(os.path.relpath(path, root))[0].replace(os.sep, "/")
            self.by_path.setdefault(rel, path)
            by_stem.setdefault(rel.rsplit("/", 1)[-1], []).append(path)
        self.by_stem = {stem: paths[0] for stem, paths in by_stem.items() if len(paths) == 1}

    def __call__(self, video_id: str) -> str | None:
        return self.by_path.get(video_id) or self.by_stem.get(video_id.rsplit("/", 1)[-1])


class MediaRoot:
    def __init__(self, spec: str | None = None):
        self.spec, self.old, self.new = spec, None, None
        self._by_id: MediaIndex | None = None
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
        imported store's ``media``, else ``path``), through this root. An
        imported row without ``media``: found by id under ``--media-root
        DIR``, else ``NoSource``."""
        if row.get("media"):
            return self(row["media"])
        if row.get("reader") != "imported":
            return self(row["path"])
        if self.new is not None and self.old is None:
            if self._by_id is None:
                self._by_id = MediaIndex(self.new)
            found = self._by_id(row["video_id"])
            if found is not None:
                return found
        raise NoSource(f"{row['video_id']} {NO_SOURCE}")

    def shown(self, row: dict) -> str:
        """What a list of unreadable sources names for ``row``."""
        try:
            return self.source(row)
        except NoSource as err:
            return str(err)

    def hint(self, missing: list[str]) -> str:
        """What to say after sources could not be read: how to point at where they are now."""
        if any(m.endswith(NO_SOURCE) for m in missing):
            return ("an imported store records a source only where `videolm store import` was given --media; "
                    + ("no file named after these ids is under " + self.spec if self.spec is not None and
                       self.old is None else "--media-root DIR finds DIR/<id>.<ext>"))
        if self.spec is not None:
            return f"(--media-root {self.spec} gave these paths)"
        relative = any(not os.path.isabs(p) for p in missing)
        return ("the store keeps each source's path as extraction was given it"
                + (" (relative paths: relative to the directory extraction ran in)" if relative else "")
                + "; --media-root DIR or OLD=NEW says where they are now")
