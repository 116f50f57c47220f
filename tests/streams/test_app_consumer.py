"""The worker consumer delivers every record a fetch handed out, whatever the lane governor did meanwhile.

A fetch hands records out of aiokafka and moves the partition's position past them. If the governor pauses
that partition while the fetch is on its way back (an urgent event started), faust's own loop drops the records
(it delivers only partitions still active when the fetch returns): they were never processed, and the batch lane
went quiet with files left in it.
"""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord
from faust.types import TP

from streams.app import create_app
from streams.settings import Settings

BATCH = TP("t1.batch", 0)
URGENT = TP("t1.interactive", 0)


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


async def _deliver(consumer, fetched: dict[TP, list[ConsumerRecord]], *, during_fetch) -> list[tuple[TP, int]]:
    async def fetch(active_partitions, timeout):
        assert BATCH in active_partitions  # the partition was active when the fetch handed its records out
        during_fetch(consumer)
        return fetched

    consumer._getmany = fetch
    return [(tp, message.offset) async for tp, message in consumer.getmany(timeout=0.1)]


async def test_a_partition_paused_while_its_fetch_returns_still_gets_what_was_fetched(tmp_path) -> None:
    consumer = _consumer(tmp_path, {BATCH, URGENT})
    fetched = {BATCH: [_record(BATCH, n) for n in range(8)], URGENT: [_record(URGENT, 0)]}
    delivered = await _deliver(consumer, fetched, during_fetch=lambda c: c.pause_partitions({BATCH}))
    assert sorted(delivered) == sorted((tp, r.offset) for tp, rs in fetched.items() for r in rs)
    # and the pause holds for the next fetch
    assert BATCH not in consumer._get_active_partitions()


async def test_records_of_a_partition_revoked_during_the_fetch_are_not_delivered(tmp_path) -> None:
    assigned = {BATCH, URGENT}
    consumer = _consumer(tmp_path, assigned)
    fetched = {BATCH: [_record(BATCH, 0)], URGENT: [_record(URGENT, 0)]}
    delivered = await _deliver(consumer, fetched, during_fetch=lambda c: assigned.discard(BATCH))
    assert delivered == [(URGENT, 0)]
