"""Writing the pipeline's own files (thumbnails, metadata documents) so that no reader ever sees half of one, and
syncing files to disk."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from streams.errors import StorageUnavailable
from streams.logs import get

log = get(__name__)


def write_atomically(target: Path, data: bytes, *, what: str, note: tuple[str, bytes] | None = None) -> None:
    """Write ``data`` to ``target`` under a name unique to this writer, then rename it into place.

    ``os.replace`` is atomic within a directory: readers see the old file, or none, or the whole new one;
    concurrent writers of the same asset each rename a complete file of the same content. An OS error (disk
    full, permissions of the data dir: not the source file's fault) is a :class:`StorageUnavailable` (retried)
    naming ``what`` could not be written. ``note``, an extended attribute (name, value), goes with the file where
    the platform and file system keep them (:func:`read_note`), and is left out elsewhere.
    """
    temp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "xb") as out:
            out.write(data)
            if note is not None:
                _set_note(out.fileno(), *note)
        os.replace(temp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # e.g. the directory is not one: the error below says so
            temp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise StorageUnavailable(f"cannot write {what}: {exc.strerror or exc}", path=str(target)) from exc
        raise


_notes_refused = False


def set_note(path: Path, name: str, value: bytes) -> None:
    """Give the file at ``path`` the extended attribute ``name`` (see :func:`read_note`), where the platform and
    file system keep them; left out elsewhere."""
    _set_note(os.fspath(path), name, value)


def _set_note(fd: int | str, name: str, value: bytes) -> None:
    global _notes_refused
    setxattr = getattr(os, "setxattr", None)
    if setxattr is None:  # not Linux: no extended attributes
        return
    try:
        setxattr(fd, name, value)
    except OSError as exc:  # a file system without them, or with no room left for them: the file goes on without
        if not _notes_refused:
            _notes_refused = True
            log.warning("file_notes_not_kept", note=name, error=str(exc),
                        consequence="what the note tells is unknown for these files")


def read_note(path: Path, name: str) -> bytes | None:
    """The extended attribute ``name`` of the file at ``path`` (see :func:`write_atomically`); ``None`` when it
    has none, or it cannot be told."""
    try:
        return os.getxattr(path, name)
    except (AttributeError, OSError):
        return None


def sync_to_disk(path: Path, flags: int = 0) -> None:
    """Sync the file (or, with ``os.O_DIRECTORY``, the directory) at ``path`` to disk: its bytes, or its names."""
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
