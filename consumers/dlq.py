"""Dead-letter topics for people: list, inspect, replay and purge what failed.

Letters are read straight from ``t<tier>.dlq`` (start to current end, no consumer group). What has been done to
a letter — replayed or purged — is recorded in a small ledger (``dlq.sqlite`` in the data directory), keyed by
the letter's topic/partition/offset and a fingerprint of its bytes, which makes ``replay`` idempotent: replaying
twice sends once. (The fingerprint tells a new letter from an old one at the same offset: the embedded broker
keeps topics in memory, so after a restart its offsets start again from 0 while the ledger stays.) A replayed
event (what the failed tier consumes: the ``FileDiscovered`` for tier 1, the asset's ``AssetBrowsable`` for
tier 2, its ``AssetIndexed`` for tier 3) goes back to its topic under its key, keeps its event id and batch (so
progress counts it once) and gets its ``replay_count`` raised by one (a file also ``source="replay"``); past
``Settings.replay_cap`` it is refused, so nothing loops forever. Two replays at once send each letter once: each
claims a letter in the ledger before sending it (:meth:`Ledger.claim`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import math
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from schemas import AssetBrowsable, AssetIndexed, DeadLetter, FileDiscovered, decode, encode, now
from streams.errors import DamflowError, PermanentError
from streams.kafka import partitions_of, start_client, stop_consumer
from streams.settings import Settings
from streams.topics import TIERS, Topics


class BadFilter(PermanentError):
    code = "bad_filter"


#: A replay's claim on a letter older than this is a crashed run's, and another run may take the letter. A claim
#: is held for one send, which the producer's request timeout (40 s by default) bounds far below this.
CLAIM_STALE_S = 600.0


#: How much of a letter that is no envelope ``show`` prints (base64 of its first bytes).
_RAW_SHOWN = 4096


@dataclass
class Letter:
    tier: int
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    envelope: DeadLetter | None
    #: Why the envelope itself could not be read (it should never happen; kept visible if it does).
    unreadable: str | None = None
    #: The letter's own bytes when they are no envelope: ``show`` prints their start, to look into.
    raw: bytes | None = None
    #: The whole original value and key, read back from its topic (:func:`read_back`), when the envelope holds
    #: only part of them.
    fetched: bytes | None = None
    fetched_key: bytes | None = None
    read_back_tried: bool = False
    #: A hash of the letter's bytes: tells it from another letter that had the same offset before a restart.
    fingerprint: str = ""
    status: str = "pending"
    history: list[dict] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.tier}:{self.partition}:{self.offset}"

    @property
    def replayed(self) -> bool:
        """Sent again before, whatever was done to it since: its status says "purged" once it is also purged, and a
        purge does not undo a send (reading the status alone, every replay of such a letter sent it again)."""
        return self.status == "replayed" or any(h["action"] == "replayed" for h in self.history)

    def original_value(self) -> tuple[bytes | None, str]:
        """The original message value, or None and why it is not at hand."""
        e = self.envelope
        if e is None:
            return None, f"unreadable envelope: {self.unreadable}"
        if self.fetched is not None:
            return self.fetched, ""
        if e.payload_truncated:
            where = f"{e.received_topic or e.original_topic} offset {e.original_offset}"
            return None, (f"the letter keeps only the first bytes of the message's {e.original_size}-byte value; "
                          + (f"it could not be read back from {where} (gone past retention?)"
                             if self.read_back_tried else f"the whole of it is at {where}"))
        if e.payload_encoding != "base64":
            return e.original_payload.encode(), ""
        try:
            return base64.b64decode(e.original_payload, validate=True), ""
        except (binascii.Error, ValueError) as exc:
            return None, f"the letter's copy of the message is not valid base64: {exc}"

    def summary(self) -> dict:
        e = self.envelope
        return {
            "id": self.id, "tier": self.tier, "status": self.status,
            "error_class": e.error_class if e else "UnreadableEnvelope",
            "error_code": e.error_code if e else None,
            "message": e.error_message if e else self.unreadable,
            "path": e.file_path if e else None, "batch_id": e.batch_id if e else None,
            "attempts": e.attempts if e else None, "replay_count": e.replay_count if e else None,
            "failed_at": e.last_failure_at if e else self.timestamp_ms / 1000,
        }

    def to_dict(self) -> dict:
        return self.summary() | {
            "topic": self.topic, "partition": self.partition, "offset": self.offset,
            "envelope": msgspec.to_builtins(self.envelope) if self.envelope else None, "history": self.history,
        } | ({} if self.envelope else {"raw_start": base64.b64encode((self.raw or b"")[:_RAW_SHOWN]).decode(),
                                      "raw_size": len(self.raw or b"")})


#: The ledger's rows of one letter (``_its_rows``). A row from before fingerprints (fingerprint '') is the letter's
#: only if it was taken after the letter was written: a newer letter at the same offset is another (the broker
#: restarted meanwhile).
_ITS_ROWS = "topic=? AND partition=? AND offset=? AND (fingerprint=? OR (fingerprint='' AND at >= ?))"


def _its_rows(letter: Letter) -> tuple:
    return letter.topic, letter.partition, letter.offset, letter.fingerprint, letter.timestamp_ms / 1000


class Ledger:
    """What was done to which letter. Several CLI runs may hold it at once: each write is one short transaction, and
    a replay claims each letter (:meth:`claim`) before sending it, so that only one of them sends it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA busy_timeout=5000")
        with self._writing():
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS letter_actions (topic TEXT, partition INTEGER, offset INTEGER,"
                " fingerprint TEXT, action TEXT, at REAL, detail TEXT,"
                " PRIMARY KEY (topic, partition, offset, fingerprint, action))"
            )
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS letter_claims (topic TEXT, partition INTEGER, offset INTEGER,"
                " fingerprint TEXT, at REAL, PRIMARY KEY (topic, partition, offset, fingerprint))"
            )
            # a ledger from before fingerprints: its rows match any letter at their offset, as they did then
            if self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='actions'").fetchone():
                self.db.execute("INSERT OR IGNORE INTO letter_actions SELECT topic, partition, offset, '', action,"
                                " at, detail FROM actions")
                self.db.execute("DROP TABLE actions")

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One transaction holding SQLite's write lock from its start: what it reads no other run changes before
        it writes (a deferred one would read, then race another run to the lock)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def annotate(self, letters: Iterable[Letter]) -> None:
        for letter in letters:
            rows = self.db.execute(
                f"SELECT action, at, detail FROM letter_actions WHERE {_ITS_ROWS} ORDER BY at", _its_rows(letter),
            ).fetchall()
            letter.history = [{"action": a, "at": at, "detail": d} for a, at, d in rows]
            actions = {a for a, _, _ in rows}
            letter.status = "purged" if "purged" in actions else "replayed" if "replayed" in actions else "pending"

    def record(self, letter: Letter, action: str, detail: str = "") -> bool:
        """True when newly recorded; False when this action was already taken on this letter."""
        if action in {a["action"] for a in letter.history}:  # taken before (a ledger from before fingerprints)
            return False
        cur = self.db.execute(
            "INSERT OR IGNORE INTO letter_actions VALUES (?, ?, ?, ?, ?, ?, ?)",
            (letter.topic, letter.partition, letter.offset, letter.fingerprint, action, now(), detail),
        )
        return cur.rowcount == 1

    def claim(self, letter: Letter) -> str | None:
        """Take ``letter`` for this run to replay: ``None`` when taken, else why not (replayed by another run since
        this one read the ledger, or being replayed by one now). Checked and taken in one transaction, so two runs
        at once never both take it; a claim older than :data:`CLAIM_STALE_S` (a crashed run's) is taken over."""
        key = (letter.topic, letter.partition, letter.offset, letter.fingerprint)
        with self._writing():
            if self.db.execute(
                f"SELECT 1 FROM letter_actions WHERE {_ITS_ROWS} AND action='replayed'", _its_rows(letter),
            ).fetchone():
                return "already replayed"
            held = self.db.execute("SELECT at FROM letter_claims WHERE topic=? AND partition=? AND offset=?"
                                   " AND fingerprint=?", key).fetchone()
            at = now()
            if held and at - held[0] < CLAIM_STALE_S:
                since = datetime.fromtimestamp(held[0]).isoformat(timespec="seconds")
                return (f"being replayed by another run (claimed at {since}; a crashed run's claim is taken over "
                        f"after {CLAIM_STALE_S / 60:.0f} min)")
            self.db.execute("INSERT OR REPLACE INTO letter_claims VALUES (?, ?, ?, ?, ?)", (*key, at))
        return None

    def release(self, letter: Letter) -> None:
        """End this run's claim on ``letter``: given up unsent (the next replay may take it at once), or sent and
        recorded (:meth:`replayed`)."""
        self.db.execute("DELETE FROM letter_claims WHERE topic=? AND partition=? AND offset=? AND fingerprint=?",
                        (letter.topic, letter.partition, letter.offset, letter.fingerprint))

    def replayed(self, letter: Letter, detail: str) -> None:
        """Record ``letter`` as replayed and end this run's claim on it, together: no other run can take it between."""
        with self._writing():
            self.record(letter, "replayed", detail)
            self.release(letter)

    def close(self) -> None:
        self.db.close()


async def read_letters(bootstrap: str, topics: Topics, tiers: Iterable[int] = TIERS) -> list[Letter]:
    """Every letter currently on the chosen tiers' dead-letter topics."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50)
    await start_client(consumer, bootstrap)
    letters: list[Letter] = []
    try:
        tier_of = {topics.dlq(t): t for t in tiers}
        tps = [tp for name in tier_of for tp in await partitions_of(consumer, name)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        # the embedded broker's end offset is the last record batch's first offset + 1 (not its last + 1); a
        # fetch hands over whole batches and getmany all it fetched, so the letters after it come with it
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > await consumer.position(tp)}
        while remaining:
            for tp, records in (await consumer.getmany(*remaining, timeout_ms=1000)).items():
                for rec in records:
                    try:
                        envelope, why = decode(rec.value, DeadLetter), None
                    except DamflowError as exc:
                        envelope, why = None, str(exc)
                    letters.append(Letter(tier_of[tp.topic], tp.topic, tp.partition, rec.offset,
                                          rec.timestamp, envelope, why, raw=None if envelope else rec.value,
                                          fingerprint=_fingerprint(rec.value)))
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await stop_consumer(consumer)
    return sorted(letters, key=lambda x: (x.tier, x.partition, x.offset))


def _fingerprint(value: bytes | None) -> str:
    return hashlib.blake2b(value or b"", digest_size=12).hexdigest()


async def read_back(bootstrap: str, letters: Iterable[Letter]) -> None:
    """Read the whole original message of each letter that keeps only part of it (``payload_truncated``,
    ``key_truncated``) back from where it was consumed, while the broker retains it (for ``replay``)."""
    cut: dict[TopicPartition, list[Letter]] = {}
    for letter in letters:
        e = letter.envelope
        if e is not None and (e.payload_truncated or e.key_truncated):
            if e.original_offset < 0 or e.original_partition < 0:  # nowhere to read it from
                letter.read_back_tried = True
                continue
            cut.setdefault(TopicPartition(e.received_topic or e.original_topic, e.original_partition), []).append(letter)
    if not cut:
        return
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50,
                                auto_offset_reset="none")
    await start_client(consumer, bootstrap)
    try:
        consumer.assign(list(cut))
        for tp, wanted in cut.items():
            for letter in wanted:
                letter.read_back_tried = True
                offset = letter.envelope.original_offset
                consumer.seek(tp, offset)
                try:
                    records = (await consumer.getmany(tp, timeout_ms=2000, max_records=1)).get(tp, [])
                except OffsetOutOfRangeError:  # gone past retention
                    continue
                if records and records[0].offset == offset:
                    letter.fetched, letter.fetched_key = records[0].value, records[0].key
    finally:
        await stop_consumer(consumer)


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")


def parse_when(text: str) -> float:
    """'30m', '2h', '1d' ago; an epoch number; or an ISO date/time -> epoch seconds."""
    m = _RELATIVE.match(text.strip())
    if m:
        return time.time() - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    try:
        when = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(when):
            raise BadFilter(f"not a time: {text!r}")
        return when
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError as exc:
        raise BadFilter(f"not a time: {text!r} (use 30m, 2h, 1d, an epoch or an ISO date)") from exc


def select(
    letters: Iterable[Letter], *, ids: Iterable[str] = (), error_class: str | None = None,
    batch: str | None = None, since: float | None = None, until: float | None = None,
    statuses: Iterable[str] = ("pending",),
) -> list[Letter]:
    wanted_ids, statuses = set(ids), set(statuses)
    out = []
    for letter in letters:
        s = letter.summary()
        if wanted_ids:
            if letter.id not in wanted_ids:
                continue
        elif letter.status not in statuses:
            continue
        if error_class and error_class not in (s["error_class"], s["error_code"]):
            continue
        if batch and not (s["batch_id"] or "").startswith(batch):  # `status` shows batches by their first 8
            continue
        if since is not None and s["failed_at"] < since:
            continue
        if until is not None and s["failed_at"] > until:
            continue
        out.append(letter)
    return out


#: What each tier's topics carry: the event a dead letter of that tier holds.
_INPUT_OF_TIER: dict[int, type[FileDiscovered | AssetBrowsable | AssetIndexed]] = {
    1: FileDiscovered, 2: AssetBrowsable, 3: AssetIndexed,
}


def replayable(letter: Letter, settings: Settings) -> tuple[FileDiscovered | AssetBrowsable | AssetIndexed | None, str]:
    """The event to send again, or None and why not."""
    raw, why = letter.original_value()
    if raw is None:
        return None, why
    e = letter.envelope
    try:
        record = decode(raw, _INPUT_OF_TIER.get(e.tier, FileDiscovered))
    except DamflowError as exc:
        return None, f"poison pill, nothing to replay: {exc}"
    if record.replay_count < 0:
        return None, f"refused: its replay count ({record.replay_count}) is no count"
    if record.replay_count >= settings.replay_cap:
        return None, f"refused: already replayed {record.replay_count} times (cap {settings.replay_cap})"
    if isinstance(record, FileDiscovered):  # found again, now
        return msgspec.structs.replace(record, replay_count=record.replay_count + 1, source="replay",
                                       discovered_at=now()), ""
    return msgspec.structs.replace(record, replay_count=record.replay_count + 1), ""


#: A replay's answer for a letter of the same failure as one it sent (see :func:`replay`).
SAME_FAILURE = "skipped: the same failure as"


async def replay(
    letters: list[Letter], prod: AIOKafkaProducer, ledger: Ledger, settings: Settings, topics: Topics, *,
    dry_run: bool = False, rate: float | None = None,
) -> list[dict]:
    """Send each letter's original event back to its source topic (at most ``rate`` per second), once: a letter
    replayed before is skipped, purged since or not. A purged letter that was never replayed is sent when named by
    its id: purging hides a letter from the filters' selection, it does not forbid a replay asked for by name."""
    results = []
    #: (tier, event id, replay count) -> the letter sent for it in this run: a second letter of the same failure
    #: (the same event's attempt chain run twice, by a `damflow reconcile` while its retry was held) goes with it
    sent: dict[tuple[int, str, int], str] = {}
    for letter in letters:
        row = {"id": letter.id, "path": letter.summary()["path"]}
        if letter.replayed:
            results.append(row | {"result": "skipped: already replayed"})
            continue
        event, why = replayable(letter, settings)
        if event is None:
            results.append(row | {"result": why})
            continue
        same = (letter.tier, event.event_id, event.replay_count)
        if same in sent:
            if not dry_run and ledger.claim(letter) is None:
                ledger.replayed(letter, f"with {sent[same]}, the same failure")
                letter.status = "replayed"
            results.append(row | {"result": f"{SAME_FAILURE} {sent[same]}"})
            continue
        # back to its tier's topic; to its batch lane when the letter names none of them (a garbled source
        # header, a changed topic prefix) rather than another tier's, which cannot read it
        lanes = topics.work(letter.tier if letter.tier in TIERS else 1)
        target = letter.envelope.original_topic if letter.envelope.original_topic in lanes else lanes[-1]
        if dry_run:
            results.append(row | {"result": f"would replay to {target}", "replay_count": event.replay_count})
            sent[same] = letter.id
            continue
        kept_key = None if letter.envelope.key_truncated else letter.envelope.original_key
        key = letter.fetched_key or (kept_key or getattr(event, "asset_id", None) or event.path).encode()
        # two replays at once each read the ledger before either sent: only the one that claims the letter sends it
        taken = ledger.claim(letter)
        if taken is not None:
            if taken == "already replayed":
                letter.status = "replayed"
            results.append(row | {"result": f"skipped: {taken}"})
            continue
        try:
            await prod.send_and_wait(target, encode(event), key=key)
        except KafkaError as exc:  # too large for the broker, a topic gone: this letter stays, the others go on
            ledger.release(letter)
            results.append(row | {"result": f"not sent to {target}: {exc!r}"})
            continue
        except BaseException:  # interrupted: whether it went is unknown; the next replay may send it (at least once)
            ledger.release(letter)
            raise
        ledger.replayed(letter, f"to {target} as replay {event.replay_count}")  # after the send: at-least-once
        letter.status = "replayed"
        sent[same] = letter.id
        results.append(row | {"result": f"replayed to {target}", "replay_count": event.replay_count})
        if rate:
            await asyncio.sleep(1 / rate)  # a rate limit, not synchronisation
    return results


def refused(rows: Iterable[dict]) -> list[dict]:
    """The rows of a :func:`replay` whose letter was not sent and will not be on its own: refused, unreadable,
    not read back, or claimed by another run (which this one cannot know will send it; a letter replayed before,
    or a dry run's, is not one)."""
    fine = ("replayed to ", "skipped: already replayed", "would replay to ", SAME_FAILURE)
    return [r for r in rows if not str(r.get("result", "")).startswith(fine)]


def purge(letters: list[Letter], ledger: Ledger, *, dry_run: bool = False) -> list[dict]:
    """Mark letters as dealt with; they leave ``list`` (their bytes stay on the topic until retention)."""
    out = []
    for letter in letters:
        if dry_run:  # what the real run would answer
            taken = "purged" in {a["action"] for a in letter.history}
            out.append({"id": letter.id, "result": "already purged" if taken else "would purge"})
        else:
            fresh = ledger.record(letter, "purged")
            out.append({"id": letter.id, "result": "purged" if fresh else "already purged"})
    return out
