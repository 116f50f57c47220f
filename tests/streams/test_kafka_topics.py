"""Creating the pipeline's topics: a broker's refusal is an error, not a silent return (no broker needed)."""

from __future__ import annotations

import pytest
from aiokafka.errors import RequestTimedOutError
from aiokafka.protocol.admin import CreateTopicsResponse_v3

from streams import kafka
from streams.app import create_app
from streams.errors import BrokerError, ConfigError
from streams.settings import Settings
from streams.topics import topics_for


def _answer(*topic_errors: tuple[str, int, str | None]) -> CreateTopicsResponse_v3:
    return CreateTopicsResponse_v3(throttle_time_ms=0, topic_errors=list(topic_errors))


class _Admin:
    """An admin client against a broker that holds ``existing`` and answers each CreateTopics with ``answer``
    (what aiokafka's does: it returns the per-topic errors, it raises none of them)."""

    existing: list[str] = []
    answer: CreateTopicsResponse_v3 = _answer()
    asked: list[list[str]] = []
    made: list = []

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
        type(self).made.extend(topics)
        return self.answer


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch) -> type[_Admin]:
    monkeypatch.setattr(kafka, "AIOKafkaAdminClient", _Admin)
    _Admin.existing, _Admin.answer, _Admin.asked, _Admin.made = [], _answer(), [], []
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


async def test_the_pipeline_topics_get_the_partitions_and_replicas_the_settings_ask(admin: type[_Admin],
                                                                                   tmp_path) -> None:
    settings = Settings(partitions=12, replication_factor=3, topic_prefix="p.", data_dir=tmp_path)
    await kafka.ensure_pipeline_topics(settings, "broker:9092")
    assert sorted(t.name for t in admin.made) == sorted(topics_for(settings).all())
    assert {(t.num_partitions, t.replication_factor) for t in admin.made} == {(12, 3)}
    # the topics faust declares itself (its assignor's) are made alike
    assert create_app(settings, "broker:9092").conf.topic_replication_factor == 3


async def test_dead_letters_are_kept_until_dealt_with(admin: type[_Admin], tmp_path) -> None:
    settings = Settings(topic_prefix="p.", data_dir=tmp_path)
    await kafka.ensure_pipeline_topics(settings, "broker:9092")
    kept = {t.name for t in admin.made if t.topic_configs.get("retention.ms") == "-1"}
    assert kept == {"p.t1.dlq", "p.t2.dlq", "p.t3.dlq"}
    assert all(not t.topic_configs for t in admin.made if t.name not in kept)


def test_an_external_broker_gets_a_session_timeout_it_accepts_unless_one_is_given(monkeypatch) -> None:
    from streams.settings import EXTERNAL_SESSION_TIMEOUT_S, Settings, settings_env
    from streams.supervisor import Stack

    monkeypatch.delenv("DAMFLOW_SESSION_TIMEOUT_S", raising=False)
    assert Settings().session_timeout_s == 4.0  # the embedded broker: short, for fast recovery
    external = Settings(broker_url="kafka:9092")
    assert external.session_timeout_s == EXTERNAL_SESSION_TIMEOUT_S == 6.0  # Kafka's and Redpanda's minimum
    assert settings_env(external)["DAMFLOW_SESSION_TIMEOUT_S"] == "6.0"
    assert Settings(broker_url="kafka:9092", session_timeout_s=2.5).session_timeout_s == 2.5
    monkeypatch.setenv("DAMFLOW_BROKER_URL", "kafka:9092")
    assert Settings().session_timeout_s == 6.0
    monkeypatch.setenv("DAMFLOW_SESSION_TIMEOUT_S", "9")
    assert Settings().session_timeout_s == 9.0
    monkeypatch.delenv("DAMFLOW_BROKER_URL")
    monkeypatch.delenv("DAMFLOW_SESSION_TIMEOUT_S")
    # `damflow up` on its embedded broker gives its workers the broker's URL: they keep the stack's timeout
    stack = Stack(Settings())
    stack.bootstrap = "127.0.0.1:9"
    child = stack.child_env()
    assert child["DAMFLOW_BROKER_URL"] == "127.0.0.1:9" and child["DAMFLOW_SESSION_TIMEOUT_S"] == "4.0"
    assert Settings(broker_url=child["DAMFLOW_BROKER_URL"],
                    session_timeout_s=child["DAMFLOW_SESSION_TIMEOUT_S"]).session_timeout_s == 4.0
