"""Bytes <-> events. Decoding never lets a malformed payload escape as anything but :class:`SchemaError`."""

from __future__ import annotations

import json
from typing import TypeVar

import msgspec

from schemas.events import SCHEMA_VERSION, AnyEvent, Event
from streams.errors import SchemaError

E = TypeVar("E", bound=Event)

_encoder = msgspec.json.Encoder()
_any_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)
_decoders: dict[type, msgspec.json.Decoder] = {}


def encode(event: Event) -> bytes:
    """Serialise an event to its JSON record."""
    return _encoder.encode(event)


def decode(data: bytes | bytearray | memoryview | None, expected: type[E] | None = None) -> E:
    """Parse a JSON record into its event, checking type, fields and schema version.

    ``expected`` narrows what is acceptable on a topic (e.g. only ``FileDiscovered`` on ``t1.*``).
    Raises :class:`SchemaError` for anything else: empty, not JSON, unknown type, wrong field types,
    or a schema version newer than this code understands.
    """
    if not data:
        raise SchemaError("empty message")
    try:
        if expected is None:
            event = _any_decoder.decode(data)
        else:
            decoder = _decoders.get(expected)
            if decoder is None:
                decoder = _decoders[expected] = msgspec.json.Decoder(expected)
            event = decoder.decode(data)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise SchemaError(f"undecodable message: {exc}") from exc
    if event.schema > SCHEMA_VERSION:
        raise SchemaError(
            f"{type(event).__name__} schema {event.schema} is newer than supported {SCHEMA_VERSION}"
        )
    return event  # type: ignore[return-value]


def claimed(data: bytes | bytearray | memoryview | None) -> dict[str, str]:
    """What a record that :func:`decode` refuses still says of itself: its top-level text fields (``type``,
    ``batch_id``, ``event_id``...), when it is a JSON object at all; else nothing."""
    try:
        fields = json.loads(bytes(data or b""))
    except (ValueError, RecursionError):
        return {}
    return {k: v for k, v in fields.items() if isinstance(v, str)} if isinstance(fields, dict) else {}


def to_dict(event: Event) -> dict:
    """The event as plain JSON-able data (with its ``type`` tag)."""
    return msgspec.to_builtins(event)
