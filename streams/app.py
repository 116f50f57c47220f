"""The Faust application the workers run, and the tweaks damflow makes to its Kafka transport.

Three tweaks. First, faust's worker consumer hard-codes ``fetch_max_wait_ms=1500``. Real Kafka answers a fetch as
soon as data arrives, so that only costs idle polling there; the embedded broker answers after a fraction of the
wait even when data is waiting (measured: ~375 ms p50 at 1500 ms, ~3 ms at 10 ms). The wait is therefore a
setting, applied here to every broker, and lengthened while the worker is quiet (:mod:`streams.fetch_wait`).
Second, pausing a partition must not drop records already fetched for it, and a
partition paused by the lane governor (which pauses and resumes partitions many times a second) must stay out of
fetches until resumed, whatever faust's own per-buffer flow control does meanwhile (see ``_Consumer``). Third,
fetched but unconsumed batch records must not hold back the next fetch of the interactive lane (see
``_ConsumerThread``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import aiokafka
import faust
from faust.transport.consumer import ensure_TPset
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.utils.functional import consecutive_numbers

from streams.fetch_wait import QuietFetchWait
from streams.logs import get
from streams.settings import Settings

log = get(__name__)


def hand_back(consumer: aiokafka.AIOKafkaConsumer, records: Mapping[Any, list[Any]]) -> list[Any]:
    """Put fetched records that will not be delivered back where they were: each partition still assigned is
    moved back to its first record, unless something moved it since the records were handed out (then its
    position is no longer the one after its last record: the rebalance's seek to the group's commit came after
    them, and stands). Run it on the consumer's own thread. Returns the partitions moved back."""
    assigned, moved = consumer.assignment(), []
    for tp, batch in records.items():
        if not batch or tp not in assigned:
            continue
        state = consumer._subscription.subscription.assignment.state_value(tp)  # type: ignore[attr-defined]
        if state is not None and state.has_valid_position and state.position == batch[-1].offset + 1:
            consumer.seek(tp, batch[0].offset)
            moved.append(tp)
    return moved


#: Per partition and per request fetch sizes of the worker consumer, in bytes as sent: about a hundred events per
#: partition uncompressed, several hundred compressed (``Settings.compression``). What a fetch hands the worker's
#: streams is bounded by records all the same (``broker_max_poll_records``, ``Settings.batch_buffer``).
FETCH_PARTITION_BYTES = 64 * 1024
FETCH_REQUEST_BYTES = 256 * 1024


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # The fetcher is built in ``start()`` from this attribute; the constructor argument is fixed by faust.
        consumer._fetch_max_wait_ms = self.app.conf.fetch_max_wait_ms  # type: ignore[attr-defined]
        # Small fetches: a batch lane with a deep backlog otherwise comes back as one response of up to 1 MB per
        # partition (thousands of events) that the consumer thread parses before the interactive lane's next one.
        consumer._max_partition_fetch_bytes = FETCH_PARTITION_BYTES  # type: ignore[attr-defined]
        consumer._fetch_max_bytes = FETCH_REQUEST_BYTES  # type: ignore[attr-defined]
        start = consumer.start

        async def start_without_prefetch_backoff() -> None:
            await start()
            # aiokafka sends no fetch at all to a broker while any partition it serves still holds fetched
            # records younger than this backoff (0.1 s): a batch partition whose records wait behind faust's
            # small buffer then held back the interactive lane's next fetch — an urgent event at the start of
            # an import waited 100-150 ms (bench/priority.py). The partition holding records is left out of
            # the next fetch anyway; the others are fetched at once.
            consumer._fetcher._prefetch_backoff = 0.0  # type: ignore[attr-defined]
            conf: Any = self.app.conf
            QuietFetchWait(consumer._fetcher, self.consumer, busy_ms=conf.fetch_max_wait_ms,
                           idle_ms=conf.idle_fetch_max_wait_ms, idle_after_s=conf.idle_after_s).install()

        consumer.start = start_without_prefetch_backoff  # type: ignore[method-assign]
        return consumer

    #: aiokafka's assignment and it as faust's partitions, in one attribute: both threads ask (the event loop's
    #: lane governor, the consumer thread's commits), and neither may pair one assignment with another's partitions
    _assigned: tuple[frozenset | None, frozenset[TP]] = (None, frozenset())

    def assignment(self) -> set[TP]:
        # The lane governor asks on every update, twice per event, and faust converted every assigned partition
        # anew each time. aiokafka hands back the same frozenset for as long as one assignment holds (a new
        # Assignment, a new frozenset: held here, so compared by identity without an address being reused).
        current = self._ensure_consumer().assignment()
        seen, tps = self._assigned
        if current is not seen:
            tps = frozenset(ensure_TPset(current))
            self._assigned = (current, tps)
        return set(tps)  # the caller's own


class _Consumer(faust_aiokafka.Consumer):
    """faust's consumer with two rules made to hold: a record handed out by a fetch is delivered, and a partition
    is fetched only while it is neither paused (held by the lane governor) nor backed up (its stream buffer is
    full)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held_partitions: set[TP] = set()
        #: The first offset fetched per partition since it was assigned: where its processing starts when the
        #: group has no commit for it yet, or when the records at its commit are gone.
        self._first_fetched: dict[TP, int] = {}

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Record offsets that were never handed out (removed by retention or compaction, transaction markers).

        faust's drain loop passes (last delivered + 1, the record being delivered now). faust's own version
        counted that record in the gap, so a commit could go past it while it was in work. It also never counted
        the group's commit (the next to read) when that one was never delivered, so commits could stop for good.
        """
        committed = self._committed_offset[tp]
        if committed is not None:
            offset_from = max(offset_from, committed)
        if offset_from < offset_to:
            gaps = self._gap[tp]
            gaps.addi(offset_from, offset_to)
            gaps.merge_overlaps()

    def _new_offset(self, tp: TP) -> int | None:
        """The offset to commit for ``tp``: past the run of acked offsets that starts at the next unprocessed one.

        faust's own commits past a record still in work when it is the very next one (its check of the gap at the
        head is off by one: the committed offset is the next to read) or when nothing was committed yet (the
        check is skipped for None and 0). With events handled concurrently, a later record is often done before
        an earlier one: a worker stopped or killed then lost the earlier one for good.
        """
        acked = self._acked[tp]
        if not acked:
            return None
        # the next record to process: the group's commit, or, past it, the first one fetched since the assignment
        # (what lies between was never delivered: removed by retention or compaction)
        known = [o for o in (self._committed_offset[tp], self._first_fetched.get(tp)) if o]
        head = max(known) if known else self._first_fetched.get(tp)
        gaps = self._gap[tp]
        if gaps:  # offsets never delivered (compacted, transaction markers) count as done, as in faust
            max_offset = max(acked)
            candidates = sorted(gaps.overlap(0, max_offset), key=lambda x: x.begin)
            if candidates:
                filled = [o for entry in candidates for o in range(entry.begin, entry.end)]
                acked.extend(filled)
                gaps.chop(0, max(filled[-1], max_offset + 1))
        acked.sort()
        if head is None or acked[0] > head:
            return None  # the next record to process is not done yet: nothing new to commit
        batch = next(consecutive_numbers(acked))
        acked[: len(batch)] = []
        self._acked_index[tp].difference_update(batch)
        return batch[-1] + 1

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _wait_next_records(self, timeout: float) -> tuple[Any, set | None]:
        # faust yields a fetched record only if its partition is still active when the fetch *returns*. The
        # records were handed out of aiokafka (the partition's position moved past them) while it was active; a
        # pause in between — the lane governor pauses the batch lane for every urgent event — dropped them, and
        # the lane went quiet with files never processed (and commits stalled on the gap). Deliver everything
        # the fetch handed out; a pause takes effect from the next fetch on. Unless a rebalance happened
        # meanwhile: faust then seeks every partition back to its committed offset before it resumes, so
        # nothing handed out under the old generation may be delivered under the new one. The generation is
        # read once the flow runs: faust's own wait for a rebalance to end comes first, and a fetch made after
        # it belongs to the new generation (dropping it lost those records for good). A fetch may also span the
        # whole rebalance, its records handed out after the seek to the commit: dropped, they are handed back
        # (aiokafka's position had moved past them, and a commit later passed them: never worked on).
        if not self.flow_active:
            await self.wait(self.can_resume_flow)
        generation = self.app.consumer_generation_id
        records, _active = await super()._wait_next_records(timeout)
        if not records:
            return records, set()
        if self.app.consumer_generation_id != generation:
            await self._hand_back(records)
            return records, set()
        assigned = self.assignment()
        delivered = {tp for tp in records if tp in assigned}
        # Not once the flow stopped: a revoke came while this fetch was on its way back (faust drops its records,
        # read again from the commit if the partition comes back); its offsets taken as where processing starts
        # let a commit pass a record still in work after the partition came back.
        for tp in delivered if self.flow_active else ():
            if tp not in self._first_fetched and records[tp]:
                self._first_fetched[tp] = records[tp][0].offset
        return records, delivered

    async def _hand_back(self, records: Mapping[Any, list[Any]]) -> None:
        consumer = self._thread._ensure_consumer()  # type: ignore[attr-defined]

        async def back() -> list[Any]:
            return hand_back(consumer, records)

        moved = await self._thread.call_thread(back)  # type: ignore[attr-defined]
        if moved:
            log.info("records_handed_back", partitions=len(moved))

    # faust keeps two reasons to leave a partition out of fetches (paused; stream buffer full) but lifts either
    # without looking at the other: a batch partition whose buffer drained was fetched again while the governor
    # held it paused for urgent work, and a resume fetched into a buffer still full. Active = neither.

    def on_buffer_drop(self, tp: TP) -> None:
        if tp in self._buffered_partitions:
            self._buffered_partitions.discard(tp)
            if tp not in self._paused_partitions:
                self._get_active_partitions().add(tp)

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        # a partition the lane governor holds stays paused: faust resumes every assigned partition once a
        # rebalance is over (after the governor applied its pauses again), which let tier-2 and tier-3 batch
        # work run beside an import for the rest of it
        tpset = ensure_TPset(tps) - self._held_partitions
        self._paused_partitions.difference_update(tpset)
        self._get_active_partitions().update(tpset - self._buffered_partitions)

    def hold_partitions(self, tps: Iterable[TP]) -> None:
        """Pause ``tps`` until :meth:`release_partitions`, whoever else resumes them meanwhile (the lane
        governor's pauses)."""
        tpset = ensure_TPset(tps)
        self._held_partitions.update(tpset)
        self.pause_partitions(tpset)

    def release_partitions(self, tps: Iterable[TP]) -> None:
        tpset = ensure_TPset(tps)
        self._held_partitions.difference_update(tpset)
        self.resume_partitions(tpset)

    def hold_exactly(self, tps: Iterable[TP]) -> None:
        """Hold ``tps`` and nothing else: on assignment, the holds become what the governor wants of the new
        assignment. Between a revoke and the next assignment aiokafka still reports the old assignment, so
        holds taken then (the governor's timer, an urgent upload by express) may name partitions this worker
        does not get back; one it got back later stayed held, never fetched, while nothing paused its level.
        faust resumes every assigned partition not held right after the assignment's handlers."""
        tpset = ensure_TPset(tps)
        self._held_partitions.clear()
        self._held_partitions.update(tpset)
        self.pause_partitions(tpset)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        # faust forgets a revoked partition's pause but kept its "backed up" mark, which a resume now honours:
        # a mark left from before the rebalance must not keep the partition out of fetches after it; nor a hold
        # (the governor holds what it wants again on assignment)
        self._buffered_partitions.difference_update(revoked)
        self._held_partitions.difference_update(revoked)
        self._first_fetched.clear()  # read again from the group's commit after the rebalance
        await super().on_partitions_revoked(revoked)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class _Conf(faust.Settings):
    # one default, in Settings
    fetch_max_wait_ms: int = Settings.model_fields["fetch_max_wait_ms"].default
    idle_fetch_max_wait_ms: int = Settings.model_fields["idle_fetch_max_wait_ms"].default
    idle_after_s: float = Settings.model_fields["idle_after_s"].default


class _Topic(faust.Topic):
    """faust's topic, without three turns of the event loop per send once the producer runs.

    faust asks ``app.maybe_start_producer()`` on every send, and that is a mode ``stampede``: it yields to the
    event loop before and twice after its check, even when the producer has long been running. The files of a
    batch chunk finish together; with those turns between each file's sends, the producer's sender ran between
    them and sent the chunk's results in two produce requests instead of one (a 60-file import: every chunk of
    eight as 8 + 7 records, then the last one alone). The first send still goes through faust's (one caller
    starts the producer, the others wait for it); once that has answered, the running producer is used as is.
    """

    async def _get_producer(self) -> Any:
        app = self.app
        producer = app.producer
        # (a producer restarted since, or stopping, goes faust's way again: mode clears its started flag)
        if app.in_transaction or not getattr(app, "producer_ready", False) or not producer._started.is_set() \
                or producer.should_stop:
            producer = await app.maybe_start_producer()
            if not app.in_transaction:
                app.producer_ready = True
        return producer


class DamflowApp(faust.App):
    """A faust App whose consumer honours ``Settings.fetch_max_wait_ms`` (and its idle counterpart)."""

    Settings = _Conf
    #: faust's producer has answered a send: it runs (see _Topic).
    producer_ready = False

    def _new_transport(self) -> _Transport:
        return _Transport(self.conf.broker_consumer, self)


def create_app(settings: Settings, bootstrap: str) -> DamflowApp:
    """The worker app for one broker: raw bytes in and out (we decode ourselves, see ``agents.handling``)."""
    app = DamflowApp(
        settings.group_id,
        broker=f"kafka://{bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        Topic=_Topic,
        web_enabled=False,
        store="memory://",
        datadir=str(settings.data_path / "faust"),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        # what is redelivered after a crash: the offsets acked in the last half second. A count as well only adds
        # commits where events are cheap (duplicates, tier 2): every 100 events cost a no-op event path 3-5 %
        # (bench/framework_tax.py), every 1000 leaves the interval to decide below 2000 events/s
        broker_commit_interval=0.5,
        broker_commit_every=1000,
        # bounded records per fetch: with the batch topics' bounded buffers (Settings.batch_buffer), what is
        # fetched for the batch lane never piles up in the worker
        broker_max_poll_records=settings.batch_buffer,
        producer_linger=settings.producer_linger_ms / 1000,  # > 0: a chunk's results share a batch (see Settings)
        producer_compression_type=settings.compression_type,
        stream_wait_empty=False,
    )
    app.conf.fetch_max_wait_ms = settings.fetch_max_wait_ms
    app.conf.idle_fetch_max_wait_ms = settings.idle_fetch_max_wait_ms
    app.conf.idle_after_s = settings.idle_after_s
    return app
