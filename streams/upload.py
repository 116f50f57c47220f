"""Interactive uploads: store the bytes content-addressed under the data directory, publish on ``t1.interactive``.

The stored copy's path is derived from the content hash only (``originals/ab/<id>.<ext>``); no name or path from
the client is ever used on disk — the client's file name is kept as ``display_name`` for people to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from aiokafka import AIOKafkaProducer
from blake3 import blake3

from agents.atomic_write import set_note, sync_to_disk
from agents.hashing import source_error
from agents.sniff import HEAD_BYTES, sniff
from schemas import BatchScanned, FileDiscovered, encode, new_id, now
from streams.errors import (
    StorageUnavailable, UnsupportedFormat, UploadEmpty, UploadNotAnImage, UploadRejected, UploadTooLarge,
)
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


#: Bytes read from a local source at a time while it is spooled.
COPY_BYTES = 1024 * 1024


def _umasked_mode() -> int:
    """The mode a file created here would get (0666 less the umask), read without changing the umask."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o644


#: Stored originals get the mode of any file this process writes, not a temp file's 0600.
_STORED_MODE = _umasked_mode()


def spool_dir(settings: Settings) -> Path:
    """Where uploads are spooled before they are stored (temp names, made up here; same filesystem as the store,
    so storing is a rename). Files left by a process that died mid-upload are swept by ``damflow up``."""
    return settings.data_path / "incoming"


@contextlib.contextmanager
def _storing() -> Iterator[None]:
    """An error of damflow's own disk while storing is typed as such: not the user's file's fault."""
    try:
        yield
    except OSError as exc:
        raise StorageUnavailable(f"cannot store uploads now: {exc.strerror or exc}") from exc


class Spool:
    """One upload's bytes on their way into the store: written to a temp file under ``directory`` while the size
    limit is held, the head sniffed (a non-image is refused before the rest is read) and the content hashed, so
    storing it afterwards is a rename, not a second read. The stored bytes are exactly the hashed ones, even if
    the source changes meanwhile. Used by the HTTP endpoint (a request body) and ``damflow upload`` (a file).
    """

    def __init__(self, directory: Path, limit: int, name: str | None) -> None:
        with _storing():
            directory.mkdir(parents=True, exist_ok=True)
            fd, path = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=directory)
            try:
                os.fchmod(fd, _STORED_MODE)
            except OSError:
                os.close(fd)
                Path(path).unlink(missing_ok=True)
                raise
        self.path = Path(path)
        self._file = os.fdopen(fd, "wb")
        self.limit = limit
        self.name = name
        self.size = 0
        self.format: str | None = None
        self.asset_id = ""
        #: When the last byte was in, hashed (epoch s).
        self.received_at = 0.0
        self._head = b""
        self._hasher = blake3()

    def write(self, chunk: bytes) -> None:
        """Take the next chunk (a page-cache write: cheaper than a hop to a thread)."""
        self.size += len(chunk)
        if self.size > self.limit:
            raise UploadTooLarge(f"{self.name or 'upload'} exceeds the upload limit of {self.limit} bytes")
        if len(self._head) < HEAD_BYTES:
            self._head += chunk[: HEAD_BYTES - len(self._head)]
            if len(self._head) >= HEAD_BYTES:
                self._sniff()  # refuse a non-image before reading the rest of it
        self._hasher.update(chunk)
        with _storing():
            self._file.write(chunk)

    def finish(self) -> None:
        """All bytes are in: judge what came if it was shorter than a sniff, and fix the content hash."""
        if self.size == 0:
            raise UploadEmpty(f"{self.name}: empty file" if self.name else "empty file")
        if self.format is None:
            self._sniff()
        with _storing():
            self._file.close()  # the last buffered bytes are written here
        self.asset_id = self._hasher.hexdigest()
        self.received_at = now()

    def store(self, settings: Settings) -> StoredUpload:
        """Move the finished spool into the store: hashed and sniffed on the way in, so this is a rename, not a
        second read. The name comes from the hash alone, so the same content uploaded twice is stored once.

        A file already under the name is kept when it has the size of these bytes: replacing it would put an
        unsynced copy under a name another upload may already have been answered for. One of another size is
        what a power loss left of a store that was never synced (:func:`make_durable`), and is replaced
        (atomically: a reader keeps what it opened); a store whose sync failed was removed then."""
        fmt = self.format or ""
        dest = settings.originals_dir / self.asset_id[:2] / f"{self.asset_id}{_EXT.get(fmt, '.bin')}"
        with _storing():
            if _stored_size(dest) == self.size:
                self.path.unlink(missing_ok=True)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.path, dest)
        return StoredUpload(self.asset_id, dest, self.size, fmt)

    def discard(self) -> None:
        """Close and remove the temp file (a no-op once it was stored)."""
        with contextlib.suppress(OSError):  # a failed flush was reported when it happened
            self._file.close()
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)

    def _sniff(self) -> None:
        self.format = sniff(self._head)
        if self.format is None:
            raise UploadNotAnImage(f"{self.name + ': ' if self.name else ''}not a recognised image (judged by its "
                                   "content, not its name or declared type)")


def _stored_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def make_durable(stored: StoredUpload) -> None:
    """Sync a stored original to disk: its bytes, its name and its directory's name in the store, so that an
    upload answered as taken survives a power loss (``Settings.upload_fsync``). Blocks on the disk.

    Called once the original is in place, and before the upload is answered (the HTTP endpoint publishes it
    meanwhile, so the sync costs an urgent file no time). Should the power fail before the sync ends, the
    upload was not answered and its client sends it again; a short file left under its name is replaced then
    (see :meth:`Spool.store`), and the event published meanwhile, which met that short file, was dead-lettered
    and can be replayed. A sync that fails removes the file: after a write error Linux marks its pages clean,
    so it would read whole, and a later sync of it succeed, although its bytes never reached the disk."""
    try:
        with _storing():
            sync_to_disk(stored.path)
            for directory in stored.path.parents[:3]:  # its name; the prefix directory's; the store's, if new
                sync_to_disk(directory, os.O_DIRECTORY)
    except StorageUnavailable:
        with contextlib.suppress(OSError):
            stored.path.unlink()
        raise


def _read_source(src: BinaryIO, source: Path) -> bytes:
    try:
        return src.read(COPY_BYTES)
    except OSError as exc:
        raise source_error(exc, source) from exc  # typed as when hashing


def _open_regular(source: Path) -> BinaryIO:
    """``source`` opened to read, if it is a regular file. Opened without blocking and looked at before any read:
    a FIFO opened to read waits for a writer, for good (``damflow upload pipe.png`` hung), and a device or a
    directory holds no file to store. Anything else is refused as such (``UnsupportedFormat``, as the scanner
    records a FIFO named like an image); an error opening it is the source's, typed as when hashing."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise source_error(exc, source) from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsupportedFormat(f"not a regular file ({_kind(mode)}): nothing to upload", path=str(source))
        os.set_blocking(fd, True)  # no effect on a regular file's reads; as any file opened to read
        return os.fdopen(fd, "rb")
    except OSError as exc:
        os.close(fd)
        raise source_error(exc, source) from exc
    except BaseException:
        os.close(fd)
        raise


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "a special file"


def store_original(settings: Settings, source: Path) -> StoredUpload:
    """Copy the local file ``source`` into the content-addressed originals store (atomically; once per content),
    reading it once: judged, size-limited and hashed as it is copied (see :class:`Spool`)."""
    spool = Spool(spool_dir(settings), settings.upload_max_bytes, source.name)
    try:
        with _open_regular(source) as src:
            while chunk := _read_source(src, source):
                spool.write(chunk)
        spool.finish()
        stored = spool.store(settings)
        if settings.upload_fsync:
            make_durable(stored)
        return stored
    except UploadRejected as exc:
        raise type(exc)(exc.message, path=str(source)) from None
    finally:
        spool.discard()


def display_name(raw: str | None) -> str | None:
    """The client's file name for people to read: last path component, printable, at most 255 characters.

    Never used on disk; trimmed so a name like ``../../etc/evil.png`` reads as ``evil.png``. A local name that
    is not UTF-8 (kept by Python as surrogate escapes, which no event can carry) reads with U+FFFD for each bad
    byte; any other lone surrogate reads as ``?``.
    """
    if not raw:
        return None
    try:
        raw = raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a lone surrogate that escapes no byte
        raw = raw.encode("utf-8", "replace").decode("utf-8")
    name = "".join(ch for ch in raw.replace("\\", "/").rsplit("/", 1)[-1] if ch.isprintable()).strip()[:255]
    return None if name in ("", ".", "..") else name


#: The extended attribute of a stored original naming the upload batch that sent it: a reconcile that finds an
#: original the catalog never heard of (its events lost with the broker) sends it on under that batch.
BATCH_NOTE = "user.damflow.batch"


def upload_event(stored: StoredUpload, *, batch_id: str, display_name: str | None) -> FileDiscovered:
    """The event of a stored upload, and its batch noted on the stored file (see :data:`BATCH_NOTE`)."""
    set_note(stored.path, BATCH_NOTE, batch_id.encode())
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


async def close_batch(prod: AIOKafkaProducer, topics: Topics, batch_id: str, published: int, started_at: float, *,
                      lane: str = "interactive", first_tier: int = 1) -> asyncio.Future:
    """Say on ``progress`` that ``batch_id`` is complete with ``published`` files, as the scanner does at the end
    of a scan: without it a batch of uploads (or a reprocess) never counted as finished, its total never final.
    Returns the send's delivery future (awaiting it raises what the broker answered)."""
    event = BatchScanned(batch_id=batch_id, lane=lane, root="", found=published, complete=True,
                         started_at=started_at, scanned_at=now(), first_tier=first_tier)
    return await prod.send(topics.progress, encode(event), key=batch_id.encode())
