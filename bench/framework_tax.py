"""Framework tax: damflow's per-event path with no-op work against a bare faust agent, on the same broker.

    python bench/framework_tax.py [--events 5000] [--repeat 3] [--buffers default,8]

DESIGN.md's target: the full per-event path (decode, log context, routing, failure handling, commit after the
effects) with no-op work keeps >= 0.7x the event rate of a bare faust agent on the same broker.

One embedded broker; ``--events`` ``FileDiscovered`` records are produced to ``t1.batch`` once, then each side
reads all of them in its own consumer group, in a worker process of its own (as ``damflow worker`` runs):

- **bare**: a plain ``faust.App`` (faust's defaults, raw values) whose agent forwards each event's bytes to two
  topics, as a tier forwards its result to ``assets`` and to the next tier: ``await topic.send(...)``, which only
  queues the record (faust's way);
- **damflow**: the worker's app (``streams.app.create_app``: its consumer, its fetch waits, its batch-lane
  buffers) and its own tier-1 agents (``agents.tier1.register``: ``agents.lanes.lane_agent`` with the lane
  governor's accounting and acks by hand, around ``agents.handling.EventHandler``: decode and validate, bind the
  log context, classify failures), with a pool that does no work: tier 1 builds the ``AssetBrowsable`` and emits
  it to ``assets`` and ``t2.batch``, awaiting the broker's acks before the event's offset may commit
  (at-least-once: effects first).

The damflow side runs once per ``--buffers`` value of ``DAMFLOW_BATCH_BUFFER`` (``default``: the setting's
default; 8 was the default before): the batch lane's buffer also caps the records one fetch hands over, and with
no-op work it is what bounds the event rate. Each side's rate is events over the time from its
first event to its last, taken inside the worker; the sides alternate ``--repeat`` times (the machine is noisy).
Prints a table and one ``BENCH_JSON`` line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaProducer  # noqa: E402

from schemas import FileDiscovered, encode, now  # noqa: E402
from streams.broker import EmbeddedBroker  # noqa: E402
from streams import logs  # noqa: E402
from streams.kafka import ensure_topics  # noqa: E402
from streams.parentage import die_with_parent  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.topics import topics_for  # noqa: E402

RESULT = "framework-tax-result "


async def produce(bootstrap: str, topic: str, n: int) -> None:
    async with AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5) as prod:
        sent = []
        for i in range(n):
            event = FileDiscovered(event_id=f"e{i}", batch_id="tax", lane="batch", source="scan",
                                   path=f"/bench/tax/{i:06d}.png", size=1_500_000, mtime_ns=i, discovered_at=now())
            sent.append(await prod.send(topic, encode(event), key=event.path.encode()))
        await asyncio.gather(*sent)


class Counter:
    """Counts events in the worker; prints the rate and stops the worker at the last one."""

    def __init__(self, n: int) -> None:
        self.n, self.seen, self.first = n, 0, 0.0

    def tick(self) -> None:
        self.seen += 1
        if self.seen == 1:
            self.first = time.perf_counter()
        if self.seen == self.n:
            seconds = time.perf_counter() - self.first
            print(RESULT + json.dumps({"events": self.n, "seconds": seconds, "rate": (self.n - 1) / seconds}),
                  flush=True)
            os.kill(os.getpid(), signal.SIGTERM)


def run_bare(bootstrap: str, settings: Settings, n: int, group: str) -> None:
    import faust

    topics = topics_for(settings)
    # faust's defaults, but for the group timeouts (damflow's, which only shorten the join: not per event)
    app = faust.App(group, broker=f"kafka://{bootstrap}", value_serializer="raw", key_serializer="raw",
                    web_enabled=False, store="memory://", datadir=str(settings.data_path / "bare"),
                    topic_partitions=settings.partitions, consumer_auto_offset_reset="earliest",
                    broker_session_timeout=settings.session_timeout_s,
                    broker_heartbeat_interval=settings.heartbeat_interval_s,
                    broker_rebalance_timeout=settings.rebalance_timeout_s)
    source = app.topic(topics.t1_batch)
    outs = [app.topic(f"{topics.assets}.bare"), app.topic(f"{topics.tier2('batch')}.bare")]
    counter = Counter(n)

    @app.agent(source)
    async def forward(stream):
        async for event in stream.events():
            for out in outs:
                await out.send(key=event.key, value=event.value)
            counter.tick()

    _work(faust.Worker(app, loglevel="warn", quiet=True, redirect_stdouts=False))


def run_damflow(bootstrap: str, settings: Settings, n: int, group: str) -> None:
    import contextlib

    import faust

    from agents import tier1
    from agents.browse import Browsed
    from agents.lanes import LaneGovernor
    from streams.app import create_app

    settings = settings.model_copy(update={"group_id": group, "express": False})  # no uploads here
    topics = topics_for(settings)
    app = create_app(settings, bootstrap)
    counter = Counter(n)

    class NoOpPools:
        """The worker's lane pools, with tier 1's work done by nobody: a made-up result at once."""

        def for_lane(self, lane: str) -> NoOpPools:
            return self

        async def run(self, fn, path: str, *args, **kwargs) -> Browsed:
            asset_id = f"{hash(path) & (2**64 - 1):016x}" * 4
            return Browsed(asset_id=asset_id, size=1_500_000, format="PNG", width=1024, height=1024,
                           thumbnails={"256": f"thumbs/{asset_id[:2]}/{asset_id}.256.webp"}, deduplicated=False,
                           work_ms=0.0)

    class CountingGovernor(LaneGovernor):
        """The worker's governor, counting each tier-1 event once its handling (the result acked) is over."""

        @contextlib.contextmanager
        def working(self, tier, lane, position=None):
            with super().working(tier, lane, position):
                yield
            counter.tick()

    # the worker's own tier-1 agents (agents.tier1.register), as `damflow worker` wires them
    governor = CountingGovernor(app, topics, idle_s=settings.lane_idle_s)
    tier1.register(app, settings, topics, NoOpPools(), governor)  # type: ignore[arg-type]
    _work(faust.Worker(app, loglevel="warn", quiet=True, redirect_stdouts=False, override_logging=False))


def _work(worker) -> None:
    worker.spinner = None  # its terminal escapes would land in the result line
    worker.execute_from_commandline()


def measure(side: str, bootstrap: str, data_dir: str, n: int, group: str, buffer: str = "default",
            timeout: float = 600) -> float:
    """Run one side in its own process, in a fresh consumer group; its events per second. A worker that has not
    seen every event within ``timeout`` seconds (its path no longer gets there) is killed, and this raises."""
    env = dict(os.environ, DAMFLOW_DATA_DIR=data_dir, DAMFLOW_LOG_LEVEL="warn")
    env.pop("DAMFLOW_BATCH_BUFFER", None)
    if buffer != "default":
        env["DAMFLOW_BATCH_BUFFER"] = buffer
    cmd = [sys.executable, __file__, "--side", side, "--bootstrap", bootstrap, "--events", str(n),
           "--group", group]
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          preexec_fn=die_with_parent) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            raise RuntimeError(f"{side} worker did not see {n} events in {timeout:.0f} s: {stderr[-2000:]}") from None
    for line in stdout.splitlines():
        if RESULT in line:
            return json.loads(line.split(RESULT, 1)[1])["rate"]
    raise RuntimeError(f"{side} worker gave no result (exit {proc.returncode}): {stderr[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--buffers", default="default,8", help="DAMFLOW_BATCH_BUFFER values for the damflow side")
    ap.add_argument("--worker-timeout", type=float, default=600, help="seconds a side's worker may take")
    ap.add_argument("--side", choices=("bare", "damflow"), help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", help=argparse.SUPPRESS)
    ap.add_argument("--group", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:  # a worker process of one side, its logging set up as `damflow worker` has it
        settings = Settings()
        logs.configure(settings.log_level, settings.log_format)
        (run_bare if args.side == "bare" else run_damflow)(args.bootstrap, settings, args.events, args.group)
        return
    with tempfile.TemporaryDirectory(prefix="damflow-tax-") as data_dir, EmbeddedBroker() as broker:
        settings = Settings(data_dir=data_dir)
        topics = topics_for(settings)
        asyncio.run(ensure_topics(broker.bootstrap, topics.all(), settings.partitions))
        asyncio.run(produce(broker.bootstrap, topics.t1_batch, args.events))
        sides = ["bare"] + [f"damflow buffer {b}" for b in args.buffers.split(",")]
        rates: dict[str, list[float]] = {side: [] for side in sides}
        for run in range(args.repeat):
            for i, side in enumerate(sides):
                kind, buffer = ("bare", "default") if side == "bare" else ("damflow", side.rsplit(" ", 1)[1])
                rates[side].append(measure(kind, broker.bootstrap, data_dir, args.events, f"tax-{i}-{run}", buffer,
                                           args.worker_timeout))
    default = Settings.model_fields["batch_buffer"].default
    bare = statistics.median(rates["bare"])
    print(f"framework tax, {len(os.sched_getaffinity(0))} cores, {args.events} events, embedded broker; "
          f"events/s per run, median, and against bare (target >= 0.70x); batch buffer default: {default}")
    rows = []
    for side in sides:
        median = statistics.median(rates[side])
        rows.append({"side": side, "events_per_s": [round(r, 1) for r in rates[side]],
                     "median": round(median, 1), "ratio": round(median / bare, 3)})
        print(f"  {side:24s} {' '.join(f'{r:7.0f}' for r in rates[side])}   median {median:7.0f}   "
              f"{median / bare:.2f}x")
    print("BENCH_JSON " + json.dumps({"bench": "framework_tax", "events": args.events, "repeat": args.repeat,
                                      "batch_buffer_default": default, "sides": rows}))


if __name__ == "__main__":
    main()
