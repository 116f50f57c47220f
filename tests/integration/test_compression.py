"""Every damflow producer sends its record batches in the codec of ``Settings.compression``, and they come back
readable: the embedded broker keeps each batch as it was sent, so the codec is what its memory grows by."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka.consumer import fetcher
from aiokafka.record.default_records import DefaultRecordBatch

from schemas import AssetBrowsable, FileDiscovered, decode
from streams.ingest import ingest_folder
from streams.kafka import tail
from streams.supervisor import Stack
from streams.topics import topics_for
from tests.images import make_png_folder

pytestmark = pytest.mark.integration

CODEC = {"none": DefaultRecordBatch.CODEC_NONE, "gzip": DefaultRecordBatch.CODEC_GZIP,
         "snappy": DefaultRecordBatch.CODEC_SNAPPY, "lz4": DefaultRecordBatch.CODEC_LZ4,
         "zstd": DefaultRecordBatch.CODEC_ZSTD}


def _folder(tmp_path: Path, files: int) -> Path:
    return make_png_folder(tmp_path / "in", files, size=(32, 32))


class _Noting:
    """aiokafka's ``MemoryRecords`` as its fetcher makes them, noting the codec of every record batch read."""

    def __init__(self, records: object, codecs: list[int]) -> None:
        self._records, self._codecs = records, codecs

    def next_batch(self, *args: object, **kwargs: object) -> object:
        batch = self._records.next_batch(*args, **kwargs)
        if batch is not None:
            self._codecs.append(batch.compression_type)
        return batch

    def __getattr__(self, name: str) -> object:
        return getattr(self._records, name)


async def _read(bootstrap: str, topic: str, settings, count: int, monkeypatch) -> tuple[list[bytes], set[int]]:
    """The first ``count`` values of ``topic`` and the codecs of the batches they came in."""
    codecs: list[int] = []
    made = fetcher.MemoryRecords
    monkeypatch.setattr(fetcher, "MemoryRecords", lambda data: _Noting(made(data), codecs))
    values: list[bytes] = []
    async with tail(bootstrap, topic, settings, from_beginning=True) as consumer:
        while len(values) < count:
            got = await consumer.getmany(timeout_ms=10_000)
            assert got, f"only {len(values)} of {count} records on {topic}"
            values += [m.value for batch in got.values() for m in batch]
    return values, set(codecs)


@pytest.mark.parametrize("codec", sorted(CODEC))
async def test_the_scanner_sends_its_batches_in_the_codec_set(
    broker: str, make_settings, tmp_path: Path, monkeypatch, codec: str,
) -> None:
    settings = make_settings(compression=codec)
    topics = topics_for(settings)
    result = await ingest_folder(settings, topics, broker, _folder(tmp_path, 4))
    values, codecs = await _read(broker, topics.t1_batch, settings, 4, monkeypatch)
    assert codecs == {CODEC[codec]}
    assert sorted(Path(decode(v, FileDiscovered).path).name for v in values) == [f"{i:02d}.png" for i in range(4)]
    assert result.found == 4


async def test_the_workers_results_are_compressed_by_default(make_settings, tmp_path: Path, monkeypatch) -> None:
    settings = make_settings()
    assert settings.compression == "zstd"
    async with Stack(settings) as stack:
        result = await ingest_folder(settings, stack.topics, stack.bootstrap, _folder(tmp_path, 3), wait=True,
                                     timeout=60)
        assert result.progress is not None and result.progress.done == 3
        values, codecs = await _read(stack.bootstrap, stack.topics.assets, settings, 3, monkeypatch)
    assert codecs == {DefaultRecordBatch.CODEC_ZSTD}  # the worker's producer (faust's), not only the scanner's
    assert {decode(v).path for v in values if isinstance(decode(v), AssetBrowsable)}  # readable, as sent
