"""Logging as ``streams.logs.configure`` sets it up: JSON lines with the bound context, lines below the level
dropped before any work is done on them (a worker writes a debug line per event)."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

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
