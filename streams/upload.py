"""Interactive uploads: store the bytes content-addressed under the data directory, publish on ``t1.interactive``.

The stored copy's path is derived from the content hash only (``originals/ab/<id>.<ext>``); no name or path from
the client is ever used on disk — the client's file name is kept as ``display_name`` for people to read.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaProducer

from agents.hashing import hash_file, source_error
from agents.sniff import sniff_file
from schemas import FileDiscovered, encode, new_id, now
from streams.errors import UploadRejected
from streams.express import ExpressRequest
from streams.settings import Settings
from streams.topics import Topics

_EXT = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp",
        "AVIF": ".avif", "HEIF": ".heic", "JXL": ".jxl"}


@dataclass(frozen=True)
class StoredUpload:
    asset_id: str
    path: Path
    size: int
    format: str


def store_original(settings: Settings, source: Path, *, move: bool = False) -> StoredUpload:
    """Copy ``source`` into the content-addressed originals store (atomically; a no-op if already there).

    ``move`` renames instead of copying (for a spooled upload on the same filesystem); the source is gone after.
    A copy is made first and judged and hashed as copied, so a source still being written (a renderer saving
    it) cannot end up stored under the hash of other bytes.
    """
    if move:
        return _store_file(settings, source, move=True)
    if sniff_file(source) is None:  # judged before a byte is copied (the copy is judged again)
        raise UploadRejected(f"not a recognised image: {source.name}", path=str(source))
    staging = settings.originals_dir / f".incoming.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        _copy_at_most(source, staging, settings.upload_max_bytes)
        return _store_file(settings, staging, move=True, shown=source)
    finally:
        staging.unlink(missing_ok=True)


def _copy_at_most(source: Path, target: Path, limit: int) -> None:
    """Copy ``source`` to ``target``, refusing it once more than ``limit`` bytes came (a file still growing, a
    device that never ends)."""
    copied = 0
    try:
        with open(source, "rb") as src, open(target, "wb") as out:
            while chunk := src.read(1024 * 1024):
                copied += len(chunk)
                if copied > limit:
                    raise UploadRejected(f"{source.name} exceeds the upload limit of {limit} bytes",
                                         path=str(source))
                out.write(chunk)
    except OSError as exc:
        raise source_error(exc, source) from exc  # gone, unreadable: typed as when hashing


def _store_file(settings: Settings, path: Path, *, move: bool, shown: Path | None = None) -> StoredUpload:
    """Judge, hash and place ``path``; errors name ``shown`` (the user's file) when given."""
    fmt = sniff_file(path)
    if fmt is None:
        shown = shown or path
        raise UploadRejected(f"not a recognised image: {shown.name}", path=str(shown))
    asset_id, size = hash_file(path, max_bytes=settings.upload_max_bytes)
    return place_original(settings, path, asset_id=asset_id, size=size, format=fmt, move=move)


def place_original(
    settings: Settings, source: Path, *, asset_id: str, size: int, format: str, move: bool = False
) -> StoredUpload:
    """Put ``source``, whose content hash, size and sniffed format the caller already knows, into the store.

    For a body that was hashed and sniffed while it streamed in (the HTTP endpoint), so its bytes are not read
    a second time. The destination name comes from the hash alone; a file already there is complete (written
    under a temporary name, then renamed), so the same content uploaded twice is stored once.
    """
    dest = settings.originals_dir / asset_id[:2] / f"{asset_id}{_EXT.get(format, '.bin')}"
    if dest.exists():
        if move:
            source.unlink(missing_ok=True)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if move:
            os.replace(source, dest)  # atomic: a file that exists is complete
            return StoredUpload(asset_id, dest, size, format)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            shutil.copyfile(source, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    return StoredUpload(asset_id, dest, size, format)


def upload_event(stored: StoredUpload, *, batch_id: str, display_name: str | None) -> FileDiscovered:
    st = stored.path.stat()
    return FileDiscovered(
        event_id=new_id(), batch_id=batch_id, lane="interactive", source="upload", path=str(stored.path),
        size=st.st_size, mtime_ns=st.st_mtime_ns, discovered_at=now(), display_name=display_name,
    )


async def publish_upload(prod: AIOKafkaProducer, topics: Topics, event: FileDiscovered) -> ExpressRequest:
    """Send on the interactive lane and wait for the broker's acknowledgement; returns the record as the broker
    holds it (where it went, and its bytes), which is what an express delivery hands to the worker."""
    value, key = encode(event), event.path.encode()
    meta = await prod.send_and_wait(topics.t1_interactive, value, key=key)
    return ExpressRequest(meta.topic, meta.partition, meta.offset, value, key,
                          meta.timestamp if meta.timestamp is not None and meta.timestamp >= 0 else None)
