"""Event contracts of damflow: see :mod:`schemas.events` and :mod:`schemas.codec`."""

from schemas.codec import decode, encode, to_dict
from schemas.events import (
    SCHEMA_VERSION,
    AssetBrowsable,
    AssetEnriched,
    AssetFailed,
    AssetIndexed,
    BatchScanned,
    DeadLetter,
    Event,
    FileDiscovered,
    ProgressEvent,
    new_id,
    now,
)

__all__ = [
    "SCHEMA_VERSION", "AssetBrowsable", "AssetEnriched", "AssetFailed", "AssetIndexed", "BatchScanned", "DeadLetter", "Event",
    "FileDiscovered", "ProgressEvent", "decode", "encode", "new_id", "now", "to_dict",
]
