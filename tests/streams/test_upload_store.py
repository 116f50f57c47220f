"""Storing an upload content-addressed (no broker needed): the stored bytes are the ones their name hashes."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from blake3 import blake3

from streams import upload
from streams.errors import SourceMissing, UnsupportedFormat
from streams.settings import Settings
from streams.upload import spool_dir
from tests.images import make_png


def test_a_source_rewritten_while_it_is_stored_is_stored_under_the_hash_of_what_was_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    source = make_png(tmp_path / "render.png", size=(256, 256), seed=1)
    other = make_png(tmp_path / "other.png", size=(256, 256), seed=2).read_bytes()
    monkeypatch.setattr(upload, "COPY_BYTES", 4096)
    write = upload.Spool.write

    def write_then_rewrite(spool, chunk):  # the renderer saves the file again while it is being copied
        write(spool, chunk)
        if spool.size == 4096:
            source.write_bytes(other)

    monkeypatch.setattr(upload.Spool, "write", write_then_rewrite)
    stored = upload.store_original(settings, source)
    assert blake3(stored.path.read_bytes()).hexdigest() == stored.asset_id
    assert not list(upload.spool_dir(settings).iterdir())  # no spooled copy left


def test_a_stored_original_gets_an_ordinary_files_mode(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    stored = upload.store_original(settings, make_png(tmp_path / "a.png", size=(32, 32), seed=1))
    probe = tmp_path / "probe"
    probe.touch()  # what this process's umask gives any new file
    assert stat.S_IMODE(stored.path.stat().st_mode) == stat.S_IMODE(probe.stat().st_mode) != 0o600


def test_a_source_gone_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(SourceMissing):
        upload.store_original(Settings(data_dir=tmp_path / "data"), tmp_path / "gone.png")


def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    settings = Settings(data_dir=tmp_path / "data", upload_fsync=False)
    outcome: list[BaseException | None] = []

    def store() -> None:
        try:
            upload.store_original(settings, fifo)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 — handed to the test's thread
            outcome.append(exc)

    storing = threading.Thread(target=store, daemon=True)
    storing.start()
    storing.join(10)
    if storing.is_alive():  # opened to read, a FIFO waits for a writer: `damflow upload pipe.png` hung for good
        with open(fifo, "wb"):
            pass
        storing.join(10)
        pytest.fail("store_original(FIFO) waited for a writer")
    [error] = outcome
    assert isinstance(error, UnsupportedFormat) and "not a regular file (a FIFO)" in str(error)
    assert str(fifo) in str(error) and list(spool_dir(settings).iterdir()) == []  # its spool removed


@pytest.mark.parametrize("special", ["/dev/null", "directory"])
def test_a_device_or_a_directory_is_refused_as_not_a_regular_file(tmp_path: Path, special: str) -> None:
    source = Path(special) if special.startswith("/") else tmp_path
    with pytest.raises(UnsupportedFormat, match="not a regular file"):
        upload.store_original(Settings(data_dir=tmp_path / "data", upload_fsync=False), source)


def test_a_file_over_the_limit_or_not_an_image_is_refused_without_a_full_copy(tmp_path: Path) -> None:
    from streams.errors import UploadRejected

    settings = Settings(data_dir=tmp_path / "data", upload_max_bytes=64 * 1024)
    notes = tmp_path / "notes.png"
    notes.write_bytes(b"not an image at all" * 10_000)
    with pytest.raises(UploadRejected, match="notes.png"):
        upload.store_original(settings, notes)
    big = make_png(tmp_path / "big.png", size=(1024, 1024), seed=3)  # noise: far over 64 KB
    with pytest.raises(UploadRejected, match="big.png exceeds the upload limit"):
        upload.store_original(settings, big)
    assert not settings.originals_dir.exists() or not list(settings.originals_dir.rglob("*"))


def spool_on_a_full_disk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Make every upload spool write to /dev/full (each write: ENOSPC), as on a full disk."""
    import os

    def full_mkstemp(**kw):
        return os.open("/dev/full", os.O_WRONLY), str(tmp_path / "spooled.part")

    monkeypatch.setattr(upload.tempfile, "mkstemp", full_mkstemp)
    monkeypatch.setattr(upload.os, "fchmod", lambda fd, mode: None)  # leave /dev/full's own mode alone


@pytest.mark.parametrize("size", [(8, 8), (512, 512)])  # written at close (a few hundred bytes), or on the way
def test_a_full_disk_is_a_typed_storage_error_not_the_files_fault(tmp_path: Path, monkeypatch, size) -> None:
    from streams.errors import StorageUnavailable

    source = make_png(tmp_path / "a.png", size=size, seed=1)
    spool_on_a_full_disk(monkeypatch, tmp_path)
    with pytest.raises(StorageUnavailable, match="No space left"):
        upload.store_original(Settings(data_dir=tmp_path / "data"), source)


def test_a_local_file_whose_name_is_not_utf8_is_stored_and_its_event_can_be_sent(tmp_path: Path) -> None:
    import os

    from schemas import decode, encode

    settings = Settings(data_dir=tmp_path / "data")
    raw = os.path.join(os.fsencode(tmp_path), b"bad\xffname.png")
    src = Path(os.fsdecode(raw))  # what `damflow upload` gets from the shell: the byte kept as a surrogate
    make_png(src, size=(16, 16), seed=1)
    stored = upload.store_original(settings, src)
    event = upload.upload_event(stored, batch_id="b", display_name=upload.display_name(src.name))
    assert decode(encode(event)).display_name == "bad\ufffdname.png"  # before: UnicodeEncodeError, a crashed CLI


@pytest.mark.parametrize(("raw", "shown"), [
    ("../../etc/evil.png", "evil.png"), ("C:\\Users\\me\\cat.png", "cat.png"), ("a\x00b\tc.png", "abc.png"),
    ("x\ud800y.png", "x?y.png"), ("..", None), ("", None), (None, None),
])
def test_display_names_are_readable_and_never_a_path(raw: str | None, shown: str | None) -> None:
    assert upload.display_name(raw) == shown


def test_an_original_a_crash_left_short_is_replaced_by_the_next_upload_of_its_content(tmp_path: Path) -> None:
    # after a power loss an unsynced store can leave its name on an empty file; "a file already there is
    # complete" then kept it empty for good, and every later upload of those bytes failed to decode
    settings = Settings(data_dir=tmp_path / "data")
    source = make_png(tmp_path / "a.png", size=(64, 64), seed=1)
    first = upload.store_original(settings, source)
    first.path.write_bytes(b"")
    again = upload.store_original(settings, source)
    assert again.path == first.path and again.path.read_bytes() == source.read_bytes()
    assert not list(upload.spool_dir(settings).iterdir())


@pytest.mark.parametrize("durable", [True, False])
def test_a_stored_upload_is_synced_to_disk_bytes_name_and_directory_before_it_is_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    import os

    steps: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        steps.append(("sync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        steps.append(("rename", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(upload.os, "fsync", fsync)
    monkeypatch.setattr(upload.os, "replace", replace)
    settings = Settings(data_dir=tmp_path / "data", upload_fsync=durable)
    stored = upload.store_original(settings, make_png(tmp_path / "a.png", size=(64, 64), seed=1))
    where = stored.path.resolve()
    synced = [("sync", str(p)) for p in (where, *where.parents[:3])]  # the file; its name up to the data dir
    assert steps == [("rename", str(stored.path)), *(synced if durable else [])]


def test_an_original_whose_sync_failed_is_removed_and_written_anew_by_the_next_upload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # after a failed sync the file reads whole from the page cache but may never reach the disk (Linux marks
    # the pages clean); a retry that found it "already stored" synced nothing of its own and was answered taken
    import errno
    import os

    from streams.errors import StorageUnavailable

    settings = Settings(data_dir=tmp_path / "data")
    source = make_png(tmp_path / "a.png", size=(64, 64), seed=1)
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(upload.os, "fsync", failing_fsync)
    with pytest.raises(StorageUnavailable, match="Input/output error"):
        upload.store_original(settings, source)
    assert list(settings.originals_dir.rglob("*.png")) == []
    monkeypatch.setattr(upload.os, "fsync", real_fsync)
    again = upload.store_original(settings, source)
    assert again.path.read_bytes() == source.read_bytes()


def test_a_whole_stored_original_is_kept_not_replaced_by_an_unsynced_copy(tmp_path: Path) -> None:
    # replacing it would put a copy not yet on disk under a name another upload may have been answered for
    settings = Settings(data_dir=tmp_path / "data")
    source = make_png(tmp_path / "a.png", size=(64, 64), seed=1)
    first = upload.store_original(settings, source)
    inode = first.path.stat().st_ino
    again = upload.store_original(settings, source)
    assert again.path == first.path and again.path.stat().st_ino == inode
    assert not list(upload.spool_dir(settings).iterdir())
