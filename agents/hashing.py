"""Content hashing: the BLAKE3 hex digest of a file's bytes is its asset id.

The id is computed before anything else touches the file, so even a file that later fails to decode is known by
its content (the dead-letter envelope and the catalog key on it). Files are streamed through one fixed buffer:
a 2 GiB file costs the same memory as a 2 KiB one, which keeps a worker's RSS flat however big the import.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from blake3 import blake3

from streams.errors import DamflowError, PermanentError, SourceMissing, SourceUnreadable, UnsupportedFormat

#: Read size. 1 MiB amortises the syscall and lets BLAKE3 use its SIMD lanes; larger buys nothing measurable.
CHUNK_BYTES = 1024 * 1024


def hash_bytes(data: bytes | bytearray | memoryview) -> str:
    """BLAKE3 hex digest of ``data`` — the asset id of a file holding exactly these bytes."""
    return blake3(data).hexdigest()


def hash_file(path: Path | str, *, max_bytes: int | None = None) -> tuple[str, int]:
    """Return ``(asset_id, size)`` of the file at ``path``, read in fixed-size chunks.

    Raises :class:`SourceMissing` when the file is gone, :class:`SourceUnreadable` when it cannot be read now,
    :class:`UnsupportedFormat` for a directory, FIFO, socket or device (opening a FIFO would block the worker),
    and :class:`PermanentError` when it is larger than ``max_bytes`` — refused before reading a byte.
    """
    path = Path(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise UnsupportedFormat("not a regular file", path=str(path))
        _check_size(info.st_size, max_bytes, path)
        hasher = blake3()
        buffer = bytearray(CHUNK_BYTES)
        view = memoryview(buffer)
        size = 0
        with open(path, "rb", buffering=0) as source:
            while read := source.readinto(buffer):
                hasher.update(view[:read])
                size += read
                # The file may grow between stat and read; the limit holds for what is actually read.
                _check_size(size, max_bytes, path)
    except OSError as exc:
        raise source_error(exc, path) from exc
    return hasher.hexdigest(), size


def source_error(exc: OSError, path: Path | str) -> DamflowError:
    """The typed error for an OS error met while opening or reading a source file.

    Shared by every reader of source files, so the same condition gets the same class (and retry policy)
    whichever stage meets it first.
    """
    reason = exc.strerror or str(exc)
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return SourceMissing(f"file not found: {reason}", path=str(path))
    if isinstance(exc, IsADirectoryError):
        return UnsupportedFormat("not a regular file (a directory)", path=str(path))
    return SourceUnreadable(f"cannot read file: {reason}", path=str(path))


def _check_size(size: int, max_bytes: int | None, path: Path) -> None:
    if max_bytes is not None and size > max_bytes:
        raise PermanentError(f"file too large: {size} bytes exceeds the limit of {max_bytes}", path=str(path))
