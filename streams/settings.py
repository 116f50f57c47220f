"""The one settings object. Read once from ``DAMFLOW_*`` environment variables and passed in.

No other module reads ``os.environ`` for damflow settings. Every field is documented here and in the README.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1

#: The group session timeout used on an external broker unless one is given: Kafka's and Redpanda's default
#: ``group.min.session.timeout.ms``; they refuse a consumer that asks for less, and no group forms.
EXTERNAL_SESSION_TIMEOUT_S = 6.0


class Settings(BaseSettings):
    """damflow's configuration; ``Settings()`` reads the environment, keyword arguments override it."""

    # allow_inf_nan: "inf" passes gt=0; a timeout of inf overflowed the Kafka client, a backoff of inf retried at once
    model_config = SettingsConfigDict(env_prefix="DAMFLOW_", frozen=True, extra="forbid", allow_inf_nan=False)

    # -- broker ----------------------------------------------------------------------------------
    #: ``host:port[,host:port]`` of an external Kafka/Redpanda; empty = start the embedded broker.
    broker_url: str | None = None
    #: Loopback address and port of the embedded broker; port 0 picks a free one.
    embedded_host: str = "127.0.0.1"
    embedded_port: int = Field(default=0, ge=0, le=65535)
    #: Threads the embedded broker serves requests on (its async runtime's workers; 0: one per core, its own
    #: default). Every request wakes one of them from another: on a small machine that cross-thread wake-up was a
    #: good part of the broker's CPU, and one thread serves a pipeline's few connections without it.
    embedded_threads: int = Field(default=1, ge=0)
    #: Prefix of every topic name, so several pipelines (or tests) can share one broker.
    topic_prefix: str = "damflow."
    #: Partitions per topic. One worker's parallelism comes from its agents' concurrency, not from partitions;
    #: more partitions let more workers share a topic (docker-compose uses 12), and each costs the embedded
    #: broker CPU on every poll, and a record batch per chunk's results. Unset, ``damflow up`` on the embedded
    #: broker (a new one each time) gives each topic one partition per worker it starts (see
    #: ``streams.supervisor.Stack``).
    partitions: int = Field(default=2, ge=1)
    #: Replicas of each topic damflow creates: 1 suits the embedded broker and a one-node Redpanda; on a Kafka or
    #: Redpanda cluster, 3 keeps every event through the loss of a broker (a broker refuses more than it has).
    replication_factor: int = Field(default=1, ge=1)
    #: Consumer group (the Faust app id) the workers share.
    group_id: str = "damflow-workers"
    #: How long a worker's fetch may wait for data. Real Kafka answers as soon as data arrives; the embedded broker
    #: only after a fraction of this (p50 about a fifth, at most about half), and a shorter wait costs it and the
    #: worker CPU in polls (measured idle: 17 % of a core at 10 ms, 5 % at 100 ms). Uploads do not pay it: they
    #: reach their worker by express (``express``); what does (re-processing, other producers of the interactive
    #: lane, the hop to tier 2) waits about 10 ms at 50. bench/priority.py, 500 files: throughput 0.71 -> 0.74 of
    #: the compute limit from 10 to 50 ms, urgent uploads unchanged.
    fetch_max_wait_ms: int = Field(default=50, ge=0)
    #: ... and once the worker is quiet: nothing fetched for ``idle_after_s``, nothing held back (see
    #: streams/fetch_wait.py). Measured, idle ``damflow up``, CPU per second, all processes: 80 ms at 50, 57 at
    #: 200-250, 52-55 at 500. The first event after a quiet spell waits up to about half of this more on the
    #: embedded broker; so does any other request the worker sends to the broker meanwhile (the connection
    #: answers in order: the first fetch after a rebalance, an offset lookup), on any broker. Equal to
    #: ``fetch_max_wait_ms``: always short.
    idle_fetch_max_wait_ms: int = Field(default=250, ge=0)
    idle_after_s: float = Field(default=2.0, gt=0)
    #: The same for the reader that answers ``upload --wait`` and ``POST /upload?wait=1``: it polls only while
    #: somebody waits (paused otherwise), so it can afford to poll more often than the workers.
    waiter_fetch_max_wait_ms: int = Field(default=5, ge=0)
    #: The same for consumers where a few tens of ms do not matter (catalog sink, progress bars): each idle
    #: poll costs the broker CPU that the workers would rather have. The embedded broker answers about a fifth
    #: of the wait after data arrives, so the catalog lags by some 50 ms. bench A/B, 500-file import, together
    #: with the heartbeat below: services' CPU 12.2 -> 10.3 % of the pool's (100 ms and 0.5 s before).
    sink_fetch_max_wait_ms: int = Field(default=250, ge=0)
    #: ... and the bytes (as sent: compressed, see ``compression``) such a consumer lets pile up before a fetch
    #: returns (within that wait): during an import the catalog sink then takes the results in a few fetches a
    #: second instead of one or two events per fetch.
    sink_fetch_min_bytes: int = Field(default=64 * 1024, ge=1)
    #: ... but while a batch's tier is about to finish (expected within ``sink_prompt_eta_s``), the catalog sink
    #: fetches with this wait and no byte minimum, until twice that long after the last write that said so: the
    #: end of an import reaches the catalog (and ``ingest --wait``) without the gathering wait. Measured, 500-file
    #: import: last file browsable -> ``ingest --wait`` returns, 180-240 ms before, 33-62 ms with this. The
    #: follower of ``ingest --wait`` goes prompt the same way (its progress events come a fetch later): 60-file
    #: imports, that gap's median 94 ms before (36-122), 20 ms with both (12-39).
    sink_prompt_fetch_max_wait_ms: int = Field(default=25, ge=0)
    sink_prompt_eta_s: float = Field(default=1.0, ge=0)
    #: The same for consumers of rare events (the retrier's retry topics, whose backoff is seconds anyway).
    rare_fetch_max_wait_ms: int = Field(default=500, ge=0)
    #: How long a worker's producer holds a result before sending it, so that results finished close together
    #: (a chunk's come back from the pool at once) share a record batch. The embedded broker keeps every batch
    #: and goes over a partition's batches on fetches that return data, so its CPU per file grows with the
    #: batches a long-running ``damflow up`` holds. Measured, 500 files to the end of tier 3 at 10 ms: the
    #: worker's record batches 630 -> 476, its produce requests 346 -> 225; bench/long_session.py, eight such
    #: imports on one ``damflow up``: broker CPU per file 3.0 ms on average against 3.3 at 0, growing alike
    #: (0.14 against 0.15 ms per 1000 files held, same run). Off by default: every ack a worker awaits comes this
    #: much later, including on the interactive lane (a failed upload's express answer waits for its retry or dead
    #: letter and its ``AssetFailed``, one after the other; an upload's hops to searchable and enriched; a
    #: ``?wait=1`` answer read from ``assets`` when express is off), and an agent's slot is held that much longer.
    producer_linger_ms: int = Field(default=0, ge=0)
    #: Codec of the record batches every damflow producer sends; consumers decompress whatever they are sent.
    #: The embedded broker keeps each batch as it was sent, in memory, so this is what its memory grows by per
    #: file: records of one batch share their keys, paths and ids, and compress to a fourth or less. Measured,
    #: one ``damflow up``, broker RSS growth through tier 3 (21 MB of records at 5000 files): 500 files 5.7 /
    #: 2.7 / 2.2 MB with none / lz4 / zstd; 5000 files 47 / 19 / 14 MB; the processes' CPU the same within the
    #: noise. Kafka and Redpanda keep the batches compressed on disk as well. Every reader needs the codec: the Java
    #: client has zstd from Kafka 2.1 (brokers too), librdkafka when built with it, Python clients with an extra
    #: package (damflow's own: cramjam, since this setting). ``none`` (or ``lz4``) for such a reader, and while a
    #: damflow from before this setting still reads the same topics. (``gzip`` is compressed at level 9: slow.)
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "zstd"
    #: Group membership timeouts: short, so a dead worker's partitions move on quickly and a joining worker
    #: gets partitions fast (the embedded broker holds a join for about the rebalance timeout). Kafka and Redpanda
    #: refuse a join whose session timeout is below their group.min.session.timeout.ms (6 s by default), so with
    #: ``broker_url`` set the default is ``EXTERNAL_SESSION_TIMEOUT_S`` (a value given is kept as given).
    session_timeout_s: float = Field(default=4.0, gt=0)
    #: Each heartbeat is a request the broker pays for, per consumer (worker, catalog sink, retrier); a quarter
    #: of the session timeout still leaves three beats before a member counts as gone.
    heartbeat_interval_s: float = Field(default=1.0, gt=0)
    rebalance_timeout_s: float = Field(default=3.0, gt=0)

    # -- storage -----------------------------------------------------------------------------------
    data_dir: Path = Path("damflow-data")

    # -- work --------------------------------------------------------------------------------------
    #: Processes in the batch lane's CPU pool of one worker (decode, hash, thumbnails). Default: the cores.
    pool_size: int = Field(default_factory=_cores, ge=1)
    #: Processes reserved for the interactive lane, so an urgent file never waits for a batch file's slot.
    interactive_pool_size: int = Field(default=1, ge=1)
    #: Niceness of the batch pool's processes: they yield the CPU to interactive work and to the pipeline itself.
    batch_nice: int = Field(default=10, ge=0, le=19)
    #: Niceness of the pipeline's own service processes (worker event loops, catalog sink, HTTP, the embedded
    #: broker). The interactive pool keeps the caller's priority, so an urgent file's work runs before them.
    service_nice: int = Field(default=10, ge=0, le=19)
    #: Niceness of ``damflow ingest`` (the folder scanner): below the services, so a burst of scanning at the
    #: start of an import cannot hold up the worker that serves an urgent upload.
    scan_nice: int = Field(default=15, ge=0, le=19)
    #: Run the batch pool in Linux's idle scheduling class (SCHED_IDLE): it gets a core only when nothing else
    #: wants it, so urgent work and the pipeline's own processes never wait behind batch files. Ignored where
    #: the class does not exist.
    batch_idle_class: bool = True
    #: Freeze the batch pool while an urgent file is being made browsable (SIGSTOP, SIGCONT after), so it has
    #: the cores, caches and memory bandwidth to itself; the frozen cores idle meanwhile. Off by default: with
    #: the batch pool in the idle class it buys little and costs throughput. bench/priority.py, 500 files, two
    #: runs each: on, urgent work p50 28.4/29.1 ms, throughput 0.76/0.75 of the compute limit; off, 30.0/31.2 ms,
    #: 0.79/0.78. Worth it where the last milliseconds of an urgent file matter more than the import's pace.
    #: The time a batch file is frozen does not count towards its ``decode_timeout_s``.
    preempt_batch: bool = False
    #: Express delivery of urgent uploads (see streams.express): after publishing an upload, the HTTP endpoint
    #: and ``damflow upload`` hand the record straight to the worker on this host that owns its partition, which
    #: starts at once and (to a caller that waits) answers with the outcome, instead of a broker poll each way.
    #: The broker's copy stays the durable one; a worker runs the record once whichever copy comes first.
    express: bool = True
    #: How long an upload that waits for its outcome gives its worker to answer by express before it also reads
    #: the outcome from ``assets``: a worker that froze (stopped, its loop blocked) or lost the partition to
    #: another worker never answers, and the other worker's outcome would otherwise be read only at the wait's end.
    express_patience_s: float = Field(default=1.0, gt=0)
    #: Batch events a worker holds fetched but not started, per topic (and the records one fetch hands over):
    #: bounded, so memory stays flat however long the backlog. Measured at 8 and at 32, 2 cores:
    #: bench/priority.py, six alternating runs each: urgent p50 52.7 / 52.8 ms, p99 69.4 / 71.0 (medians),
    #: throughput 0.82 / 0.84 of the compute limit, services 4.4 / 4.2 ms CPU per file. Uploads during an
    #: import, 12 per run: searchable (their tier 2 comes by fetch, not express) p50 54-58 / 57-59 ms over three
    #: runs each; with express off, browsable p50 54-57 / 52-57 ms over two. bench/framework_tax.py: 0.65x /
    #: 0.76x a bare faust agent's event rate.
    batch_buffer: int = Field(default=32, ge=1)
    #: Batch files per pool task (see agents.chunking): the worker's and the broker's cost per file is paid
    #: once per chunk, which leaves that CPU to the pool. 1 sends every file alone. 16 with one partition per
    #: topic, against 8 with two: a tier-1 import of 500 files left 141 record batches on the broker instead of
    #: 333, and its services took 0.086 of the pool's CPU instead of 0.103 (medians of four interleaved runs,
    #: 2 cores; neither change alone showed through the noise). A chunk's time limit is two files' worth
    #: (``agents.chunking.CHUNK_LIMITS``): a library whose files take over ``decode_timeout_s`` / 8 each (7.5 s
    #: at the defaults: hundred-megapixel scans) has its chunks time out and run again one file per task, so
    #: set this lower there.
    batch_chunk: int = Field(default=16, ge=1)
    #: While a chunk's process works on one file, ask the kernel to read the next file of the chunk (see
    #: agents.readahead): an import from a cold disk does not wait for the disk file by file.
    read_ahead: bool = True
    #: Once an import has read this many MiB without a pause, each of its files leaves the page cache as soon as
    #: its work is done (``POSIX_FADV_DONTNEED``, see agents.chunking): a big import neither pushes out what other
    #: programs cached nor has the kernel reclaim under them; a smaller one's files stay cached for tier 2, which
    #: reads a file from the disk for more CPU. Default: an eighth of the machine's memory; 0: never.
    drop_read_pages_after_mb: int | None = Field(default=None, ge=0)
    #: Files one worker keeps in flight per lane of tier 1. Default for batch: enough for a full chunk per pool
    #: process and one waiting (at least twice the pool size), so the pool never idles while finished files
    #: are being published.
    tier1_batch_concurrency: int | None = Field(default=None, ge=1)
    tier1_interactive_concurrency: int = Field(default=2, ge=1)
    #: Thumbnail sizes (longest side, px): the first is always made, the others when the source is larger. The
    #: first is 256: "browsable" means a 256-px thumbnail (DESIGN.md), and tier 3 scores it. (A size of 0 or an
    #: empty list was taken, and then every file of an import was dead-lettered.)
    thumbnail_sizes: tuple[Annotated[int, Field(ge=1, le=16384)], ...] = Field(default=(256, 1440), min_length=1)
    thumbnail_quality: int = Field(default=80, ge=1, le=100)

    @model_validator(mode="before")
    @classmethod
    def _session_timeout_for_the_broker(cls, data: object) -> object:
        # given, as if by the caller: a child process (see settings_env) is given it as well
        if isinstance(data, dict) and data.get("broker_url") and data.get("session_timeout_s") is None:
            data = {**data, "session_timeout_s": EXTERNAL_SESSION_TIMEOUT_S}
        return data

    @model_validator(mode="after")
    def _pairs_that_work_together(self) -> Settings:
        # each accepted alone, they broke what they set together: a low-water mark at or above the high one
        # never held the scan back; a heartbeat no shorter than the session had workers counted as gone
        if self.scan_low_water >= self.scan_high_water:
            raise ValueError(f"DAMFLOW_SCAN_LOW_WATER ({self.scan_low_water}) must be below "
                             f"DAMFLOW_SCAN_HIGH_WATER ({self.scan_high_water})")
        if self.heartbeat_interval_s >= self.session_timeout_s:
            raise ValueError(f"DAMFLOW_HEARTBEAT_INTERVAL_S ({self.heartbeat_interval_s}) must be below "
                             f"DAMFLOW_SESSION_TIMEOUT_S ({self.session_timeout_s}) (a third of it or less is best)")
        return self

    @field_validator("thumbnail_sizes")
    @classmethod
    def _browsable_size_first(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        if sizes[0] != 256 or len(set(sizes)) != len(sizes):
            raise ValueError("the first size must be 256 (what browsable means, what tier 3 scores), each once")
        return sizes

    #: Images declaring more pixels than this are refused as decompression bombs.
    max_image_pixels: int = Field(default=178_956_970, ge=1)
    #: Files larger than this are refused before being read.
    max_file_bytes: int = Field(default=2 * 1024**3, ge=1)
    #: Per-file bounds of the isolated decoder: a file past either costs its pool process, nothing more.
    decode_timeout_s: float = Field(default=60.0, gt=0)
    decode_memory_mb: int = Field(default=3072, ge=0)
    #: Test hook: lets file names and sidecar files inject decoder crashes, hangs and transient failures
    #: (see ``agents.faults``). Never enable in production.
    fault_injection: bool = False

    #: A lower-priority level (tier-2 batch, then tier 3) resumes only after the levels above it have been idle
    #: this long in a worker (see agents.lanes).
    lane_idle_s: float = Field(default=0.25, ge=0)
    #: Files in flight in tier 2's batch lane per worker (metadata: light work). Default: as tier 1's batch lane,
    #: so the batch pool gathers tier-2 files into full chunks too and a chunk's results go to the broker
    #: together. At 4 (the default before, for both lanes) nearly every result was a produce request and a record
    #: batch of its own. Measured, 500 files on 2 cores: tier 2 took 2.0-2.2 s at 4 and 1.2 s at 24; the worker's
    #: record batches through tier 3 fell from 1,728 to 1,151. (The embedded broker's CPU per import grew as much
    #: over eight imports one after the other on one stack: 46 to 119 ticks at 4, 47 to 115 at 24.)
    tier2_concurrency: int | None = Field(default=None, ge=1)
    #: Files in flight in tier 2's interactive lane per worker: they share the reserved interactive pool (one
    #: file per task, in order) with urgent files' tier 1, so few, or a burst of uploads' metadata would queue
    #: ahead of the next urgent file.
    tier2_interactive_concurrency: int = Field(default=4, ge=1)
    #: Files in flight in tier 3 per worker. Default: as tier 1's batch lane, for the same reasons as tier 2's:
    #: the batch pool gathers them into chunks (after any tier-1 or tier-2 calls waiting there), so the pool does
    #: not idle while a file's results wait for the broker's ack, and a chunk's results share a record batch.
    #: At the pool's size (the default before) every file was a pool task and a batch of its own on ``assets``:
    #: 500 files to the end of tier 3 left 1,042 record batches from the worker, 712 on ``assets`` (630 and 303
    #: in chunks of 8 on two partitions, 200 and 119 in chunks of 16 on one), and over eight such imports on one
    #: ``damflow up`` (bench/long_session.py) the broker's CPU per file grew 0.95 ms for every 1000 files held
    #: (3.1 -> 6.4 ms; 5.2 on average); 0.15-0.35 in chunks of 8 (3.3 on average).
    #: Tier-3 chunks start only on an idle batch process (never queued there): an import that starts meanwhile
    #: waits at most for the chunks already running. (With ``batch_chunk`` 1 every call is a task of its own, in
    #: the same order and under the same rule.)
    tier3_concurrency: int | None = Field(default=None, ge=1)
    #: Cost gate to tier 3 (embeddings, quality, sessions): what is worth the background work.
    tier3_enabled: bool = True
    #: Skip images smaller than this many pixels (icons, previews, 1x1 crops).
    tier3_min_pixels: int = Field(default=128 * 128, ge=0)
    #: Skip exact duplicates (the same bytes already went through under another path).
    tier3_skip_duplicates: bool = True

    # -- failures ---------------------------------------------------------------------------------------
    #: Attempts per event before a transient failure is dead-lettered (1 = no retries).
    max_attempts: int = Field(default=3, ge=1, le=100)
    #: Backoff before retry n is ``retry_backoff_s * 2**(n-1)``, capped, with +-``retry_jitter`` of it random.
    retry_backoff_s: float = Field(default=2.0, ge=0)
    retry_backoff_max_s: float = Field(default=300.0, ge=0)
    retry_jitter: float = Field(default=0.25, ge=0, le=1)
    #: ``damflow dlq replay`` refuses an event replayed this many times already.
    replay_cap: int = Field(default=3, ge=1)

    # -- scanner / upload -------------------------------------------------------------------------------
    #: Publish a running total at least every this many files found.
    scan_report_every: int = Field(default=50, ge=1)
    #: Backpressure: the scanner stops reading and publishing when the workers' lag on its lane reaches the high
    #: water mark, and goes on once it is down to the low one — a huge folder never floods broker or memory.
    scan_high_water: int = Field(default=1000, ge=1)
    scan_low_water: int = Field(default=500, ge=0)
    #: How often (in files published) the scanner asks for the lag, and how often it asks while paused (s).
    scan_lag_every: int = Field(default=50, ge=1)
    scan_lag_poll_s: float = Field(default=0.2, gt=0)
    upload_max_bytes: int = Field(default=200 * 1024**2, ge=1)
    upload_max_files: int = Field(default=32, ge=1)
    #: Sync each stored upload (its bytes and its name) to disk before it is answered: an upload that was
    #: answered survives a power loss. The endpoint syncs while the upload is published and worked on, so this
    #: costs ``?wait=1`` nothing and an immediate answer the sync (about 2 ms for 2 MB here).
    upload_fsync: bool = True
    #: When set, ``POST /upload`` requires ``Authorization: Bearer <token>``.
    upload_token: SecretStr | None = None

    # -- HTTP (served by `damflow up`) ---------------------------------------------------------------------
    http_host: str = "127.0.0.1"
    #: 0 picks a free port (tests); ``damflow up`` prints the address it serves on.
    http_port: int = Field(default=8470, ge=0, le=65535)
    http_wait_timeout_s: float = Field(default=30.0, gt=0)
    http_wait_timeout_max_s: float = Field(default=300.0, gt=0)
    #: How long a ``?wait=1`` answer waits for its outcomes to be written into the catalog (normally about a
    #: millisecond, more behind a write of the catalog sink's); past it the answer goes out all the same.
    http_catalog_write_timeout_s: float = Field(default=0.5, gt=0)
    http_sse_heartbeat_s: float = Field(default=15.0, gt=0)
    http_max_sse_clients: int = Field(default=64, ge=1)
    http_shutdown_timeout_s: float = Field(default=5.0, gt=0)
    #: An upload whose body sends no byte for this long is answered 408 and dropped (its temp file goes).
    http_body_idle_timeout_s: float = Field(default=30.0, gt=0)
    #: A live progress client whose connection takes no byte for this long once the socket's buffers are full
    #: (a write waits) is reset, freeing its place among ``http_max_sse_clients`` and its socket.
    http_sse_write_timeout_s: float = Field(default=30.0, gt=0)

    # -- logging -----------------------------------------------------------------------------------------
    log_level: Literal["debug", "info", "warn", "error"] = "info"
    #: ``auto``: pretty on a terminal, JSON otherwise.
    log_format: Literal["auto", "json", "console"] = "auto"

    @property
    def embedded(self) -> bool:
        return not self.broker_url

    @property
    def compression_type(self) -> str | None:
        """``compression`` as the Kafka client takes it."""
        return None if self.compression == "none" else self.compression

    @property
    def batch_concurrency(self) -> int:
        return self.tier1_batch_concurrency or max(2 * self.pool_size, (self.pool_size + 1) * self.batch_chunk)

    @property
    def tier2_batch_concurrency(self) -> int:
        return self.tier2_concurrency or self.batch_concurrency

    @property
    def tier3_batch_concurrency(self) -> int:
        return self.tier3_concurrency or self.batch_concurrency

    @property
    def drop_read_pages_after_bytes(self) -> int:
        if self.drop_read_pages_after_mb is not None:
            return self.drop_read_pages_after_mb * 1024 * 1024
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 8
        except (ValueError, OSError):  # not known here: never
            return 0

    @cached_property
    def data_path(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def catalog_path(self) -> Path:
        return self.data_path / "catalog.sqlite"

    @property
    def thumbs_dir(self) -> Path:
        return self.data_path / "thumbs"

    @property
    def originals_dir(self) -> Path:
        return self.data_path / "originals"

    @property
    def dlq_ledger_path(self) -> Path:
        return self.data_path / "dlq.sqlite"

    @property
    def runtime_file(self) -> Path:
        """Where ``damflow up`` records the broker address it started, for the other commands."""
        return self.data_path / "run" / "broker.json"


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``DAMFLOW_*`` variables that reproduce ``settings`` in a child process (explicitly set fields only)."""
    env = {}
    for name in settings.model_fields_set:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, tuple | list):
            value = json.dumps(list(value))
        env[f"DAMFLOW_{name.upper()}"] = str(value)
    return env
