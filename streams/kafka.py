"""Plain aiokafka plumbing shared by the producers, sinks and CLI waiters (the workers use faust)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, KafkaTimeoutError, ProducerClosed, TopicAlreadyExistsError, for_code

from streams.errors import BrokerError, ConfigError
from streams.settings import Settings
from streams.topics import topics_for


def refused_topics(response: Any) -> list[tuple[str, type[KafkaError], str | None]]:
    """The topics a CreateTopics answer refused: name, error class, the broker's message. aiokafka hands the
    per-topic errors back in the answer and raises none of them. A topic that exists already is not refused
    (another process made it first)."""
    refused = []
    for name, code, *message in response.topic_errors:
        error = for_code(code) if code else None
        if error is not None and error is not TopicAlreadyExistsError:
            refused.append((name, error, message[0] if message else None))
    return refused


async def ensure_topics(bootstrap: str, names: Iterable[str], partitions: int, timeout: float = 20.0, *,
                        replication_factor: int = 1, configs: Mapping[str, Mapping[str, str]] | None = None) -> None:
    """Create the topics that do not exist yet (idempotent); waits for the broker to answer first. A topic the
    broker refuses to create (Kafka or Redpanda: too many partitions for its memory, a replication factor above
    its brokers, an invalid name) raises :class:`ConfigError` with the broker's reason. ``configs``: topic
    settings by name, for the topics created now; topics that exist are left as they are."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [n for n in names if n not in existing]
            if missing:
                response = await admin.create_topics(
                    [NewTopic(n, num_partitions=partitions, replication_factor=replication_factor,
                              topic_configs=dict((configs or {}).get(n, {}))) for n in missing]
                )
                _raise_refused(bootstrap, refused_topics(response))
            return
        except KafkaError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise BrokerError(f"broker {bootstrap} not usable: {exc!r}") from exc
            await asyncio.sleep(0.1)  # broker still starting: retry with a short pause
        finally:
            with contextlib.suppress(Exception):
                await admin.close()


async def ensure_pipeline_topics(settings: Settings, bootstrap: str) -> None:
    """Every topic of the pipeline, as the settings say (partitions, replicas), with its own settings."""
    topics = topics_for(settings)
    await ensure_topics(bootstrap, topics.all(), settings.partitions,
                        replication_factor=settings.replication_factor, configs=topics.configs())


def _raise_refused(bootstrap: str, refused: list[tuple[str, type[KafkaError], str | None]]) -> None:
    for _name, error, message in refused:
        if error.retriable:  # (a request timed out, a leader moving): asked again, within the deadline
            raise error(message)
    if refused:
        reasons = "; ".join(f"{name}: {error.__name__}" + (f" ({message})" if message else "")
                            for name, error, message in refused)
        raise ConfigError(f"broker {bootstrap} refused to create {len(refused)} topic(s): {reasons}")


async def check_delivered(sent: list[asyncio.Future], what: str) -> None:
    """After a producer's flush: :class:`BrokerError` if the broker refused any of the sends ``sent`` (their
    deliveries), naming how many of ``what``. A flush says nothing of a refused record: each send's delivery does."""
    refused = [exc for exc in await asyncio.gather(*sent, return_exceptions=True) if isinstance(exc, Exception)]
    if refused:
        raise BrokerError(f"the broker did not take {len(refused)} of the {len(sent)} {what}: {refused[0]!r}")


def group_consumer(
    settings: Settings, bootstrap: str, group: str, *topics: str, rare: bool = False
) -> AIOKafkaConsumer:
    """A consumer in ``group`` for the pipeline's own services: manual commits (after the effect), the
    settings' membership timeouts, and the slower, batching fetches of consumers that are not latency-critical
    (``rare``: slower still, for topics that are mostly empty). Every fetch costs the broker CPU that the
    workers would rather have."""
    return AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.rare_fetch_max_wait_ms if rare else settings.sink_fetch_max_wait_ms,
        fetch_min_bytes=settings.sink_fetch_min_bytes,
        session_timeout_ms=int(settings.session_timeout_s * 1000),
        heartbeat_interval_ms=int(settings.heartbeat_interval_s * 1000),
        rebalance_timeout_ms=int(settings.rebalance_timeout_s * 1000),
    )


async def start_client(client: AIOKafkaProducer | AIOKafkaConsumer, bootstrap: str) -> None:
    """Start an aiokafka producer or consumer; one that cannot reach the broker is closed again (else "Unclosed
    AIOKafka..." at exit) and raises :class:`BrokerError`."""
    try:
        await client.start()
    except KafkaError as exc:
        await client.stop()
        raise BrokerError(f"cannot reach broker {bootstrap}: {exc!r}") from exc


@contextlib.asynccontextmanager
async def producer(
    bootstrap: str, *, compression: str | None, linger_ms: int = 0,
) -> AsyncIterator[AIOKafkaProducer]:
    """A started producer whose sends are acked by every replica; ``compression``: its record batches' codec,
    ``Settings.compression_type`` (``None``: uncompressed). It has no default, so that no call site forgets the
    setting: the embedded broker keeps every record batch in memory, uncompressed ones over three times larger."""
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms, acks="all",
                            compression_type=compression)
    await start_client(prod, bootstrap)
    try:
        yield prod
    finally:
        await prod.stop()


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop ``consumer``, also when its broker is gone: aiokafka 0.14 then raises ``CancelledError`` out of
    ``stop()`` (a fetch task cancelled in its back-off after a failed request), which would hide why the caller
    stops, or pass for the caller's own cancellation. A cancellation of the caller itself still goes through."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    except KafkaError:
        pass


def passes(exc: BaseException) -> bool:
    """Whether a broker error may pass by itself: the broker unreachable or busy (a retriable Kafka error, a lost
    connection, a timeout: aiokafka's own too, which it marks not retriable, raised when a send waited out its
    topic's metadata or room in a full batch), or the producer closed under a stopping worker. Anything else (a
    message too large for the broker, a bug) would fail the same way for ever.

    faust raises a send that could not even be queued (those timeouts) as its own ``ProducerSendError``: judged
    by the error it wraps. (Taken for a lasting fault, a failure's record refused so was acked unrecorded.)"""
    if isinstance(exc, KafkaError):
        return bool(getattr(exc, "retriable", False)) or isinstance(exc, KafkaTimeoutError | ProducerClosed)
    faust_errors = sys.modules.get("faust.exceptions")  # not loaded: no faust error to meet
    if faust_errors is not None and isinstance(exc, faust_errors.ProducerSendError) and exc.__cause__ is not None:
        return passes(exc.__cause__)
    return isinstance(exc, ConnectionError | TimeoutError)


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Every partition of ``topic``, asking the broker when the consumer does not know the topic yet: a started
    consumer without a subscription has no topic metadata on Apache Kafka (aiokafka bootstraps with a metadata
    request for no topics; the embedded broker happens to list them all anyway). Empty if there is no such
    topic."""
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        await consumer._client.force_metadata_update()  # type: ignore[attr-defined]  # all topics, when none tracked
        parts = consumer.partitions_for_topic(topic)
    return [TopicPartition(topic, p) for p in sorted(parts or ())]


def set_fetch_pace(consumer: AIOKafkaConsumer, max_wait_ms: int, min_bytes: int | None = None) -> bool:
    """Change how long ``consumer``'s next fetches wait for data (and, given, the bytes they wait for). aiokafka
    0.11-0.14 reads both each time it builds a fetch request; the one already on its way keeps its own. False
    (nothing changed) with an aiokafka that keeps them elsewhere: its fixed pace stays."""
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or not hasattr(fetcher, "_fetch_max_wait_ms") or not hasattr(fetcher, "_fetch_min_bytes"):
        return False
    fetcher._fetch_max_wait_ms = max_wait_ms
    if min_bytes is not None:
        fetcher._fetch_min_bytes = min_bytes
    return True


@contextlib.asynccontextmanager
async def tail(
    bootstrap: str, topic: str, settings: Settings, *, from_beginning: bool = False, fetch_max_wait_ms: int | None = None,
) -> AsyncIterator[AIOKafkaConsumer]:
    """A group-less consumer of every partition of ``topic``, positioned at the end (or the beginning).

    Entering returns once positions are fixed, so anything produced afterwards will be seen: start the tail
    *before* producing what you wait for.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.fetch_max_wait_ms if fetch_max_wait_ms is None else fetch_max_wait_ms,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tps = await partitions_of(consumer, topic)
        if not tps:
            raise BrokerError(f"topic {topic} does not exist on {bootstrap}")
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the lazy seek now, so later records are not skipped
            await consumer.position(tp)
        yield consumer
    finally:
        await stop_consumer(consumer)


class LagProbe:
    """How far a consumer group is behind on a topic: end offsets minus the group's committed offsets.

    The embedded broker answers a partition's end offset (ListOffsets, latest) with its last record batch's first
    offset + 1, not the high watermark: a last batch of 25 records reads as 24 fewer than there are. A producer
    therefore passes the ends it knows from its own delivery reports (``published``); the larger one counts.
    """

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self.bootstrap, self.group, self.topic = bootstrap, group, topic
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self._tps: list[TopicPartition] = []

    async def __aenter__(self) -> LagProbe:
        await self._admin.start()
        await self._consumer.start()
        # let the consumer's background task take its first step: stopping it before that raises
        # CancelledError out of aiokafka's NoGroupCoordinator.close()
        await asyncio.sleep(0)
        self._tps = await partitions_of(self._consumer, self.topic)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await stop_consumer(self._consumer)
        await self._admin.close()

    async def lag(self, published: Mapping[TopicPartition, int] | None = None) -> int:
        """Records not yet committed by the group; ``published``: end offsets known to the caller (the offset
        after the last record it saw delivered, per partition)."""
        if not self._tps:  # no such topic when the probe started: the workers may have made it since
            self._tps = await partitions_of(self._consumer, self.topic)
            if not self._tps:
                return 0
        ends = await self._consumer.end_offsets(self._tps)
        committed = await self._admin.list_consumer_group_offsets(self.group, partitions=self._tps)
        total = 0
        for tp in self._tps:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            end = max(ends[tp], (published or {}).get(tp, 0))
            total += max(end - done, 0)
        return total
