"""Logging as ``streams.logs.configure`` sets it up: JSON lines with the bound context, lines below the level
dropped before any work is done on them (a worker writes a debug line per event)."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from streams import logs


@pytest.fixture
def configured():
    """``configure`` to a buffer, and every global it touches put back after the test."""
    saved, root = structlog.get_config(), logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quieted = {name: logging.getLogger(name).level for name in logs._NOISY}
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    yield out
    structlog.configure(**saved)
    root.handlers[:], root.level = handlers, level
    for name, was in quieted.items():
        logging.getLogger(name).setLevel(was)


def test_a_line_names_what_it_was_about(configured) -> None:
    with structlog.contextvars.bound_contextvars(batch_id="b1", tier=1):
        logs.get("damflow.test.lines").info("browsable", asset_id="a1")
    line = json.loads(configured.getvalue())
    assert (line["event"], line["batch_id"], line["tier"], line["asset_id"], line["level"]) == (
        "browsable", "b1", 1, "a1", "info")


def test_a_line_below_the_level_is_dropped_before_any_processing(configured) -> None:
    processors = structlog.get_config()["processors"]
    seen: list[str] = []

    def spy(_logger, method, event_dict):
        seen.append(method)
        return event_dict

    structlog.configure(processors=[processors[0], spy, *processors[1:]])
    log = logs.get("damflow.test.dropped")
    log.debug("browsable", asset_id="a1")
    assert seen == [] and configured.getvalue() == ""
    log.info("import_started")
    assert seen == ["info"] and json.loads(configured.getvalue())["event"] == "import_started"


def test_a_library_line_repeated_within_the_window_is_written_once(configured) -> None:
    # a broker gone: aiokafka wrote the same errors ~40 times a second, 800 lines before `ingest --wait`'s reason
    kafka = logging.getLogger("aiokafka")
    for _ in range(50):
        kafka.error("Unable connect to node with id %s", 111)
        kafka.error("Unable to update metadata from [%s]", 111)
    for _ in range(3):
        logs.get("damflow.test.repeats").warning("broker_unreachable")  # damflow's own lines all go
    events = [json.loads(line)["event"] for line in configured.getvalue().splitlines()]
    assert events == ["Unable connect to node with id 111", "Unable to update metadata from [111]",
                      *["broker_unreachable"] * 3]


def test_a_repeated_library_line_goes_again_once_the_window_has_passed() -> None:
    repeats = logs._LibraryRepeats(window_s=10.0)

    def record(at: float, msg: str = "Unable to update metadata") -> logging.LogRecord:
        rec = logging.LogRecord("aiokafka.consumer", logging.ERROR, __file__, 1, msg, None, None)
        rec.created = at
        return rec

    assert [repeats.filter(record(t)) for t in (0.0, 5.0, 9.9, 10.0, 12.0, 20.5)] == [
        True, False, False, True, False, True]
    assert repeats.filter(record(12.0, "another line"))


def test_a_request_aiohttp_could_not_parse_is_one_info_line_without_a_traceback(configured) -> None:
    # a request line over aiohttp's limit (or a length and a chunked encoding together) is answered 400 as it
    # should be, but aiohttp logged it at ERROR with a traceback: any client could fill the log with them
    server = logging.getLogger("aiohttp.server")
    for error in (LineTooLong(b"GET /assets/aaaa", "8190"), RuntimeError("a bug")):
        try:
            raise error
        except Exception:
            server.exception("Error handling request from %s", "127.0.0.1")
    bad, bug = (json.loads(line) for line in configured.getvalue().splitlines())
    assert (bad["level"], "exception" in bad) == ("info", False)
    assert bad["event"].startswith("bad_http_request from 127.0.0.1: Got more than 8190 bytes")
    assert (bug["level"], "RuntimeError: a bug" in bug["exception"]) == ("error", True)  # a real fault stays one


def test_a_request_aiohttp_could_not_parse_is_not_written_below_the_level(configured) -> None:
    logging.getLogger().setLevel(logging.WARNING)  # `configure("warn")`; the fixture puts it back
    try:
        raise BadHttpMessage("Content-Length and chunked")
    except BadHttpMessage:
        logging.getLogger("aiohttp.server").exception("Error handling request from %s", "127.0.0.1")
    assert configured.getvalue() == ""


def test_the_logging_every_process_imports_brings_no_http_library_with_it() -> None:
    # the filter of aiohttp's lines imported aiohttp: 11 MB more in every pool process, and its imports' time in
    # every command (the benchmark's pools grew from 54 to 62 MB)
    import subprocess
    import sys

    code = ("import sys, streams.logs, agents.browse, agents.index; "
            "sys.exit('aiohttp' in sys.modules or 'faust' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
