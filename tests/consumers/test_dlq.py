"""Dead-letter selection, replay eligibility and the idempotent ledger, without a broker."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import time
from pathlib import Path

import msgspec
import pytest
from aiokafka.errors import MessageSizeTooLargeError

from consumers.dlq import (
    BadFilter, Ledger, Letter, parse_when, purge, read_back, refused, replay, replayable, select,
)
from schemas import AssetBrowsable, AssetIndexed, DeadLetter, FileDiscovered, encode
from streams.settings import Settings
from streams.topics import topics_for


def letter(offset: int, *, replay_count: int = 0, error_class: str = "CorruptImage", batch: str = "b1",
           failed_at: float = 1000.0, payload: bytes | None = None) -> Letter:
    record = FileDiscovered(event_id=f"e{offset}", batch_id=batch, lane="batch", source="scan", path=f"/p/{offset}.png",
                            size=1, mtime_ns=1, discovered_at=1.0, replay_count=replay_count)
    raw = encode(record) if payload is None else payload
    try:
        text, enc = raw.decode(), "utf-8"
    except UnicodeDecodeError:
        text, enc = base64.b64encode(raw).decode(), "base64"
    env = DeadLetter(original_topic="damflow.t1.batch", original_partition=0, original_offset=offset,
                     original_payload=text, payload_encoding=enc, consumer_group="g", error_class=error_class,
                     error_code="x", error_message="m", first_failure_at=failed_at, last_failure_at=failed_at,
                     worker_host="h", worker_version="0", tier=1, file_path=record.path, batch_id=batch,
                     replay_count=replay_count)
    return Letter(1, "damflow.t1.dlq", 0, offset, 0, env)


def test_select_filters_by_class_batch_time_status_and_ids() -> None:
    letters = [letter(1), letter(2, error_class="DecoderTimeout"), letter(3, batch="b2"), letter(4, failed_at=5000)]
    letters[0].status = "replayed"
    assert [x.offset for x in select(letters)] == [2, 3, 4]
    assert [x.offset for x in select(letters, error_class="DecoderTimeout")] == [2]
    assert [x.offset for x in select(letters, batch="b2")] == [3]
    long_batch = letter(5, batch="0123456789abcdef0123456789abcdef")
    # by its start, as `damflow status` shows it: the whole id only matched, and its first 8 matched nothing
    assert [x.offset for x in select([*letters, long_batch], batch="01234567")] == [5]
    assert [x.offset for x in select(letters, since=2000)] == [4]
    assert [x.offset for x in select(letters, until=2000)] == [2, 3]
    assert [x.offset for x in select(letters, ids=["1:0:1"])] == [1]  # explicit ids ignore the status
    assert len(select(letters, statuses=("pending", "replayed"))) == 4


def test_replay_raises_the_count_and_refuses_past_the_cap() -> None:
    settings = Settings(replay_cap=2)
    event, why = replayable(letter(1, replay_count=1), settings)
    assert why == "" and event.replay_count == 2 and event.source == "replay" and event.event_id == "e1"
    refused, why = replayable(letter(2, replay_count=2), settings)
    assert refused is None and "cap 2" in why


@pytest.mark.parametrize("tier", [2, 3])
def test_a_later_tiers_letter_replays_the_event_that_tier_consumes(tier: int) -> None:
    asset = "ab" * 32
    common = dict(event_id="e1", batch_id="b1", lane="batch", source="scan", asset_id=asset, path="/p/1.png")
    record = AssetBrowsable(**common, size=1, mtime_ns=1, format="PNG", width=8, height=8, thumbnails={},
                            discovered_at=1.0, browsable_at=2.0) if tier == 2 else \
        AssetIndexed(**common, parser_version=1, metadata_path="m.json", indexed_at=3.0)
    env = DeadLetter(original_topic=f"damflow.t{tier}.batch", original_partition=0, original_offset=7,
                     original_key=asset, original_payload=encode(record).decode(), consumer_group="g",
                     error_class="SourceUnreadable", error_code="source_unreadable", error_message="m",
                     first_failure_at=1.0, last_failure_at=1.0, worker_host="h", worker_version="0", tier=tier)
    event, why = replayable(Letter(1, f"damflow.t{tier}.dlq", 0, 7, 0, env), Settings(replay_cap=1))
    assert why == "" and type(event) is type(record)
    assert event.replay_count == 1 and event.event_id == "e1" and event.asset_id == asset
    again = DeadLetter(**{**msgspec.structs.asdict(env), "original_payload": encode(event).decode()})
    refused, why = replayable(Letter(1, f"damflow.t{tier}.dlq", 0, 8, 0, again), Settings(replay_cap=1))
    assert refused is None and "cap 1" in why


def test_poison_pills_are_not_replayable() -> None:
    event, why = replayable(letter(1, payload=b"\x00\xffnot json"), Settings())
    assert event is None and "poison pill" in why


def test_ledger_records_each_action_once(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "dlq.sqlite")
    x = letter(7)
    assert ledger.record(x, "replayed") is True
    assert ledger.record(x, "replayed") is False
    ledger.annotate([x])
    assert x.status == "replayed" and [h["action"] for h in x.history] == ["replayed"]
    ledger.record(x, "purged")
    ledger.annotate([x])
    assert x.status == "purged"


def test_parse_when() -> None:
    assert abs(parse_when("2h") - (time.time() - 7200)) < 5
    assert parse_when("1700000000") == 1700000000.0
    assert parse_when("2026-01-02T03:04:05+00:00") == 1767323045.0
    with pytest.raises(BadFilter):
        parse_when("yesterday-ish")


def test_a_cut_letter_replays_the_value_read_back_from_its_topic_or_says_why_not() -> None:
    whole = letter(1)
    raw = whole.envelope.original_payload.encode()
    cut = msgspec.structs.replace(whole.envelope, original_payload=base64.b64encode(raw[:20]).decode(),
                                  payload_encoding="base64", payload_truncated=True, original_size=len(raw),
                                  received_topic="damflow.t1.retry.1")
    unread, why = replayable(Letter(1, "damflow.t1.dlq", 0, 1, 0, cut), Settings())
    assert unread is None and f"{len(raw)}-byte value" in why and "the whole of it is at damflow.t1.retry.1 offset 1" in why
    gone, why = replayable(Letter(1, "damflow.t1.dlq", 0, 1, 0, cut, read_back_tried=True), Settings())
    assert gone is None and "could not be read back from damflow.t1.retry.1 offset 1" in why
    event, why = replayable(Letter(1, "damflow.t1.dlq", 0, 1, 0, cut, fetched=raw), Settings())
    assert why == "" and event.event_id == "e1" and event.replay_count == 1


def test_a_letter_whose_key_alone_was_cut_replays_from_its_envelope() -> None:
    whole = letter(1)
    cut_key = msgspec.structs.replace(whole.envelope, original_key="k" * 4096, key_truncated=True)
    event, why = replayable(Letter(1, "damflow.t1.dlq", 0, 1, 0, cut_key), Settings())
    assert why == "" and event.event_id == "e1"


def test_a_new_letter_at_an_old_letters_offset_is_its_own(tmp_path: Path) -> None:
    # the embedded broker keeps topics in memory: after a restart, offsets start from 0 again, the ledger stays
    ledger = Ledger(tmp_path / "dlq.sqlite")
    old = letter(0)
    old.fingerprint = "old"
    ledger.record(old, "replayed")
    new = letter(0, error_class="DecoderTimeout")
    new.fingerprint = "new"
    ledger.annotate([old, new])
    assert (old.status, new.status) == ("replayed", "pending")
    assert [x.offset for x in select([old, new])] == [0]
    assert ledger.record(new, "replayed") is True


def test_a_ledger_from_before_fingerprints_still_knows_its_letters(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "dlq.sqlite") as db:
        db.execute("CREATE TABLE actions (topic TEXT, partition INTEGER, offset INTEGER, action TEXT, at REAL,"
                   " detail TEXT, PRIMARY KEY (topic, partition, offset, action))")
        db.execute("INSERT INTO actions VALUES ('damflow.t1.dlq', 0, 7, 'replayed', 1.0, 'to t1')")
    ledger = Ledger(tmp_path / "dlq.sqlite")
    x = letter(7)  # written at 0 ms: before the action at 1.0 s
    x.fingerprint = "anything"
    newer = Letter(1, "damflow.t1.dlq", 0, 7, 5000, x.envelope, fingerprint="newer")  # written after it
    ledger.annotate([x, newer])
    assert x.status == "replayed" and ledger.record(x, "replayed") is False
    assert newer.status == "pending"  # a letter at the same offset since a broker restart is another


def test_a_letter_that_cannot_be_replayed_says_why_and_the_rest_go(tmp_path: Path) -> None:
    bad_base64 = letter(1)
    bad_base64.envelope = msgspec.structs.replace(bad_base64.envelope, original_payload="!!!not base64***",
                                                  payload_encoding="base64")
    negative = letter(2, replay_count=-1_000_000_000)  # would pass any cap, for a billion replays
    good = letter(3)
    too_big = letter(4)
    sent: list[tuple[str, bytes]] = []

    class Producer:
        async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
            if b'"e4"' in value:
                raise MessageSizeTooLargeError()
            sent.append((topic, value))

    settings = Settings(data_dir=tmp_path)
    rows = asyncio.run(replay([bad_base64, negative, too_big, good], Producer(),  # type: ignore[arg-type]
                              Ledger(tmp_path / "l.sqlite"), settings, topics_for(settings)))
    assert "not valid base64" in rows[0]["result"] and "no count" in rows[1]["result"]
    assert rows[2]["result"].startswith("not sent to damflow.t1.batch: MessageSizeTooLargeError")
    assert rows[3]["result"] == "replayed to damflow.t1.batch" and len(sent) == 1
    assert refused(rows) == rows[:3]  # `damflow dlq replay` exits 1 for them
    assert too_big.status == "pending"  # not recorded as replayed: the next replay tries it again
    again = asyncio.run(replay([good], Producer(), Ledger(tmp_path / "l.sqlite"),  # type: ignore[arg-type]
                               settings, topics_for(settings)))
    assert refused(again) == [] and again[0]["result"] == "skipped: already replayed"


def test_a_later_tiers_letter_naming_no_topic_of_its_tier_goes_to_its_own_batch_lane(tmp_path: Path) -> None:
    asset = "ab" * 32
    record = AssetBrowsable(event_id="e1", batch_id="b1", lane="batch", source="scan", asset_id=asset, path="/p",
                            size=1, mtime_ns=1, format="PNG", width=8, height=8, thumbnails={}, discovered_at=1.0,
                            browsable_at=2.0)
    env = DeadLetter(original_topic="garbled", original_partition=0, original_offset=7, original_key=asset,
                     original_payload=encode(record).decode(), consumer_group="g", error_class="X", error_code="x",
                     error_message="m", first_failure_at=1.0, last_failure_at=1.0, worker_host="h",
                     worker_version="0", tier=2)
    sent: list[str] = []

    class Producer:
        async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
            sent.append(topic)

    settings = Settings(data_dir=tmp_path)
    asyncio.run(replay([Letter(2, "damflow.t2.dlq", 0, 7, 0, env)], Producer(),  # type: ignore[arg-type]
                       Ledger(tmp_path / "l.sqlite"), settings, topics_for(settings)))
    assert sent == ["damflow.t2.batch"]  # before: tier 1's, which cannot read an AssetBrowsable


def test_a_time_that_is_no_time_is_refused() -> None:
    for text in ("nan", "inf", "-inf"):
        with pytest.raises(BadFilter):
            parse_when(text)  # nan compared false with every letter's time: all of them were selected


def test_a_cut_letter_with_no_place_to_read_it_back_from_is_not_read_back() -> None:
    x = letter(1)
    x.envelope = msgspec.structs.replace(x.envelope, payload_truncated=True, original_offset=-1)
    asyncio.run(read_back("unused:9092", [x]))  # before: the consumer's seek raised, ending the whole replay
    assert x.read_back_tried and x.fetched is None


class _Producer:
    """Keeps what it sends (no broker)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self.sent.append((topic, value))


@pytest.mark.parametrize("purged_first", [True, False], ids=["purged-then-replayed", "replayed-then-purged"])
def test_a_letter_both_purged_and_replayed_is_sent_once_however_often_it_is_replayed(
    tmp_path: Path, purged_first: bool,
) -> None:
    # its status reads "purged" either way, and replay skipped only the status "replayed": every
    # `damflow dlq replay <id>` sent it again
    settings = Settings(data_dir=tmp_path)
    prod = _Producer()
    ledger = Ledger(tmp_path / "dlq.sqlite")

    def replay_by_id() -> list[dict]:
        fresh = letter(5)  # as each `damflow dlq replay 1:0:5` reads it from its topic
        ledger.annotate([fresh])
        return asyncio.run(replay(select([fresh], ids=["1:0:5"]), prod,  # type: ignore[arg-type]
                                  ledger, settings, topics_for(settings)))

    def purge_by_id() -> None:
        fresh = letter(5)
        ledger.annotate([fresh])
        assert purge(select([fresh], ids=["1:0:5"]), ledger) == [{"id": "1:0:5", "result": "purged"}]

    if purged_first:
        purge_by_id()
        [first] = replay_by_id()  # a purged letter chosen by its id is still sent: once
    else:
        [first] = replay_by_id()
        purge_by_id()
    assert first["result"] == "replayed to damflow.t1.batch"
    for _ in range(3):
        assert replay_by_id() == [{"id": "1:0:5", "path": "/p/5.png", "result": "skipped: already replayed"}]
    assert len(prod.sent) == 1


def test_two_replays_at_once_send_each_letter_once(tmp_path: Path) -> None:
    # both runs read the ledger before either sent: each saw every letter pending and sent them all
    settings = Settings(data_dir=tmp_path)
    first_ledger, second_ledger = Ledger(tmp_path / "dlq.sqlite"), Ledger(tmp_path / "dlq.sqlite")
    first_letters, second_letters = [letter(1), letter(2)], [letter(1), letter(2)]
    first_ledger.annotate(first_letters)
    second_ledger.annotate(second_letters)
    sending, go_on = asyncio.Event(), asyncio.Event()

    class Held(_Producer):
        """The first run's producer: its first send waits, mid-send, until the second run is done."""

        async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> None:
            await super().send_and_wait(topic, value, key)
            sending.set()
            await go_on.wait()

    first_prod, second_prod = Held(), _Producer()

    async def both() -> tuple[list[dict], list[dict]]:
        first = asyncio.create_task(replay(first_letters, first_prod, first_ledger,  # type: ignore[arg-type]
                                           settings, topics_for(settings)))
        await sending.wait()  # the first run holds letter 1, not yet recorded as replayed
        second_rows = await replay(second_letters, second_prod, second_ledger,  # type: ignore[arg-type]
                                   settings, topics_for(settings))
        go_on.set()
        return await first, second_rows

    first_rows, second_rows = asyncio.run(both())
    assert [r["result"] for r in first_rows] == ["replayed to damflow.t1.batch", "skipped: already replayed"]
    assert second_rows[0]["result"].startswith("skipped: being replayed by another run")
    assert second_rows[1]["result"] == "replayed to damflow.t1.batch"
    assert len(first_prod.sent) + len(second_prod.sent) == 2
    assert refused(second_rows) == second_rows[:1]  # not sent by it, and it cannot know the other run's send went
    later = [letter(1), letter(2)]
    second_ledger.annotate(later)
    assert [x.status for x in later] == ["replayed", "replayed"]


def test_a_crashed_replays_claim_holds_its_letter_until_it_goes_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import consumers.dlq as dlq

    settings = Settings(data_dir=tmp_path)
    crashed = Ledger(tmp_path / "dlq.sqlite")
    assert crashed.claim(letter(1)) is None  # then killed before its send was recorded
    crashed.close()
    prod = _Producer()
    ledger = Ledger(tmp_path / "dlq.sqlite")

    def replay_now() -> list[dict]:
        fresh = [letter(1)]
        ledger.annotate(fresh)
        return asyncio.run(replay(fresh, prod, ledger, settings, topics_for(settings)))  # type: ignore[arg-type]

    [held] = replay_now()
    assert held["result"].startswith("skipped: being replayed by another run") and prod.sent == []
    later = time.time() + dlq.CLAIM_STALE_S + 1
    monkeypatch.setattr(dlq, "now", lambda: later)
    [taken_over] = replay_now()
    assert taken_over["result"] == "replayed to damflow.t1.batch" and len(prod.sent) == 1


def test_a_replay_whose_send_failed_leaves_its_letter_to_the_next_one_at_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)

    class Refusing:
        async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> None:
            raise MessageSizeTooLargeError()

    failed = asyncio.run(replay([letter(1)], Refusing(), Ledger(tmp_path / "dlq.sqlite"),  # type: ignore[arg-type]
                                settings, topics_for(settings)))
    assert failed[0]["result"].startswith("not sent to")
    prod = _Producer()
    [again] = asyncio.run(replay([letter(1)], prod, Ledger(tmp_path / "dlq.sqlite"),  # type: ignore[arg-type]
                                 settings, topics_for(settings)))
    assert again["result"] == "replayed to damflow.t1.batch" and len(prod.sent) == 1


def test_a_dry_run_purge_of_a_letter_purged_already_says_so_as_the_real_run_does(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "dlq.sqlite")
    first = letter(7)
    ledger.annotate([first])
    assert purge([first], ledger) == [{"id": "1:0:7", "result": "purged"}]
    again = letter(7)  # as the next `damflow dlq purge 1:0:7 --dry-run` reads it
    ledger.annotate([again])
    assert purge([again], ledger, dry_run=True) == [{"id": "1:0:7", "result": "already purged"}]
    assert purge([again], ledger) == [{"id": "1:0:7", "result": "already purged"}]
    assert purge([letter(8)], ledger, dry_run=True) == [{"id": "1:0:8", "result": "would purge"}]


def test_two_letters_of_the_same_failure_are_replayed_once(tmp_path: Path) -> None:
    # a `damflow reconcile` on a live stack while a file's retry was held ran its attempts twice: two letters of
    # one failure, and `dlq replay` sent the file through every tier twice (15 letters for 5 files, thrice)
    settings = Settings(data_dir=tmp_path)
    prod = _Producer()
    ledger = Ledger(tmp_path / "dlq.sqlite")
    twice, other = [letter(1), letter(1)], letter(2)
    twice[1].offset = 9  # the same event (e1), dead-lettered again at another offset
    letters = [*twice, other]
    ledger.annotate(letters)
    dry = asyncio.run(replay(letters, prod, ledger, settings, topics_for(settings), dry_run=True))  # type: ignore
    assert [r["result"].split(" to ")[0] for r in dry] == ["would replay", "skipped: the same failure as 1:0:1",
                                                         "would replay"]
    rows = asyncio.run(replay(letters, prod, ledger, settings, topics_for(settings)))  # type: ignore[arg-type]
    assert [r["result"].split(" to ")[0] for r in rows] == ["replayed", "skipped: the same failure as 1:0:1",
                                                          "replayed"]
    assert len(prod.sent) == 2 and refused(rows) == []
    again = [letter(1), letter(1), letter(2)]
    again[1].offset = 9
    ledger.annotate(again)
    assert all(x.replayed for x in again)  # none stays pending in `dlq list`
