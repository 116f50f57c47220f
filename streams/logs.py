"""Logging, configured in one place: pretty on a terminal, JSON lines otherwise.

Context (asset id, batch id, tier, lane) is bound per event with :mod:`structlog.contextvars`, so every line
a worker writes while handling an event names what it was about. Library logs (faust, aiokafka, mode) go
through the same renderer at the configured level.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}
#: Libraries that chat at INFO; kept one step quieter than ours.
#: ("streams.app" is where faust's service logs land for our App/transport subclasses.)
_NOISY = ("faust", "mode", "aiokafka", "kafka", "streams.app")
#: A library line the same as one written less than this long ago is dropped: a broker gone makes aiokafka
#: write the same few errors dozens of times a second (800 lines before `ingest --wait` gave up after 20 s).
REPEAT_WINDOW_S = 10.0


class _LibraryRepeats(logging.Filter):
    """Drops a library's line (a logger under :data:`_NOISY`) that repeats one of its lines written within
    :data:`REPEAT_WINDOW_S`; a line of damflow's own always goes."""

    _MAX_KEPT = 1000  # lines remembered: a flood of distinct lines is not held in memory

    def __init__(self, window_s: float = REPEAT_WINDOW_S) -> None:
        super().__init__()
        self._window_s = window_s
        self._last: dict[tuple[str, int, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(_NOISY) or not isinstance(record.msg, str):  # ours come as dicts
            return True
        key = (record.name, record.levelno, record.getMessage())
        last = self._last.get(key)
        if last is not None and record.created - last < self._window_s:
            return False
        if len(self._last) >= self._MAX_KEPT:
            self._last.clear()
        self._last[key] = record.created
        return True


class _BadRequests(logging.Filter):
    """aiohttp's server logs a request it could not parse (a request line over its limit, a length *and* a chunked
    encoding, a body with no length) at ERROR with a traceback, though it answers it with a 400 as it should: any
    client could fill the log with tracebacks. Such a line becomes one line at INFO, the reason in it, or nothing
    below the configured level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "aiohttp.server" or not record.exc_info:
            return True
        # aiohttp is loaded wherever its server logs; not imported here, which every process (pools too) imports:
        # it weighed 11 MB and a startup's worth of imports in each
        errors = sys.modules.get("aiohttp.http_exceptions")
        error = record.exc_info[1]
        if errors is None or not isinstance(error, errors.HttpProcessingError):
            return True
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.msg, record.args = "bad_http_request from %s: %s", (peer, error.message or repr(error))
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return logging.getLogger().isEnabledFor(logging.INFO)


def configure(level: str = "info", fmt: Literal["auto", "json", "console"] = "auto", *, stream=None) -> None:
    """Set up structlog and the stdlib root logger once per process."""
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        # a line below the level is dropped before anything is added to it: a worker's per-event debug lines
        # cost their stamping and context on every event otherwise (bench/framework_tax.py)
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if use_json else (lambda _l, _m, e: e),
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(_LibraryRepeats())
    handler.addFilter(_BadRequests())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    lvl = _LEVELS[level]
    root.setLevel(lvl)
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(lvl, logging.WARNING))


def get(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
