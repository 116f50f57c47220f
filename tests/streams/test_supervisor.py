"""How ``damflow up`` sets up what it starts, before it starts anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.settings import Settings, settings_env
from streams.supervisor import Stack


@pytest.mark.parametrize(("overrides", "workers", "partitions"), [
    ({}, 1, 1),  # a new embedded broker whose topics one worker reads: one partition each
    ({}, 3, 3),  # one per worker, so each has its share
    ({}, 0, 2),  # the workers run elsewhere: the default
    ({"partitions": 4}, 1, 4),  # as set
    ({"broker_url": "kafka:9092"}, 1, 2),  # Kafka or Redpanda: their topics outlive this stack
], ids=["one-worker", "three-workers", "no-workers", "set", "external"])
def test_the_embedded_brokers_topics_get_a_partition_per_worker_unless_set(
    tmp_path: Path, overrides: dict, workers: int, partitions: int
) -> None:
    stack = Stack(Settings(data_dir=tmp_path, **overrides), workers=workers)
    assert stack.settings.partitions == partitions
    # and the worker processes it starts are told the same
    assert settings_env(stack.settings).get("DAMFLOW_PARTITIONS", "2") == str(partitions)
