"""The folder scanner: walks a folder and publishes one ``FileDiscovered`` per image file on ``t1.<lane>``.

- Image files are recognised by their content (magic bytes); a file with an image extension whose content is
  not recognised (empty, truncated, mislabelled) is still published, so it ends as a recorded failure rather
  than a silently skipped file. Anything else (notes, sidecars) is counted as skipped. A file that is gone
  between the directory's listing and its stat was never there to find: it is logged only.
- Links are followed only while they stay inside the root; directory loops are visited once. A file that
  vanishes or cannot be read during the walk, or a link whose target is gone, is still published when it is
  named like an image, so tier 1 records why; a file whose name is not valid UTF-8 (no event can carry it), a
  directory that cannot be read (whose files are unknown), and an entry named like an image that cannot be looked
  at or is a FIFO, socket or device (never opened), is recorded as failed right here (``AssetFailed``:
  ``unrepresentable_path``, ``source_unreadable``, ``unsupported_format``); other special files are counted as
  skipped: nothing found goes unaccounted.
- Every send is checked: a file the broker did not take fails the scan (``BrokerError``), it is never reported
  as published.
- A file the catalog already shows as browsable with the same size and mtime is skipped (unchanged).
- The running total goes out on ``progress`` as ``BatchScanned`` while the walk goes on, so a progress bar can
  show a total before the scan ends.
- Backpressure: when the workers' lag on the lane reaches ``scan_high_water`` the walk itself stops (nothing is
  read ahead) until the lag is down to ``scan_low_water``; ``BatchScanned.paused`` says so meanwhile.
- A scan stopped part-way (cancelled: ``ingest --wait --timeout`` ran out, Ctrl-C) closes its batch with the files
  the broker took so far, so the batch can finish; the rest of the folder waits for the next ingest of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from agents.sniff import sniff_file
from consumers.catalog import Catalog
from schemas import AssetFailed, BatchScanned, FileDiscovered, encode, new_id, now
from streams.errors import (
    BrokerError, DamflowError, SourceMissing, SourceUnreadable, UnrepresentablePath, UnsupportedFormat,
)
from streams.kafka import LagProbe, passes
from streams.logs import get
from streams.settings import Settings
from streams.topics import Topics

log = get(__name__)

IMAGE_SUFFIXES = frozenset(
    ".jpg .jpeg .jpe .jfif .png .apng .gif .webp .tif .tiff .bmp .avif .heic .heif .jxl .mpo .psd .ico".split()
)
_REPORT_INTERVAL_S = 0.25
#: How long a scan waits out broker errors that pass by themselves while it reads the workers' lag.
LAG_PATIENCE_S = 60.0
#: How long a scan stopped part-way tries to close its batch (see ``scan``) before it leaves it open.
CLOSE_PATIENCE_S = 10.0


@dataclass(frozen=True)
class ScanResult:
    batch_id: str
    root: str
    found: int
    skipped_unchanged: int
    skipped_other: int


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class Unreadable:
    """Something the walk found but could not read: a directory (whose files are therefore unknown), a plain
    file, an entry of unknown type (which may be a directory), or a special file (a FIFO, socket or device:
    never opened, as a FIFO would wait for a writer)."""

    error: OSError
    kind: Literal["directory", "file", "entry", "special"]


#: What :func:`walk` yields: a path, and its stat or why it cannot be read.
Found = tuple[str, os.stat_result | Unreadable]


def walk(root: Path, *, skip: Iterable[Path] = ()) -> Iterator[Found]:
    """Yield (path, stat) of every regular file under ``root``, following links only within ``root``; and
    (path, ``Unreadable``) of each directory or entry that exists but cannot be read. What vanished meanwhile
    (between listing and looking) is not there to find: it is logged only. The directories in ``skip`` are not
    walked: damflow's data directory, should it lie under the root (``damflow up`` started in the folder, which
    is then ingested), held thumbnails that became new assets at every ingest, each with thumbnails of its own.
    A link to a file inside the root is not followed either: the walk finds the file itself (it was published
    twice).

    Memory stays flat however many files a folder holds: a directory's listing is read as it is walked, in the
    file system's order, never held whole (sorting it held 25 MB for a flat folder of 100k files before the
    first one). What is kept is the directories still to walk. Nothing depends on the order: each file is an
    event of its own, keyed by its path, and a batch is counted, not sequenced; a scan stopped part-way is not
    resumed but done again, what became browsable meanwhile skipped as unchanged."""
    real_root = os.path.realpath(root)
    seen_dirs: set[tuple[int, int]] = set()
    skipped: set[tuple[int, int]] = set()
    for directory in skip:
        with contextlib.suppress(OSError):  # none yet: nothing to skip
            st = os.stat(directory)
            skipped.add((st.st_dev, st.st_ino))
    stack = [real_root]
    while stack:
        directory = stack.pop()
        try:
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in seen_dirs:
                continue
            if (st.st_dev, st.st_ino) in skipped:
                log.info("scan_skipped_data_dir", path=printable(directory))
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            listing = os.scandir(directory)
        except FileNotFoundError as exc:
            log.info("scan_vanished_dir", path=printable(directory), error=str(exc))
            continue
        except OSError as exc:
            log.warning("scan_unreadable_dir", path=printable(directory), error=str(exc))
            yield directory, Unreadable(exc, "directory")
            continue
        subdirs = []
        with listing:
            while True:
                try:
                    entry = next(listing, None)
                except OSError as exc:  # the listing broke off part-way: the rest of the directory is unknown
                    log.warning("scan_unreadable_dir", path=printable(directory), error=str(exc))
                    yield directory, Unreadable(exc, "directory")
                    break
                if entry is None:
                    break
                yield from _look_at(entry, real_root, subdirs)
        stack.extend(reversed(subdirs))


def _look_at(entry: os.DirEntry, real_root: str, subdirs: list[str]) -> Iterator[Found]:
    """What :func:`walk` yields for one entry of a listing; a directory to walk is added to ``subdirs``."""
    path = entry.path
    try:
        if entry.is_symlink():
            target = os.path.realpath(path)
            if not _inside(target, real_root):
                log.info("scan_link_outside_root", path=path, target=target)
                return
            if os.path.isfile(target):  # the walk finds it under its own name (unless in a directory skipped)
                return
            path = target
        if entry.is_dir(follow_symlinks=True):
            subdirs.append(path)
        elif entry.is_file(follow_symlinks=True):
            yield path, os.stat(path)
        elif os.path.exists(path):  # neither a directory nor a file: a FIFO, socket or device
            yield path, Unreadable(OSError(errno.EINVAL, "not a regular file (a FIFO, socket or device)"), "special")
        else:  # a link whose target is gone: tier 1 says so
            yield entry.path, entry.stat(follow_symlinks=False)
    except FileNotFoundError as exc:  # vanished between listing and stat
        log.info("scan_vanished_entry", path=printable(path), error=str(exc))
    except OSError as exc:
        log.warning("scan_unreadable_entry", path=printable(path), error=str(exc))
        yield path, Unreadable(exc, "file" if _known_file(entry) else "entry")


def _known_file(entry: os.DirEntry) -> bool:
    """Whether the listing itself says ``entry`` is a plain file (not a directory, link or unknown type)."""
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False


def looks_like_image(path: str) -> bool:
    try:
        if sniff_file(Path(path)) is not None:
            return True
    except (OSError, DamflowError):
        pass  # gone or unreadable now: let tier 1 record why, if it is named like an image
    return _named_like_image(path)


def _named_like_image(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES


def printable(path: str) -> str:
    """``path`` as valid text: bytes of a name that is not UTF-8 written as ``\\xNN``. For anything that shows a
    path (logs, events, the CLI's reports): Python keeps such bytes as lone surrogates, which no UTF-8 stream
    can write."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


async def scan(
    settings: Settings, topics: Topics, bootstrap: str, prod: AIOKafkaProducer, root: Path, *,
    lane: str = "batch", batch_id: str | None = None,
) -> ScanResult:
    """Walk ``root`` and publish its image files as one batch; returns once the broker has them all. Cancelled
    part-way, it closes the batch with what the broker took so far (see ``close_stopped``) before it ends."""
    if not root.is_dir():
        raise SourceMissing(f"not a directory: {root}", path=str(root))
    batch_id = batch_id or new_id()
    real_root = os.path.realpath(root)
    if not _is_text(real_root):  # every event of the batch names it
        raise UnrepresentablePath("the folder's path is not valid UTF-8: rename it to ingest it",
                                  path=printable(real_root))
    # asked file by file (an index lookup) whether it is unchanged: loading every known path under the root held
    # 22 MB for 100k files, and a lookup sees what became browsable since the scan began
    catalog = Catalog(settings.catalog_path, readonly=True) if settings.catalog_path.exists() else None
    started = now()
    found = unchanged = other = 0
    last_report = time.monotonic()
    topic = topics.tier1(lane)
    sent: list[asyncio.Future] = []  # deliveries not yet checked
    published: dict[TopicPartition, int] = {}  # per partition of the lane, the offset after our last delivered

    async def send(to: str, value: bytes, key: bytes) -> None:
        sent.append(await prod.send(to, value, key=key))

    async def delivered() -> None:
        """Returns once the broker has everything sent so far; raises if it refused or lost any of it. The sends
        stay in ``sent`` until they are checked: a scan stopped meanwhile (cancelled) checks them when it closes
        its batch, and ``asyncio.wait``, unlike ``gather``, does not cancel them with it."""
        await prod.flush()
        futures = list(sent)
        if futures:
            await asyncio.wait(futures)
        del sent[: len(futures)]
        for future in futures:
            if future.cancelled() or future.exception() is not None:
                outcome = future.exception() if not future.cancelled() else asyncio.CancelledError()
                raise BrokerError(f"the broker did not take a message of batch {batch_id}: {outcome!r}") \
                    from outcome
            outcome = future.result()
            if outcome.topic == topic:
                tp = outcome.topic_partition
                published[tp] = max(published.get(tp, 0), outcome.offset + 1)

    async def report(complete: bool = False, paused: bool = False) -> None:
        event = BatchScanned(
            batch_id=batch_id, lane=lane, root=real_root, found=found, skipped_unchanged=unchanged,
            skipped_other=other, complete=complete, paused=paused, started_at=started, scanned_at=now(),
        )
        await send(topics.progress, encode(event), batch_id.encode())

    async def lag(probe: LagProbe) -> int:
        """The workers' lag. A broker error that passes by itself (a coordinator moving, a connection lost and
        made again) is waited out where the scan stands, for up to ``LAG_PATIENCE_S``: one such answer ended the
        whole scan half-way, its total never final."""
        pause, deadline = 0.1, time.monotonic() + LAG_PATIENCE_S
        while True:
            try:
                return await probe.lag(published)
            except Exception as exc:
                if not passes(exc) or time.monotonic() >= deadline:
                    raise BrokerError(f"cannot tell how far the workers are behind on {topic} (batch {batch_id}): "
                                      f"{exc!r}") from exc
                log.warning("scan_lag_unknown", batch_id=batch_id, error=repr(exc), again_in_s=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)

    async def backpressure(probe: LagProbe) -> None:
        """Stop here while the workers are too far behind; nothing more is read or published meanwhile."""
        behind = await lag(probe)
        if behind < settings.scan_high_water:
            return
        log.info("scan_paused", batch_id=batch_id, lag=behind, high_water=settings.scan_high_water)
        await report(paused=True)
        while behind > settings.scan_low_water:
            await asyncio.sleep(settings.scan_lag_poll_s)  # polling the group's lag: there is no event to await
            behind = await lag(probe)
        log.info("scan_resumed", batch_id=batch_id, lag=behind)
        await report()

    async def close() -> None:
        """Close the batch: its files all delivered, then its final count (``complete``), delivered too."""
        await delivered()
        await report(complete=True)
        await delivered()

    async def close_stopped() -> None:
        """A scan stopped part-way (cancelled: ``ingest --wait`` timed out, Ctrl-C) closes its batch with the files
        the broker took so far, so its progress can finish rather than wait for a total that never comes; the
        rest of the folder is not published (ingesting it again picks it up: what is browsable by then is
        skipped as unchanged). Bounded by ``CLOSE_PATIENCE_S``: a broker that is gone leaves the batch open."""
        try:
            async with asyncio.timeout(CLOSE_PATIENCE_S):
                await close()
        except (BrokerError, KafkaError, OSError, TimeoutError) as exc:
            log.warning("scan_stopped_unclosed", batch_id=batch_id, found=found, error=repr(exc))
        else:
            log.info("scan_stopped", batch_id=batch_id, root=real_root, found=found, unchanged=unchanged,
                     other=other)

    try:
        await report()
        async with LagProbe(bootstrap, settings.group_id, topic) as probe:
            for path, st in walk(root, skip=(settings.data_path,)):
                if time.monotonic() - last_report > _REPORT_INTERVAL_S:
                    # the walk is synchronous (listings, stats, sniffs, catalog lookups): over a long run of
                    # skipped files, nothing else awaited, a Ctrl-C or a timeout waited for the walk's end and the
                    # running total stood still
                    await asyncio.sleep(0)
                    await report()
                    last_report = time.monotonic()
                failure: DamflowError | None = None  # found, but recorded as failed right here
                if isinstance(st, Unreadable):
                    if st.kind in ("file", "special") and not _named_like_image(path):
                        other += 1  # as for any file that is not an image
                        continue
                    if st.kind == "special":  # named like an image, but no file to ingest
                        failure = UnsupportedFormat(f"{st.error.strerror}: nothing to ingest",
                                                    path=printable(path))
                    else:  # what it holds is unknown
                        failure = SourceUnreadable(f"cannot read {st.kind}: {st.error.strerror or st.error}; fix "
                                                   "its permissions and ingest the folder again",
                                                   path=printable(path))
                elif not looks_like_image(path):
                    other += 1
                    continue
                elif not _is_text(path):  # never in the catalog: no query can even name it
                    failure = UnrepresentablePath("the file name is not valid UTF-8: rename the file to ingest it",
                                                  path=printable(path))
                elif catalog is not None and _unchanged(catalog, path, st):
                    unchanged += 1
                    continue
                if failure is not None:
                    await send(topics.assets, *_scan_failure(path, batch_id, lane, failure))
                else:
                    event = FileDiscovered(
                        event_id=new_id(), batch_id=batch_id, lane=lane, source="scan", path=path,
                        size=st.st_size, mtime_ns=st.st_mtime_ns, discovered_at=now(), root=real_root,
                    )
                    await send(topic, encode(event), path.encode())
                found += 1  # once sent: a scan stopped inside a send closes its batch without that file
                if found % settings.scan_report_every == 0:
                    await report()
                    last_report = time.monotonic()
                if found % settings.scan_lag_every == 0:
                    await delivered()
                    await backpressure(probe)
        await close()
    except asyncio.CancelledError:
        await close_stopped()
        raise
    finally:
        if catalog is not None:
            catalog.close()
    log.info("scan_done", batch_id=batch_id, root=real_root, found=found, unchanged=unchanged, other=other)
    return ScanResult(batch_id, real_root, found, unchanged, other)


def _unchanged(catalog: Catalog, path: str, st: os.stat_result) -> bool:
    """The catalog shows ``path`` browsable with this size and mtime (one row, by the locations' primary key)."""
    known = catalog.location(path)
    return known is not None and known[:2] == (st.st_size, st.st_mtime_ns)


def _is_text(path: str) -> bool:
    try:
        path.encode()
    except UnicodeEncodeError:  # a name that is not UTF-8, as Python keeps it (surrogate escapes)
        return False
    return True


def _scan_failure(path: str, batch_id: str, lane: str, error: DamflowError) -> tuple[bytes, bytes]:
    """The recorded failure (value, key) of something the walk found but no ``FileDiscovered`` can stand for."""
    shown = printable(path)
    log.warning("scan_failed_entry", batch_id=batch_id, path=shown, code=error.code, reason=str(error))
    event = AssetFailed(
        event_id=new_id(), batch_id=batch_id, lane=lane, source="scan", tier=1, path=shown,
        error_class=type(error).__name__, error_code=error.code, reason=str(error), retriable=False,
        failed_at=(at := now()), first_failure_at=at,  # a chain of one
    )
    return encode(event), shown.encode()
