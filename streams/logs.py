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
    root = logging.getLogger()
    root.handlers[:] = [handler]
    lvl = _LEVELS[level]
    root.setLevel(lvl)
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(lvl, logging.WARNING))


def get(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
