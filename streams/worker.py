"""One worker process: the faust app with the tier agents, and its CPU pool.

Workers share the topics through the consumer group (``Settings.group_id``): start more with ``damflow worker``
on any machine that reaches the broker and sees the same data directory.
"""

from __future__ import annotations

import sys

import faust

from agents import tier1, tier2, tier3
from agents.lanes import LaneGovernor, LanePools
from streams.app import create_app
from streams.logs import get
from streams.niceness import lower_priority
from streams.settings import Settings
from streams.topics import topics_for

log = get(__name__)

#: Printed on stdout once the worker's partitions are assigned, for a supervisor waiting on it.
READY_LINE = "damflow-worker-ready"


def run_worker(settings: Settings, bootstrap: str) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    # faust makes its own directory in it without parents: a worker started before anything else on a new data
    # directory (another host, a fresh volume) exited with FileNotFoundError
    settings.data_path.mkdir(parents=True, exist_ok=True)
    app = create_app(settings, bootstrap)
    pools = LanePools(settings, preload=("agents.browse", "agents.index", "agents.quality"))
    pools.warm()
    # after the pools (and the forkserver that replaces their processes) exist: they keep this priority
    lower_priority(settings.service_nice)
    topics = topics_for(settings)
    governor = LaneGovernor(app, topics, idle_s=settings.lane_idle_s,
                            on_urgent=pools.preempt_batch if settings.preempt_batch else None)
    # the last chunks of each level's backlog split evenly across the batch pool (agents.chunking)
    pools.batch_chunks.backlog = governor.waiting
    tier1.register(app, settings, topics, pools, governor)
    tier2.register(app, settings, topics, pools, governor)
    tier3.register(app, settings, topics, pools, governor)

    @app.timer(0.1)
    async def _lanes() -> None:  # lag appears without any work starting or ending
        governor.tick()

    announced = False

    @app.on_partitions_assigned.connect
    async def _assigned(sender, assigned, **_kw) -> None:  # noqa: ARG001
        nonlocal announced
        log.info("partitions_assigned", count=len(assigned))
        if not announced:
            announced = True
            print(READY_LINE, flush=True)

    worker = faust.Worker(
        app, loglevel=settings.log_level, override_logging=False, quiet=True, redirect_stdouts=False,
    )
    worker.spinner = None  # its terminal escapes would land in the supervisor's pipe
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        express = getattr(app, "express", None)
        if express is not None:  # nobody should ring a worker that is gone
            express.withdraw()
        pools.shutdown()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_worker(Settings(), sys.argv[1]))
