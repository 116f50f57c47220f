"""Creating the pipeline's topics: a broker's refusal is an error, not a silent return (no broker needed)."""

from __future__ import annotations

import pytest
from aiokafka.errors import RequestTimedOutError
from aiokafka.protocol.admin import CreateTopicsResponse_v3

from streams import kafka
from streams.errors import BrokerError, ConfigError


def _answer(*topic_errors: tuple[str, int, str | None]) -> CreateTopicsResponse_v3:
    return CreateTopicsResponse_v3(throttle_time_ms=0, topic_errors=list(topic_errors))


class _Admin:
    """An admin client against a broker that holds ``existing`` and answers each CreateTopics with ``answer``
    (what aiokafka's does: it returns the per-topic errors, it raises none of them)."""

    existing: list[str] = []
    answer: CreateTopicsResponse_v3 = _answer()
    asked: list[list[str]] = []

    def __init__(self, **_kw: object) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def list_topics(self) -> list[str]:
        return list(self.existing)

    async def create_topics(self, topics: list) -> CreateTopicsResponse_v3:
        type(self).asked.append([t.name for t in topics])
        return self.answer


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch) -> type[_Admin]:
    monkeypatch.setattr(kafka, "AIOKafkaAdminClient", _Admin)
    _Admin.existing, _Admin.answer, _Admin.asked = [], _answer(), []
    return _Admin


def test_only_real_refusals_count() -> None:
    refused = kafka.refused_topics(_answer(("a", 0, None), ("b", 36, "Topic 'b' already exists."),
                                           ("c", 38, "Replication factor: 3 larger than available brokers: 1.")))
    assert [(name, error.__name__) for name, error, _ in refused] == [("c", "InvalidReplicationFactorError")]


async def test_a_topic_the_broker_refuses_to_create_fails_with_its_reason(admin: type[_Admin]) -> None:
    admin.answer = _answer(("p.assets", 0, None), ("p.progress", 37, "Number of partitions is out of range"))
    with pytest.raises(ConfigError) as refused:
        await kafka.ensure_topics("broker:9092", ["p.assets", "p.progress"], 12)
    assert "p.progress" in str(refused.value) and "InvalidPartitionsError" in str(refused.value)
    assert "out of range" in str(refused.value) and "p.assets:" not in str(refused.value)


async def test_topics_another_process_made_first_are_fine(admin: type[_Admin]) -> None:
    admin.existing = ["p.assets"]
    admin.answer = _answer(("p.progress", 36, "Topic 'p.progress' already exists."))
    await kafka.ensure_topics("broker:9092", ["p.assets", "p.progress"], 2)
    assert admin.asked == [["p.progress"]]


async def test_a_refusal_that_may_pass_is_asked_again_until_the_deadline(admin: type[_Admin]) -> None:
    admin.answer = _answer(("p.progress", RequestTimedOutError.errno, None))
    with pytest.raises(BrokerError, match="not usable"):
        await kafka.ensure_topics("broker:9092", ["p.progress"], 2, timeout=0.25)
    assert len(admin.asked) > 1
