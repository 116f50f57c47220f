"""What a polling consumer costs the embedded broker: CPU of the broker process per idle consumer, by fetch wait.

    python bench/broker_polling.py [--seconds 4] [--waits 10,50,100,250,1000]

The embedded broker (Tansu, memory storage) spends CPU on every fetch request, including a fetch that finds
nothing and waits. A damflow stack keeps a few consumers polling all the time (worker, catalog sink, retrier,
progress bars), so this cost is paid during an import whatever the import does: it is most of the broker's CPU in
``bench/priority.py``. This measures it in isolation, against the broker's own idle CPU (no consumer) in the same
run: one idle consumer per fetch wait, then one produce + consume round trip per record on an empty topic.

Then the same round trip on a partition that already holds many batches (``--history``): the embedded broker's
memory storage finds what a fetch returns by going over the batches its partition holds, so a fetch that returns
records costs more the more batches were ever produced there (it keeps them all), while an idle fetch and a
produce do not. A long-running ``damflow up`` on the embedded broker slows down as its topics fill; the same
records in fewer, larger batches cost far less. Prints a table and a ``BENCH_JSON`` line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.rss import cpu_seconds  # noqa: E402
from streams.broker import EmbeddedBroker  # noqa: E402
from streams.kafka import ensure_topics  # noqa: E402


def broker_cpu(pid: int) -> float:
    return sum(cpu_seconds(pid).values())


async def idle_cost(bootstrap: str, pid: int, wait_ms: int | None, seconds: float) -> float:
    """Percent of one core the broker used over ``seconds`` with one idle consumer (``None``: no consumer)."""
    consumer = None
    if wait_ms is not None:
        consumer = AIOKafkaConsumer("idle", bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="latest",
                                    fetch_max_wait_ms=wait_ms)
        await consumer.start()
        getter = asyncio.ensure_future(consumer.getone())  # nothing arrives: it polls for the whole window
        await asyncio.sleep(1.0)  # past its start-up requests (metadata, offsets)
    start = broker_cpu(pid)
    await asyncio.sleep(seconds)  # the window being measured: a consumer polling an empty topic
    used = broker_cpu(pid) - start
    if consumer is not None:
        getter.cancel()
        await consumer.stop()
    return 100 * used / seconds


async def round_trip_cost(bootstrap: str, pid: int, n: int, topic: str = "trip") -> tuple[float, float]:
    """Broker CPU ms per produce (acked) + consume of one record, and the round trip's p50 ms (10 ms wait),
    read from the end of ``topic`` (what it already holds is not read, only gone over by the broker)."""
    async with AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0) as prod:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                    auto_offset_reset="latest", fetch_max_wait_ms=10)
        await consumer.start()
        try:
            await consumer.seek_to_end()
            await prod.send_and_wait(topic, b"warm")
            await consumer.getone()
            start, trips = broker_cpu(pid), []
            for _ in range(n):
                t = time.perf_counter()
                await prod.send_and_wait(topic, b"x" * 500)
                await consumer.getone()
                trips.append((time.perf_counter() - t) * 1000)
            used = broker_cpu(pid) - start
        finally:
            await consumer.stop()
    return 1000 * used / n, sorted(trips)[len(trips) // 2]


async def fill(bootstrap: str, topic: str, batches: int, per_batch: int) -> None:
    """Produce ``batches`` batches of ``per_batch`` records each to ``topic`` (one partition)."""
    async with AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, max_batch_size=per_batch * 1024,
                                max_request_size=per_batch * 1024 + 65536) as prod:
        for _ in range(batches):
            batch = prod.create_batch()
            for _ in range(per_batch):
                if batch.append(key=None, value=b"h" * 500, timestamp=None) is None:
                    raise RuntimeError(f"a batch of {per_batch} records did not fit in one producer batch")
            await (await prod.send_batch(batch, topic, partition=0))


async def history_cost(bootstrap: str, pid: int, steps: list[int], per_batch: int, n: int) -> list[dict]:
    """The round trip's cost on one partition as the records it holds grow through ``steps``, produced
    ``per_batch`` records to a batch."""
    topic, filled, batches, rows = f"history-{per_batch}", 0, 0, []
    await ensure_topics(bootstrap, [topic], 1)
    for records in sorted(set(steps)):
        more = (records - filled) // per_batch
        await fill(bootstrap, topic, more, per_batch)
        filled, batches = filled + more * per_batch, batches + more
        cpu_ms, p50 = await round_trip_cost(bootstrap, pid, n, topic)
        rows.append({"records_filled": filled, "records_per_batch": per_batch, "batches_held": batches,
                     "round_trip_broker_cpu_ms": round(cpu_ms, 3), "round_trip_p50_ms": round(p50, 1)})
        batches += n + 1  # the round trips' own records, one batch each, stay in the partition too
    return rows


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--waits", default="10,50,100,250,1000", help="fetch waits to measure, ms")
    ap.add_argument("--trips", type=int, default=300)
    ap.add_argument("--history", default="0,3000",
                    help="records a partition holds before the round trips are measured again (about a minute at "
                         "the default; the README's figures come from 0,5000,20000, which takes the broker 7 min "
                         "and more on a slow 2-core machine, producing 20,000 one-record batches)")
    args = ap.parse_args()
    waits = [int(w) for w in args.waits.split(",")]
    steps = [int(h) for h in args.history.split(",")] if args.history else []
    with EmbeddedBroker() as broker:  # as `damflow up` runs it
        pid = broker.pid
        assert pid is not None
        await ensure_topics(broker.bootstrap, ["idle", "trip"], 1)
        baseline = await idle_cost(broker.bootstrap, pid, None, args.seconds)
        rows = [{"fetch_max_wait_ms": w, "broker_core_pct": round(await idle_cost(broker.bootstrap, pid, w,
                                                                                    args.seconds), 2)}
                for w in waits]
        trip_ms_cpu, trip_p50 = await round_trip_cost(broker.bootstrap, pid, args.trips)
        history = [row for per_batch in (1, 50) for row in
                   await history_cost(broker.bootstrap, pid, steps, per_batch, max(args.trips // 3, 1))]
    print(f"embedded broker CPU, {len(os.sched_getaffinity(0))} cores; no consumer: {baseline:.2f} % of a core")
    print(f"{'fetch wait ms':>14s} {'% of a core':>12s} {'fetches/s':>10s} {'ms CPU/fetch':>13s}   (one idle consumer)")
    for r in rows:
        per_s = 1000 / r["fetch_max_wait_ms"]  # an idle fetch returns after the whole wait
        r["cpu_ms_per_fetch"] = round((r["broker_core_pct"] - baseline) * 10 / per_s, 2)
        print(f"{r['fetch_max_wait_ms']:14d} {r['broker_core_pct']:12.2f} {per_s:10.1f} {r['cpu_ms_per_fetch']:13.2f}")
    print(f"produce + consume of one record: {trip_ms_cpu:.2f} ms of broker CPU, round trip p50 {trip_p50:.1f} ms "
          f"({args.trips} records, 10 ms fetch wait)")
    if history:
        print("the same round trip on a partition already holding records (the broker keeps every batch):")
        print(f"{'records filled':>15s} {'per batch':>10s} {'batches held':>13s} {'ms CPU/trip':>12s} {'p50 ms':>7s}"
              "   (batches held: with the earlier round trips' own)")
        for r in history:
            print(f"{r['records_filled']:15d} {r['records_per_batch']:10d} {r['batches_held']:13d} "
                  f"{r['round_trip_broker_cpu_ms']:12.3f} {r['round_trip_p50_ms']:7.1f}")
    print("BENCH_JSON " + json.dumps({"bench": "broker_polling", "idle_no_consumer_core_pct": round(baseline, 2),
                                      "idle_consumer": rows, "round_trip_broker_cpu_ms": round(trip_ms_cpu, 2),
                                      "round_trip_p50_ms": round(trip_p50, 1), "history": history}))


if __name__ == "__main__":
    asyncio.run(main())
