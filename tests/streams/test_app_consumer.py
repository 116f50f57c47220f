"""The worker consumer (``streams.app._Consumer``) against faust's real consumer loop.

1. It delivers every record a fetch handed out, whatever the lane governor did meanwhile. A fetch hands records
   out of aiokafka and moves the partition's position past them. If the governor paused that partition while
   the fetch was on its way back (an urgent event started), faust's own loop dropped the records (it delivers
   only partitions still active when the fetch returns): never processed, and the batch lane went quiet with
   files left in it.
2. A partition is fetched only while it is neither paused nor backed up (stream buffer full): faust lifted
   either reason without looking at the other.
"""

from __future__ import annotations

import asyncio

from aiokafka.structs import ConsumerRecord, TopicPartition
from faust.types import TP

from streams.app import create_app
from streams.settings import Settings

BATCH = TP("t1.batch", 0)
URGENT = TP("t1.interactive", 0)


def _fetched(tp: TP, offsets: range) -> dict[TopicPartition, list[ConsumerRecord]]:
    """What aiokafka's fetcher hands out: its own ``TopicPartition`` keys (faust's ``TP`` is a different type)."""
    return {TopicPartition(tp.topic, tp.partition): [_record(tp, n) for n in offsets]}


def _record(tp: TP, offset: int) -> ConsumerRecord:
    return ConsumerRecord(topic=tp.topic, partition=tp.partition, offset=offset, timestamp=0, timestamp_type=0,
                          key=b"k", value=b"v", checksum=None, serialized_key_size=1, serialized_value_size=1,
                          headers=())


def _consumer(tmp_path, assigned: set[TP]):
    app = create_app(Settings(data_dir=tmp_path), "127.0.0.1:9")  # never connects: the fetch is replaced below
    consumer = app.consumer
    consumer.assignment = lambda: set(assigned)
    consumer.highwater = lambda tp: 100
    consumer._set_active_tps(assigned)  # as after an assignment
    return consumer


async def _deliver(consumer, fetched: dict[TopicPartition, list[ConsumerRecord]], *, during_fetch) -> list[tuple[TP, int]]:
    async def fetch(active_partitions, timeout):
        assert BATCH in active_partitions  # the partition was active when the fetch handed its records out
        during_fetch(consumer)
        return fetched

    consumer._getmany = fetch
    return [(tp, message.offset) async for tp, message in consumer.getmany(timeout=0.1)]


async def test_a_partition_paused_while_its_fetch_returns_still_gets_what_was_fetched(tmp_path) -> None:
    consumer = _consumer(tmp_path, {BATCH, URGENT})
    fetched = _fetched(BATCH, range(8)) | _fetched(URGENT, range(1))
    delivered = await _deliver(consumer, fetched, during_fetch=lambda c: c.pause_partitions({BATCH}))
    assert sorted(delivered) == sorted((TP(tp.topic, tp.partition), r.offset) for tp, rs in fetched.items() for r in rs)
    # and the pause holds for the next fetch
    assert BATCH not in consumer._get_active_partitions()


async def test_records_of_a_partition_no_longer_assigned_are_not_delivered(tmp_path) -> None:
    assigned = {BATCH, URGENT}
    consumer = _consumer(tmp_path, assigned)
    fetched = _fetched(BATCH, range(1)) | _fetched(URGENT, range(1))
    delivered = await _deliver(consumer, fetched, during_fetch=lambda c: assigned.discard(BATCH))
    assert delivered == [(URGENT, 0)]


async def test_nothing_fetched_under_an_earlier_generation_is_delivered_and_it_is_handed_back(tmp_path) -> None:
    # after a rebalance faust seeks every partition back to its committed offset: these come again. A fetch
    # that spanned the whole rebalance may have handed them out after that seek: they are handed back (see
    # streams.app.hand_back, tested on a real consumer in tests/integration/test_hand_back.py)
    consumer = _consumer(tmp_path, {BATCH, URGENT})
    handed_back = []

    async def hand_back(records) -> None:
        handed_back.append(records)

    consumer._hand_back = hand_back

    def rebalance(c) -> None:
        c.app.consumer_generation_id += 1

    fetched = _fetched(BATCH, range(3))
    assert await _deliver(consumer, fetched, during_fetch=rebalance) == []
    assert handed_back == [fetched]


async def test_the_first_fetch_after_a_rebalance_is_delivered(tmp_path) -> None:
    # the fetcher comes back for records while the flow is stopped for a rebalance, and waits; by the time the
    # flow resumes, faust has the new generation and has sought to the committed offsets: what it fetches now
    # is this generation's (dropping it lost the records for good: the next ones committed past them)
    consumer = _consumer(tmp_path, {BATCH, URGENT})

    async def fetch(active_partitions, timeout):
        return _fetched(BATCH, range(10, 13))

    consumer._getmany = fetch
    consumer.stop_flow()  # partitions revoked
    delivery = asyncio.ensure_future(_drain(consumer))
    await asyncio.sleep(0.05)
    assert not delivery.done()  # waiting for the flow
    consumer.app.consumer_generation_id += 1  # assigned again: a new generation, then the flow resumes
    consumer.resume_flow()
    assert await asyncio.wait_for(delivery, 5) == [(BATCH, 10), (BATCH, 11), (BATCH, 12)]


async def _drain(consumer) -> list[tuple[TP, int]]:
    return [(tp, message.offset) async for tp, message in consumer.getmany(timeout=0.1)]


def test_a_paused_partition_whose_buffer_drains_stays_out_of_fetches_until_resumed(tmp_path) -> None:
    consumer = _consumer(tmp_path, {BATCH, URGENT})
    consumer.on_buffer_full(BATCH)
    consumer.pause_partitions({BATCH})  # an urgent event started
    consumer.on_buffer_drop(BATCH)  # the batch lane's actors took what was buffered
    assert consumer._get_active_partitions() == {URGENT}
    consumer.resume_partitions({BATCH})
    assert consumer._get_active_partitions() == {BATCH, URGENT}


def test_a_resumed_partition_whose_buffer_is_still_full_stays_out_of_fetches_until_it_drains(tmp_path) -> None:
    consumer = _consumer(tmp_path, {BATCH, URGENT})
    consumer.pause_partitions({BATCH})
    consumer.on_buffer_full(BATCH)
    consumer.resume_partitions({BATCH})  # the urgent event is done, but the batch buffer is still full
    assert consumer._get_active_partitions() == {URGENT}
    consumer.on_buffer_drop(BATCH)
    assert consumer._get_active_partitions() == {BATCH, URGENT}


async def test_a_backed_up_mark_from_before_a_rebalance_does_not_keep_the_partition_out_of_fetches(tmp_path) -> None:
    consumer = _consumer(tmp_path, {BATCH, URGENT})

    async def revoked_callbacks(revoked) -> None:  # the app's own revoke work (streams, tables): not under test
        return None

    consumer._on_partitions_revoked = revoked_callbacks
    consumer.on_buffer_full(BATCH)
    await consumer.on_partitions_revoked({BATCH, URGENT})
    consumer._set_active_tps({BATCH, URGENT})  # assigned again (faust's on_partitions_assigned does this)
    consumer.pause_partitions({BATCH})
    consumer.resume_partitions({BATCH})
    assert consumer._get_active_partitions() == {BATCH, URGENT}


async def test_a_partition_the_governor_holds_stays_paused_when_faust_resumes_everything_after_a_rebalance(
    tmp_path,
) -> None:
    assigned = {BATCH, URGENT}
    consumer = _consumer(tmp_path, assigned)
    consumer.hold_partitions({BATCH})
    consumer.resume_partitions(assigned)  # faust's recovery, once a rebalance is over
    assert consumer._get_active_partitions() == {URGENT}
    consumer.release_partitions({BATCH})
    assert consumer._get_active_partitions() == assigned
    consumer.hold_partitions({BATCH})
    await consumer.on_partitions_revoked({BATCH})  # gone elsewhere: its hold goes with it
    consumer.resume_partitions(assigned)
    assert BATCH in consumer._get_active_partitions()


def _ack(consumer, tp: TP, *offsets: int) -> None:
    consumer._acked[tp].extend(offsets)
    consumer._acked_index[tp].update(offsets)


async def test_nothing_is_committed_past_the_next_record_while_it_is_still_in_work(tmp_path) -> None:
    # events are handled concurrently: a later record is often done before an earlier one. faust committed past
    # the earlier one when it was the very next (or nothing was committed yet), and a worker stopped meanwhile
    # lost it for good.
    consumer = _consumer(tmp_path, {BATCH})
    delivered = await _deliver(consumer, _fetched(BATCH, range(0, 3)), during_fetch=lambda c: None)
    assert delivered == [(BATCH, 0), (BATCH, 1), (BATCH, 2)]  # fetched from the start: no commit yet
    _ack(consumer, BATCH, 1, 2)  # offset 0 still in work
    assert consumer._new_offset(BATCH) is None
    _ack(consumer, BATCH, 0)
    assert consumer._new_offset(BATCH) == 3
    consumer._committed_offset[BATCH] = 3  # the next to read
    _ack(consumer, BATCH, 4, 5)  # offset 3 still in work
    assert consumer._new_offset(BATCH) is None
    _ack(consumer, BATCH, 3)
    assert consumer._new_offset(BATCH) == 6


async def _drain_gap(consumer, tp: TP, read_offset: int | None, offset: int) -> None:
    """What faust's drain loop does before it hands out ``offset`` after ``read_offset`` (consumer.py)."""
    if offset - (read_offset or 0) > 1 and read_offset:
        await consumer._add_gap(tp, read_offset + 1, offset)


async def test_a_fetch_that_returns_after_a_revoke_does_not_say_where_processing_starts(tmp_path) -> None:
    # its offsets (40-42) were taken as the first fetched after the revoke cleared them: once the partition came
    # back and was read again from the commit (10), 11 and 12 done committed 13 while 10 was still in work
    consumer = _consumer(tmp_path, {BATCH, URGENT})
    consumer._committed_offset[BATCH] = 10

    def revoke_during_fetch(c) -> None:
        c._first_fetched.clear()  # the revoke's handler, then faust's App stopping the flow
        c.stop_flow()

    await _deliver(consumer, _fetched(BATCH, range(40, 43)), during_fetch=revoke_during_fetch)
    assert consumer._first_fetched == {}
    consumer.resume_flow()  # the partition back, read again from the commit
    _ack(consumer, BATCH, 11, 12)
    assert consumer._new_offset(BATCH) is None
    _ack(consumer, BATCH, 10)
    assert consumer._new_offset(BATCH) == 13


async def test_records_gone_before_the_first_fetch_do_not_hold_commits_back(tmp_path) -> None:
    consumer = _consumer(tmp_path, {BATCH})
    consumer._committed_offset[BATCH] = 10  # the group's commit; retention has removed offsets 10-49 since
    await _deliver(consumer, _fetched(BATCH, range(50, 52)), during_fetch=lambda c: None)
    await _drain_gap(consumer, BATCH, 10, 50)  # faust's read offset after its seek is the commit
    _ack(consumer, BATCH, 51)
    first = consumer._new_offset(BATCH)
    assert first in (None, 50)  # 50 still in work: not past it
    if first is not None:
        consumer._committed_offset[BATCH] = first  # as faust's commit leaves it
    _ack(consumer, BATCH, 50)
    assert consumer._new_offset(BATCH) == 52


async def _committed_up_to_3(tmp_path):
    """A consumer that delivered offsets 0-2, all done and committed (the next to read: 3)."""
    consumer = _consumer(tmp_path, {BATCH})
    await _deliver(consumer, _fetched(BATCH, range(0, 3)), during_fetch=lambda c: None)
    _ack(consumer, BATCH, 0, 1, 2)
    assert consumer._new_offset(BATCH) == 3
    consumer._committed_offset[BATCH] = 3  # as faust's commit leaves it
    return consumer


async def test_a_gap_in_the_middle_holds_only_what_was_never_delivered(tmp_path) -> None:
    consumer = await _committed_up_to_3(tmp_path)
    await _drain_gap(consumer, BATCH, 3, 5)  # 4 never delivered (a marker, compacted away)
    _ack(consumer, BATCH, 3, 6)  # 5 still in work
    assert consumer._new_offset(BATCH) == 5
    consumer._committed_offset[BATCH] = 5  # as faust's commit leaves it
    _ack(consumer, BATCH, 5)
    assert consumer._new_offset(BATCH) == 7


async def test_a_commit_at_an_offset_never_delivered_does_not_stop_commits(tmp_path) -> None:
    consumer = await _committed_up_to_3(tmp_path)
    await _drain_gap(consumer, BATCH, 2, 4)  # 3 never delivered
    _ack(consumer, BATCH, 4, 5)
    assert consumer._new_offset(BATCH) == 6


async def _rebalance(app, consumer, assigned: set[TP], now_assigned: set[TP]) -> None:
    """faust's assignment steps (app._on_partitions_assigned, Consumer.on_partitions_assigned), in order."""
    now_assigned.clear()
    now_assigned.update(assigned)
    consumer._paused_partitions.intersection_update(assigned)
    consumer._set_active_tps(assigned)
    consumer.pause_partitions(assigned)
    await app.on_partitions_assigned.send(assigned)
    consumer.resume_partitions(assigned)  # faust's recovery, once the rebalance is over


async def test_a_hold_taken_between_revoke_and_assignment_does_not_strand_a_partition_that_comes_back(
    tmp_path,
) -> None:
    # Between a revoke and the next assignment aiokafka still reports the old assignment, and the governor goes on
    # acting (its timer; an urgent upload by express): it held partitions this worker did not get back. When one
    # came back at a later rebalance it stayed held, never fetched, while nothing paused its level any more: half
    # an import stalled until the next upload. (Found by an audit, with a model of this sequence.)
    from agents.lanes import LaneGovernor
    from streams.topics import Topics

    topics = Topics("p.")
    names = (topics.t1_batch, topics.t1_interactive, topics.t2_batch, topics.t2_interactive, topics.t3_background)
    both = {TP(name, p) for name in names for p in (0, 1)}
    one = {tp for tp in both if tp.partition == 1}
    assigned = set(both)
    app = create_app(Settings(data_dir=tmp_path), "127.0.0.1:9")  # never connects
    consumer = app.consumer
    consumer.assignment = lambda: set(assigned)
    consumer.highwater = lambda tp: 0  # nothing to read: only the upload's work pauses anything
    consumer._set_active_tps(assigned)
    governor = LaneGovernor(app, topics, idle_s=0.0)

    async def revoked_callbacks(revoked) -> None:  # the app's own revoke work (streams, tables): not under test
        return None

    consumer._on_partitions_revoked = revoked_callbacks
    await consumer.on_partitions_revoked(set(both))  # a second worker joins: everything is revoked here first
    with governor.working(1, "interactive"):  # an upload by express in the window: holds the old assignment
        await _rebalance(app, consumer, one, assigned)  # this worker keeps partition 1 of each topic
    assert consumer._get_active_partitions() == one
    await consumer.on_partitions_revoked(set(one))  # the other worker goes away: partition 0 comes back here
    await _rebalance(app, consumer, both, assigned)
    assert consumer._get_active_partitions() == both
    with governor.working(1, "interactive"):  # and the governor's holds still work after it
        assert consumer._get_active_partitions() == {tp for tp in both if tp.topic in names[1::2]}
    assert consumer._get_active_partitions() == both


async def test_the_assignment_is_converted_once_per_assignment_and_follows_every_reassignment(
    tmp_path, monkeypatch,
) -> None:
    # The lane governor asks for the assignment twice per event; faust converted every partition anew each time.
    # The consumer thread converts it once per aiokafka assignment, and a new assignment still shows at once.
    import streams.app

    thread = create_app(Settings(data_dir=tmp_path), "127.0.0.1:9").consumer._thread  # never connects
    conversions = []
    monkeypatch.setattr(streams.app, "ensure_TPset", lambda tps: conversions.append(tps) or {TP(*tp) for tp in tps})

    class AiokafkaConsumer:  # aiokafka hands back its Assignment's frozenset for as long as that holds
        tps = frozenset({TopicPartition("t1.batch", 0), TopicPartition("t1.batch", 1)})

        def assignment(self):
            return self.tps

    aiokafka_consumer = AiokafkaConsumer()
    thread._ensure_consumer = lambda: aiokafka_consumer
    first = thread.assignment()
    assert first == {TP("t1.batch", 0), TP("t1.batch", 1)}
    first.clear()  # a caller's own set: changing it changes nothing for the next
    for _ in range(5):
        assert thread.assignment() == {TP("t1.batch", 0), TP("t1.batch", 1)}
    assert len(conversions) == 1
    aiokafka_consumer.tps = frozenset({TopicPartition("t1.batch", 1)})  # a rebalance: a new Assignment
    assert thread.assignment() == {TP("t1.batch", 1)} and len(conversions) == 2
    aiokafka_consumer.tps = frozenset({TopicPartition("t1.batch", 1)})  # equal, but another assignment
    assert thread.assignment() == {TP("t1.batch", 1)} and len(conversions) == 3


def test_the_worker_producer_compresses_as_set(tmp_path) -> None:
    for codec, expected in (("zstd", "zstd"), ("lz4", "lz4"), ("none", None)):
        app = create_app(Settings(data_dir=tmp_path, compression=codec), "127.0.0.1:9")  # never connects
        assert app.producer._settings_default()["compression_type"] == expected
    assert Settings(data_dir=tmp_path).compression_type == "zstd"


def test_the_worker_producer_lingers_as_set(tmp_path) -> None:
    # faust takes its linger in seconds and hands aiokafka milliseconds; a unit slip either way would send every
    # result alone (0) or hold each for seconds
    for linger_ms in (0, 7, Settings.model_fields["producer_linger_ms"].default):
        app = create_app(Settings(data_dir=tmp_path, producer_linger_ms=linger_ms), "127.0.0.1:9")  # never connects
        assert app.producer._settings_default()["linger_ms"] == linger_ms
