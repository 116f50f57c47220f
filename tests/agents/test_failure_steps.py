"""Each failure of an event says which step of its retry chain it is: the attempt's number and the chain's start,
carried from retry to retry, so the catalog orders the chain's outcomes whatever the workers' clocks say."""

from __future__ import annotations

import asyncio
import types

import pytest

import agents.handling as handling
from schemas import DeadLetter, FileDiscovered, decode, encode
from streams.errors import SchemaError, TransientError
from streams.settings import Settings
from streams.topics import Topics


class _Topic:
    """A topic that keeps what is sent to it (no broker: this is the handler's bookkeeping alone)."""

    def __init__(self, sent: list, name: str) -> None:
        self.sent, self.name = sent, name

    async def send(self, key=None, value=None, headers=None) -> asyncio.Future:
        self.sent.append((self.name, value, headers))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class _Event:
    def __init__(self, value: bytes, headers: dict) -> None:
        self.value = value
        self.message = types.SimpleNamespace(headers=headers, topic="damflow.t1.batch", partition=0, offset=5,
                                             timestamp=1.0, key=b"k")


async def test_an_attempt_that_cannot_be_read_counts_as_the_next_step_of_its_chain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a retried record that the next worker cannot decode (a newer producer's schema) was dead-lettered as the
    # attempt before it: tied with that attempt's "retrying", the workers' clocks decided, and a clock behind
    # kept the batch in flight for ever
    sent: list = []
    app = types.SimpleNamespace(topic=lambda name: _Topic(sent, name),
                                conf=types.SimpleNamespace(producer_max_request_size=1 << 20))
    handler = handling.EventHandler(app, Topics("t."), Settings(), tier=1)
    record = FileDiscovered(event_id="e1", batch_id="b1", lane="batch", source="scan", path="/pics/a.png", size=9,
                            mtime_ns=1, discovered_at=1.0)

    async def work(_record, _attempt):
        raise TransientError("disk busy")

    clock = {"now": 1000.0}
    monkeypatch.setattr(handling, "now", lambda: clock["now"])
    first = await handler.process(_Event(encode(record), {}), work)
    [retry_headers] = [headers for name, _, headers in sent if ".retry." in name]

    def unreadable(*_args, **_kw):
        raise SchemaError("schema version 9 is newer than this worker's")

    monkeypatch.setattr(handling, "decode", unreadable)
    clock["now"] = 995.0  # the next worker's clock is 5 s behind
    second = await handler.process(_Event(encode(record), retry_headers), work)

    assert (first.outcome, first.attempts, first.first_failure_at) == ("retrying", 1, 1000.0)
    assert (second.outcome, second.attempts, second.first_failure_at) == ("dead_lettered", 2, 1000.0)
    [letter] = [decode(value, DeadLetter) for name, value, _ in sent if name.endswith(".dlq")]
    assert (letter.attempts, letter.first_failure_at) == (2, 1000.0)


class _AssetsRefused(_Topic):
    """Refuses what is sent to ``assets`` while ``refusing[0]``: the broker away for now."""

    def __init__(self, sent: list, name: str, refusing: list[bool]) -> None:
        super().__init__(sent, name)
        self.refusing = refusing

    async def send(self, key=None, value=None, headers=None) -> asyncio.Future:
        done = await super().send(key, value, headers)
        if self.refusing[0] and self.name.endswith("assets"):
            refused = asyncio.get_running_loop().create_future()
            refused.set_exception(ConnectionError("broker away"))
            return refused
        return done


def _handler_refusing_assets(sent: list, refusing: list[bool]) -> handling.EventHandler:
    app = types.SimpleNamespace(topic=lambda name: _AssetsRefused(sent, name, refusing),
                                conf=types.SimpleNamespace(producer_max_request_size=1 << 20))
    return handling.EventHandler(app, Topics("t."), Settings(), tier=1)


async def test_a_result_that_cannot_be_published_after_its_express_caller_was_answered_is_done_again() -> None:
    # the caller was told browsable: recording a failure now would dead-letter a file it was told is browsable
    # (and the record's fetched copy, which waits for the ledger's outcome, would commit that failure)
    from streams.express import OnceLedger, answer_early, tell_early

    sent: list = []
    broker_away = [True]
    handler = _handler_refusing_assets(sent, broker_away)
    record = FileDiscovered(event_id="e1", batch_id="u1", lane="interactive", source="upload", path="/o/a.png",
                            size=9, mtime_ns=1, discovered_at=1.0)
    worked = []

    async def browse(_record, _attempt) -> str:  # as tier 1's: the outcome told, then its results published
        worked.append(1)
        tell_early("browsable")
        await handler.emit(record, "a1" * 32)
        return "browsable"

    ledger, finishing = OnceLedger(), set()
    event = _Event(encode(record), {})
    key = ("t.t1.interactive", 0, 5, 0)
    assert await answer_early(lambda: ledger.run(key, lambda: handler.process(event, browse)), finishing) == \
        "browsable"
    [publishing] = finishing
    with pytest.raises(ConnectionError):
        await publishing
    broker_away[0] = False
    # the fetched copy does the work again, and its offset commits after that
    assert await ledger.run(key, lambda: handler.process(event, browse)) == "browsable"
    assert len(worked) == 2
    assert not [name for name, _, _ in sent if ".dlq" in name or ".retry." in name]  # nothing recorded as failed


async def test_results_the_broker_refuses_for_now_are_raised_for_a_redo_and_the_work_s_own_error_is_recorded() -> None:
    # a refused send of results is not the file's failure (its work succeeded): recording it dead-lettered the
    # file; the same error raised by the work itself still is the file's failure, classified as before
    sent: list = []
    refuse = [True]
    handler = _handler_refusing_assets(sent, refuse)
    record = FileDiscovered(event_id="e1", batch_id="b1", lane="batch", source="scan", path="/pics/a.png", size=9,
                            mtime_ns=1, discovered_at=1.0)

    async def publish(_record, _attempt) -> str:
        await handler.emit(record, "a1" * 32)
        return "browsable"

    with pytest.raises(ConnectionError):
        await handler.process(_Event(encode(record), {}), publish)
    assert not [name for name, _, _ in sent if ".dlq" in name or ".retry." in name]  # nothing recorded as failed

    async def lose_connection(_record, _attempt):
        raise ConnectionError("the source's network share went away")

    refuse[0] = False
    failed = await handler.process(_Event(encode(record), {}), lose_connection)
    assert (failed.error_code, failed.outcome) == ("unexpected", "dead_lettered")
    assert [name for name, _, _ in sent if name.endswith(".dlq")] == ["t.t1.dlq"]
