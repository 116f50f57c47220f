"""The retry policy and the headers that carry an event's failure history between attempts.

A failed event goes to ``t<tier>.retry.<n>`` unchanged (same key, same value) with its history in Kafka
headers; the retrier sends it back to its source topic once due; the next failure reads the history and counts
on. Keeping the value untouched means a retried event is byte-for-byte the event that was first published.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from streams.settings import Settings

ATTEMPTS = "damflow-attempts"
DUE_AT = "damflow-due-at"
SOURCE_TOPIC = "damflow-source-topic"
FIRST_FAILURE_AT = "damflow-first-failure-at"
ERROR_CLASS = "damflow-error-class"
ERROR_MESSAGE = "damflow-error-message"

Headers = Mapping[str, bytes] | Iterable[tuple[str, bytes]] | None


def header_dict(headers: Headers) -> dict[str, bytes]:
    """Kafka headers in any of the shapes clients use, as a dict (last value wins)."""
    if not headers:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {str(k): (v if isinstance(v, bytes) else str(v).encode()) for k, v in items}


#: The largest whole number every JSON reader holds exactly.
_LARGEST_INT = 2**53


@dataclass(frozen=True)
class FailureHistory:
    """How often an event has failed so far, since when, and where it came from."""

    attempts: int = 0
    first_failure_at: float | None = None
    source_topic: str | None = None
    due_at: float | None = None

    @classmethod
    def from_headers(cls, headers: Headers) -> FailureHistory:
        h = header_dict(headers)

        def num(key: str, kind: type) -> object:
            try:
                value = kind(h[key].decode())
            except (KeyError, ValueError, UnicodeDecodeError):
                return None
            # "nan" or "inf" would go into a dead letter as null, which no reader accepts: the letter would be
            # unreadable and its event unreplayable; a due time of "inf" would hold a retry partition for good;
            # an int of hundreds of digits has no float and no JSON reader's int either
            if isinstance(value, float):
                return value if math.isfinite(value) else None
            return value if abs(value) <= _LARGEST_INT else None

        return cls(
            attempts=num(ATTEMPTS, int) or 0,  # type: ignore[arg-type]
            first_failure_at=num(FIRST_FAILURE_AT, float),  # type: ignore[arg-type]
            source_topic=h[SOURCE_TOPIC].decode(errors="replace") if SOURCE_TOPIC in h else None,
            due_at=num(DUE_AT, float),  # type: ignore[arg-type]
        )

    def failed_again(self, topic: str, at: float) -> FailureHistory:
        """The history once the attempt at hand (from ``topic``, at ``at``) has failed too: its number (a garbled,
        negative count reads as none before it), the chain's start (``at`` for a first failure), the source."""
        return FailureHistory(attempts=max(self.attempts, 0) + 1, first_failure_at=self.first_failure_at or at,
                              source_topic=self.source_topic or topic)

    def headers(self, *, error_class: str = "", error_message: str = "") -> dict[str, bytes]:
        out = {ATTEMPTS: str(self.attempts).encode()}
        if self.first_failure_at is not None:
            out[FIRST_FAILURE_AT] = repr(self.first_failure_at).encode()
        if self.source_topic:
            out[SOURCE_TOPIC] = self.source_topic.encode()
        if self.due_at is not None:
            out[DUE_AT] = repr(self.due_at).encode()
        if error_class:
            out[ERROR_CLASS] = error_class.encode()
        if error_message:
            out[ERROR_MESSAGE] = error_message[:500].encode()
        return out


def backoff_s(attempt: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (1-based): exponential, capped, with symmetric jitter."""
    base = min(settings.retry_backoff_s * 2 ** (attempt - 1), settings.retry_backoff_max_s)
    jitter = base * settings.retry_jitter
    return max(0.0, base + (rng or random).uniform(-jitter, jitter))


def wait_before_forwarding_s(due_at: float | None, now: float, settings: Settings, held_for_s: float = 0.0) -> float:
    """How long the retrier still holds a retry (held ``held_for_s`` so far) until its due time: never longer in all
    than the longest backoff, so a due time far ahead (the clock set back since, or a header not written by
    damflow) cannot hold its partition for good."""
    longest = settings.retry_backoff_max_s * (1 + settings.retry_jitter)
    return max(0.0, min((due_at or 0.0) - now, longest - held_for_s))
