"""Finding the broker a running ``damflow up`` started, from the runtime file it leaves (no broker needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from streams.broker import embedded_broker_rss, record_runtime, resolve_bootstrap
from streams.errors import ConfigError
from streams.settings import Settings


def test_the_recorded_broker_is_found_while_its_process_runs(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    record_runtime(settings, "127.0.0.1:9092")  # as `damflow up` does: this process is its recorder
    assert resolve_bootstrap(settings) == "127.0.0.1:9092"


@pytest.mark.parametrize("change", [
    {"started": 1},  # the recorder's pid now belongs to a later process (pids are reused)
    {"pid": 0},  # no pid recorded
])
def test_a_recorder_that_is_gone_is_not_trusted(tmp_path: Path, change: dict) -> None:
    settings = Settings(data_dir=tmp_path)
    record_runtime(settings, "127.0.0.1:9092")
    info = json.loads(settings.runtime_file.read_text()) | change
    settings.runtime_file.write_text(json.dumps(info))
    assert info["pid"] in (0, os.getpid())
    with pytest.raises(ConfigError, match="no broker"):
        resolve_bootstrap(settings)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_the_embedded_brokers_memory_is_read_while_it_and_its_recorder_run(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert embedded_broker_rss(settings) is None  # no `damflow up`
    record_runtime(settings, "127.0.0.1:9092")  # an external broker: no process of ours to read
    assert embedded_broker_rss(settings) is None
    record_runtime(settings, "127.0.0.1:9092", broker_pid=os.getpid())  # this process plays the broker
    rss = embedded_broker_rss(settings)
    assert rss is not None and rss > 1_000_000  # a Python process holds megabytes
    info = json.loads(settings.runtime_file.read_text())
    settings.runtime_file.write_text(json.dumps(info | {"broker_started": 1}))  # its pid is another process's now
    assert embedded_broker_rss(settings) is None
    settings.runtime_file.write_text(json.dumps(info | {"started": 1}))  # its `damflow up` is gone
    assert embedded_broker_rss(settings) is None
    for odd in ({"pid": "x"}, {"broker_pid": True}):  # a file no damflow wrote: nothing to read, no error
        settings.runtime_file.write_text(json.dumps(info | odd))
        assert embedded_broker_rss(settings) is None
