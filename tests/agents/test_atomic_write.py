"""The pipeline's own files: written whole or not at all, with a note where the file system keeps one."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import structlog

from agents import atomic_write
from agents.atomic_write import read_note, write_atomically
from tests.agents.test_browse import keeps_notes


def test_a_note_goes_with_the_file_and_is_replaced_with_it(tmp_path: Path) -> None:
    if not keeps_notes(tmp_path):
        pytest.skip("this file system (or platform) keeps no extended attributes")
    target = tmp_path / "ab" / "x.webp"
    write_atomically(target, b"one", what="thumbnail", note=("user.damflow.test", b"e1"))
    assert read_note(target, "user.damflow.test") == b"e1"
    write_atomically(target, b"two", what="thumbnail", note=("user.damflow.test", b"e2"))  # over the first
    assert (target.read_bytes(), read_note(target, "user.damflow.test")) == (b"two", b"e2")
    write_atomically(target, b"three", what="thumbnail")  # no note: none is left from before
    assert read_note(target, "user.damflow.test") is None
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.webp"]  # no temp file left


def test_a_file_system_refusing_notes_still_gets_the_file_and_says_so_once(tmp_path: Path, monkeypatch) -> None:
    def refuse(*_args) -> None:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", refuse, raising=False)
    monkeypatch.setattr(atomic_write, "_notes_refused", False)
    with structlog.testing.capture_logs() as logs:
        for name in ("a", "b"):
            write_atomically(tmp_path / name, name.encode(), what="thumbnail", note=("user.damflow.test", b"e1"))
    assert (tmp_path / "a").read_bytes() == b"a" and (tmp_path / "b").read_bytes() == b"b"
    assert [e["event"] for e in logs] == ["file_notes_not_kept"]  # once: not one line per thumbnail
