"""Express delivery: an urgent upload rings the worker that owns it, beside the broker, never instead of it.

The upload is published on ``t1.interactive`` first, as always: the broker holds the durable copy, and offsets,
retries and dead letters work on it exactly as for any event. Then the publisher hands the same record (topic,
partition, offset, key, value) over a local socket to the worker that owns that partition, which starts the work
at once and answers with the outcome — no wait for the worker's next fetch and none for an outcome reader's.
That is worth having on the embedded broker, which answers a fetch only after part of its wait even when data
is waiting (so every hop through it costs milliseconds, and a short wait costs CPU in polls); on Kafka it saves
less, and nothing depends on it anywhere:

- The worker's :class:`OnceLedger` keys the work by the record's coordinates and bytes: whichever copy comes
  first (the express one or the fetched one) does the work, the other waits for that outcome. The fetched copy's offset
  commits only after the effects, as always; a worker that dies mid-way leaves the fetched copy to whoever
  takes its partitions over (at-least-once, idempotent effects).
- A publisher that finds no worker to ring (another host, no registration, a stale one, a refused or broken
  connection) falls back to reading the outcome from ``assets``; so does one whose worker has not answered
  within ``express_patience_s`` (frozen, or its partition gone to another worker), or answered with another
  record's outcome.

Workers register under ``<data dir>/run/express/``: one small JSON file each, naming an abstract Unix socket
and the ``t1.interactive`` partitions it owns (rewritten after every rebalance, removed on a clean stop). A
worker takes records only from processes of its own user.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import socket
import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from schemas import AssetBrowsable, AssetFailed, decode
from streams.errors import SchemaError
from streams.logs import get
from streams.settings import Settings

log = get(__name__)

_HEADER = struct.Struct(">I")
#: Largest frame either side accepts: a request is one small event record, a reply one outcome event.
MAX_FRAME = 4 * 1024 * 1024


class ExpressRequest(msgspec.Struct, frozen=True):
    """One published record, as the broker holds it: where it is, and its bytes."""

    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None
    timestamp_ms: int | None = None
    headers: list[tuple[str, bytes]] = []

    @property
    def identity(self) -> RecordKey:
        return record_key(self.topic, self.partition, self.offset, self.value)


#: What the :class:`OnceLedger` keys a record by (see :func:`record_key`).
RecordKey = tuple[str, int, int, int]


def record_key(topic: str, partition: int, offset: int, value: bytes | None) -> RecordKey:
    """A record's place and (a hash of) its bytes: the two copies of one record (express and fetched) match; a
    record at a place where another one was (a broker restarted with memory storage, a topic made again)
    does not, so it is never answered with the other's outcome nor skipped."""
    return topic, partition, offset, hash(value or b"")


_request_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(ExpressRequest)


async def _write_frame(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(_HEADER.pack(len(data)) + data)
    await writer.drain()


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if size > MAX_FRAME:
        raise ValueError(f"express frame of {size} bytes is over the {MAX_FRAME} limit")
    return await reader.readexactly(size)


def registry_dir(settings: Settings) -> Path:
    return settings.data_path / "run" / "express"


# -- the worker's side ------------------------------------------------------------------------------------------


@dataclass
class _Message:
    """The parts of a faust message the event handler reads, for a record that came by express."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp: float | None


@dataclass
class ExpressEvent:
    """A record handed over by express, shaped like the faust event the handler expects from a stream."""

    value: bytes
    message: _Message

    @classmethod
    def of(cls, request: ExpressRequest) -> ExpressEvent:
        timestamp = request.timestamp_ms / 1000 if request.timestamp_ms is not None else None
        return cls(request.value, _Message(request.topic, request.partition, request.offset, request.key,
                                           list(request.headers), timestamp))


class _Abandoned(Exception):
    """The copy doing the work was cancelled before it finished: the waiting copy does it instead."""


@dataclass
class _Entry:
    """One record in the ledger: since when, its outcome (to come), and how many of its copies arrived."""

    at: float
    outcome: asyncio.Future
    copies: int = 1


@dataclass
class OnceLedger:
    """Runs the work for one record once, however many copies of it arrive (express and fetched).

    Entries are forgotten once both copies were seen, or after ``ttl_s`` (the fetched copy may have gone to
    another worker after a rebalance), and no more than ``max_entries`` are kept, but for records still in work:
    forgotten, the other copy of such a record would run its work again.
    """

    ttl_s: float = 300.0
    max_entries: int = 10_000
    _entries: OrderedDict[RecordKey, _Entry] = field(default_factory=OrderedDict)

    async def run(self, key: RecordKey, work: Callable[[], Awaitable[Any]]) -> Any:
        """The outcome of ``work`` for the record ``key`` names (:func:`record_key`): run now, or awaited
        from the copy that is running it (or ran it)."""
        while True:
            entry = self._entries.get(key)
            if entry is None:
                break
            entry.copies += 1
            if entry.copies >= 2 and entry.outcome.done():
                self._entries.pop(key, None)
            try:
                return await asyncio.shield(entry.outcome)
            except _Abandoned:
                continue
        self._expire()
        entry = self._entries[key] = _Entry(time.monotonic(), asyncio.get_running_loop().create_future())
        try:
            result = await work()
        except BaseException:
            self._forget(key, entry)
            entry.outcome.set_exception(_Abandoned())
            entry.outcome.exception()  # retrieved: nobody may be waiting
            raise
        entry.outcome.set_result(result)
        if entry.copies >= 2:  # the other copy came meanwhile: nothing more to wait for
            self._forget(key, entry)
        return result

    def _forget(self, key: RecordKey, entry: _Entry) -> None:
        """Forget ``entry``, but not a newer entry of the same record that took its place."""
        if self._entries.get(key) is entry:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self) -> None:
        """Make room for one more entry: forget the finished entries past ``ttl_s``, and the oldest finished ones
        while ``max_entries`` are kept. An entry still in work stays, past its time or the cap (as many as the
        work in flight: a few): its other copy waits for its outcome."""
        cutoff = time.monotonic() - self.ttl_s
        surplus = len(self._entries) + 1 - self.max_entries
        finished = []
        for key, entry in self._entries.items():  # oldest first
            if surplus <= 0 and entry.at >= cutoff:
                break
            if entry.outcome.done():
                finished.append(key)
                surplus -= 1
        for key in finished:
            del self._entries[key]


#: While a record that came by express is worked on (:func:`answer_early`): where its outcome goes early.
_early: ContextVar[asyncio.Future | None] = ContextVar("express_early", default=None)


def tell_early(outcome: Any) -> None:
    """Give ``outcome`` to the express caller waiting for this work, now, before the rest of the work (publishing
    it) is done; a no-op for work that did not come by express."""
    told = _early.get()
    if told is not None and not told.done():
        told.set_result(outcome)


def told_early() -> bool:
    """Whether this work's express caller has its outcome already: a failure after that is not the record's to
    record (its caller was answered), but the work's to finish (see :func:`answer_early`)."""
    told = _early.get()
    return told is not None and told.done()


async def answer_early(work: Callable[[], Awaitable[Any]], finishing: set[asyncio.Task]) -> Any:
    """Run ``work``: what it tells through :func:`tell_early` as soon as it does, else what it returns.

    Work that told goes on to its end as a task in ``finishing``. It must not record a failure after that (its
    caller was told otherwise; see :func:`told_early`) but raise it: the ledger's outcome, which the record's
    fetched copy waits for, then says the work was abandoned, and that copy finishes it (tier 1 publishes the
    outcome told); the failure is logged here. Cancelling the caller cancels work that has told nothing yet."""
    told: asyncio.Future = asyncio.get_running_loop().create_future()

    async def run() -> Any:
        _early.set(told)  # in this task's context only
        return await work()

    task = asyncio.ensure_future(run())
    try:
        await asyncio.wait({task, told}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        task.add_done_callback(_finished(finishing))  # whatever it ends with is taken
        raise
    if not told.done():
        return task.result()
    if task.done():  # told, then failed before it yielded (a send refused at once): the answer stands
        _finished(finishing)(task)
    else:
        finishing.add(task)
        task.add_done_callback(_finished(finishing))
    return told.result()


def _finished(finishing: set[asyncio.Task]) -> Callable[[asyncio.Task], None]:
    def done(task: asyncio.Task) -> None:
        finishing.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("express_work_failed_after_answer", error=repr(exc))

    return done


class ExpressServer:
    """The worker's end: accepts express records for ``topic`` and answers each with its outcome's bytes.

    ``serve`` runs one record (through the ledger) and returns the outcome event's encoded bytes, or ``None``
    when there is none to give (the caller then falls back to reading ``assets``).
    """

    def __init__(self, settings: Settings, topic: str, serve: Callable[[ExpressRequest], Awaitable[bytes | None]],
                 *, concurrency: int = 2) -> None:
        self.settings, self.topic, self._serve = settings, topic, serve
        self.address = f"\0damflow-express-{uuid.uuid4().hex}"  # abstract socket: no file, no path length limit
        self.registration = registry_dir(settings) / f"{socket.gethostname()}-{os.getpid()}.json"
        self._slots = asyncio.Semaphore(concurrency)
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task] = set()
        self._closing = False
        self.served = 0

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._handle, path=self.address)

    def publish(self, partitions: set[int]) -> None:
        """Announce the partitions of ``topic`` this worker owns now (after every rebalance)."""
        directory = self.registration.parent
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{self.registration.name}.tmp"
        tmp.write_text(json.dumps({"address": self.address, "host": socket.gethostname(), "pid": os.getpid(),
                                   "topic": self.topic, "partitions": sorted(partitions)}))
        os.replace(tmp, self.registration)

    def withdraw(self) -> None:
        """Remove this worker's registration, so that nobody rings it any more."""
        self.registration.unlink(missing_ok=True)

    async def stop(self) -> None:
        """Stop taking records, and drop those in work: their fetched copies stay uncommitted, so whoever
        takes the partitions over does them (``wait_closed`` waits for open connections since Python 3.12, so
        without this a stopping worker would wait for every express record in work)."""
        self.withdraw()
        self._closing = True  # a connection accepted but not yet handled is dropped as it starts
        if self._server is not None:
            self._server.close()
            for connection in list(self._connections):
                connection.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not same_user(writer.get_extra_info("socket")):
            log.warning("express_refused", reason="connection from another user")
            writer.close()
            return
        this = asyncio.current_task()
        if this is not None:
            self._connections.add(this)
        try:
            while not self._closing:
                try:
                    frame = await _read_frame(reader)
                except asyncio.IncompleteReadError:
                    return  # the publisher is done with this connection
                reply = b""
                try:
                    request = _request_decoder.decode(frame)
                except msgspec.DecodeError as exc:
                    log.warning("express_request_unreadable", error=str(exc))
                    return
                if request.topic == self.topic:
                    async with self._slots:
                        reply = await self._serve(request) or b""
                    self.served += 1
                await _write_frame(writer, reply)
        except (ConnectionError, ValueError) as exc:
            log.info("express_connection_lost", error=repr(exc))
        finally:
            self._connections.discard(this)  # type: ignore[arg-type]
            writer.close()


def _alive(pid: object) -> bool:
    """Whether a process with this id runs (on this host); ``True`` when that cannot be told."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but another user's
        return True
    return True


def same_user(sock: socket.socket | None) -> bool:
    """Whether the peer of a Unix socket runs as this process's user (abstract sockets have no file modes)."""
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(  # type: ignore[union-attr]
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    except (OSError, AttributeError):
        return False
    return uid == os.getuid()


# -- the publisher's side ---------------------------------------------------------------------------------------


class ExpressClient:
    """The publisher's end: finds the worker owning a record's partition and asks it for the outcome."""

    def __init__(self, settings: Settings) -> None:
        self.directory = registry_dir(settings)
        self.host = socket.gethostname()

    def owner(self, topic: str, partition: int) -> str | None:
        """The socket address of the worker on this host that owns ``partition`` of ``topic``, if any."""
        return next(iter(self.owners(topic, partition)), None)

    def owners(self, topic: str, partition: int) -> list[str]:
        """The addresses of the workers on this host registered for ``partition`` of ``topic``, newest
        registration first. A registration left by a worker that died without withdrawing it (killed) is
        removed, so it cannot hide the live owner; during a rebalance two may claim the partition for a moment."""
        try:
            entries = list(self.directory.glob(f"{glob.escape(self.host)}-*.json"))  # not other hosts' files
        except OSError:
            return []
        found: list[tuple[float, str]] = []
        for path in entries:
            try:
                reg, mtime = json.loads(path.read_text()), path.stat().st_mtime
            except (OSError, ValueError):
                continue
            if reg.get("host") != self.host:
                continue
            if not _alive(reg.get("pid")):
                with contextlib.suppress(OSError):  # somebody else's to sweep, then
                    path.unlink(missing_ok=True)
                continue
            if reg.get("topic") == topic and partition in reg.get("partitions", ()) and reg.get("address"):
                found.append((mtime, reg["address"]))
        return [address for _, address in sorted(found, reverse=True)]

    async def _send(self, request: ExpressRequest) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The open connection to the record's worker, the record sent on it; ``None`` when nobody could be
        rung (no owner registered, refused, or lost while sending)."""
        for address in self.owners(request.topic, request.partition):
            try:
                reader, writer = await asyncio.open_unix_connection(path=address)
            except OSError:
                continue  # gone meanwhile: the next one, if any
            try:
                await _write_frame(writer, _request_encoder.encode(request))
            except OSError:
                writer.close()
                continue
            return reader, writer
        return None

    async def hand_over(self, request: ExpressRequest) -> bool:
        """Give the record to its worker without waiting for the outcome (an upload that does not wait): the
        work starts now instead of at the worker's next fetch. ``False`` when there was nobody to ring."""
        connection = await self._send(request)
        if connection is None:
            return False
        connection[1].close()  # the worker's answer, when it comes, goes nowhere: nobody waits for it
        return True

    async def outcome(self, request: ExpressRequest, timeout: float) -> AssetBrowsable | AssetFailed | None:
        """The record's tier-1 outcome from its worker; ``None`` when no worker could be asked or gave none.

        Raises ``TimeoutError`` when the worker took the record but did not finish within ``timeout``.
        """
        connection = await self._send(request)
        if connection is None:
            return None
        reader, writer = connection
        try:
            reply = await asyncio.wait_for(_read_frame(reader), timeout)
        except TimeoutError:
            raise  # (an OSError too, but not a lost connection: the worker is still at it)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            return None
        finally:
            writer.close()
        if not reply:
            return None
        try:
            event = decode(reply)
        except SchemaError:
            return None
        return event if isinstance(event, AssetBrowsable | AssetFailed) else None
