"""hash_file / hash_bytes: the asset id is BLAKE3 of exactly the file's bytes, and OS failures come back typed."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from blake3 import blake3

from agents import hashing
from agents.hashing import hash_bytes, hash_file
from streams.errors import PermanentError, SourceMissing, SourceUnreadable, UnsupportedFormat
from tests.images import write_garbage

EMPTY_BLAKE3 = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


def test_hash_bytes_is_blake3_hex() -> None:
    assert hash_bytes(b"abc") == blake3(b"abc").hexdigest()
    assert hash_bytes(memoryview(b"abc")) == hash_bytes(bytearray(b"abc"))
    assert hash_bytes(b"") == EMPTY_BLAKE3


def test_hash_file_matches_hash_of_its_bytes(tmp_path: Path) -> None:
    path = write_garbage(tmp_path / "a.bin", 5000, seed=1)
    assert hash_file(path) == (hash_bytes(path.read_bytes()), 5000)
    assert hash_file(str(path)) == hash_file(path)


def test_hash_file_of_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.touch()
    assert hash_file(path) == (EMPTY_BLAKE3, 0)


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_streaming_across_chunk_boundaries_gives_the_whole_file_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    path = write_garbage(tmp_path / "a.bin", 10_000, seed=2)
    monkeypatch.setattr(hashing, "CHUNK_BYTES", chunk)
    assert hash_file(path) == (hash_bytes(path.read_bytes()), 10_000)


def test_file_larger_than_a_chunk(tmp_path: Path) -> None:
    path = write_garbage(tmp_path / "big.bin", hashing.CHUNK_BYTES * 2 + 123, seed=3)
    assert hash_file(path) == (hash_bytes(path.read_bytes()), hashing.CHUNK_BYTES * 2 + 123)


def test_different_content_different_id(tmp_path: Path) -> None:
    a = write_garbage(tmp_path / "a", 100, seed=1)
    b = write_garbage(tmp_path / "b", 100, seed=2)
    assert hash_file(a)[0] != hash_file(b)[0]


def test_missing_file_is_source_missing(tmp_path: Path) -> None:
    with pytest.raises(SourceMissing) as caught:
        hash_file(tmp_path / "gone.png")
    assert not caught.value.retriable
    assert caught.value.path == str(tmp_path / "gone.png")


def test_path_through_a_file_is_source_missing(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(SourceMissing):
        hash_file(tmp_path / "file" / "child.png")


def test_directory_is_unsupported(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFormat, match="regular file"):
        hash_file(tmp_path)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(UnsupportedFormat):  # opening it for reading would block forever
        hash_file(fifo)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_transient(tmp_path: Path) -> None:
    path = write_garbage(tmp_path / "secret.png", 10)
    path.chmod(0)
    with pytest.raises(SourceUnreadable) as caught:
        hash_file(path)
    assert caught.value.retriable


@pytest.mark.parametrize("error", [PermissionError(errno.EACCES, "Permission denied"), OSError(errno.EIO, "I/O")])
def test_os_errors_while_reading_are_source_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError
) -> None:
    path = write_garbage(tmp_path / "a.png", 10)

    def failing_open(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(hashing, "open", failing_open, raising=False)
    with pytest.raises(SourceUnreadable) as caught:
        hash_file(path)
    assert caught.value.retriable
    assert caught.value.__cause__ is error


def test_max_bytes_refuses_larger_files_permanently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_garbage(tmp_path / "a.bin", 101)
    assert hash_file(path, max_bytes=101)[1] == 101

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a too-large file must be refused before it is read")

    monkeypatch.setattr(hashing, "open", no_reading, raising=False)
    with pytest.raises(PermanentError, match="too large") as caught:
        hash_file(path, max_bytes=100)
    assert not caught.value.retriable
