"""Every error damflow raises on purpose, rooted at one base class.

Each error carries its policy as class attributes: ``retriable`` says whether trying the same work
again later may succeed (a transient failure) or never will (a permanent one). Callers branch on the
attribute, never on message text. ``tier`` is the pipeline tier the failure belongs to, when known.
"""

from __future__ import annotations


class DamflowError(Exception):
    """Base of all damflow errors."""

    retriable: bool = False
    #: Short stable code for logs, the catalog and the dead-letter envelope.
    code: str = "error"

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return f"{self.message} ({self.path})" if self.path else self.message


class TransientError(DamflowError):
    """May succeed when tried again (I/O hiccup, broker unavailable, resource busy)."""

    retriable = True
    code = "transient"


class PermanentError(DamflowError):
    """Will fail the same way every time for the same input."""

    retriable = False
    code = "permanent"


# -- configuration and infrastructure ------------------------------------------------------------


class ConfigError(PermanentError):
    """A setting is missing or has a value damflow cannot use."""

    code = "config"


class DataDirInUse(ConfigError):
    """Another pipeline process owns the data directory (see :mod:`streams.ownership`)."""

    code = "data_dir_in_use"


class BrokerError(TransientError):
    """The broker could not be started, reached or used."""

    code = "broker"


class WaitTimedOut(DamflowError, TimeoutError):
    """Waiting for a batch (``ingest --wait --timeout``) ran out of time. A ``TimeoutError`` too, as any timeout;
    ``scan_stopped`` says whether its scan was still walking then, and was stopped (the batch closed with the
    files published so far) rather than left to go on."""

    code = "wait_timed_out"

    def __init__(self, message: str, *, scan_stopped: bool = False) -> None:
        super().__init__(message)
        self.scan_stopped = scan_stopped


# -- messages --------------------------------------------------------------------------------------


class SchemaError(PermanentError):
    """A message could not be decoded into a known, valid event (a poison pill)."""

    code = "schema"


# -- files and images ------------------------------------------------------------------------------


class SourceMissing(PermanentError):
    """The file named by an event no longer exists."""

    code = "source_missing"


class UnrepresentablePath(PermanentError):
    """The file's name is not valid UTF-8, so no event (JSON) and no catalog row can hold its path."""

    code = "unrepresentable_path"


class SourceUnreadable(TransientError):
    """The file exists but could not be read (permissions, I/O error, file busy)."""

    code = "source_unreadable"


class SourceInFlux(TransientError):
    """The file changed while it was being read: still being written (a render saved to its final name as it is
    made, a copy in progress). Read again later, once it holds still."""

    code = "source_in_flux"


class UnsupportedFormat(PermanentError):
    """The bytes are not an image format damflow can decode (or not an image at all)."""

    code = "unsupported_format"


class CorruptImage(PermanentError):
    """The bytes claim an image format but cannot be decoded (truncated, broken data)."""

    code = "corrupt_image"


class DecompressionBomb(PermanentError):
    """The image declares more pixels than the configured limit allows."""

    code = "decompression_bomb"


class UploadRejected(PermanentError):
    """An upload request was refused (too large, not an image, bad token)."""

    code = "upload_rejected"


class StorageUnavailable(TransientError):
    """damflow's own disk cannot take a file now (full, read-only): nothing wrong with the file; try again later."""

    code = "storage_unavailable"


class UploadTooLarge(UploadRejected):
    code = "too_large"


class UploadNotAnImage(UploadRejected):
    code = "unsupported_media_type"


class UploadEmpty(UploadRejected):
    code = "empty_upload"


# -- isolated decoding -----------------------------------------------------------------------------


class DecoderTimeout(TransientError):
    """Decoding one file took longer than the time limit; its pool process was killed and replaced."""

    code = "decoder_timeout"


class DecoderCrashed(TransientError):
    """The pool process decoding one file died (segfault, abort, killed); it was replaced."""

    code = "decoder_crashed"


class RetryRefused(PermanentError):
    """The broker refused, for good, to take a retry back to its tier's topic (too large for it, say)."""

    code = "retry_refused"


class SourceChanged(PermanentError):
    """The file at an asset's path no longer holds the asset's bytes (it was edited or replaced since)."""

    code = "source_changed"


class UnportableOutcome(PermanentError):
    """What a pool call raised or returned could not be sent back to the worker whole (it does not pickle, or
    not back): kept as text — its class, message and traceback. A bug, like any error damflow does not know."""

    code = "unexpected"


class DecoderOutOfMemory(PermanentError):
    """Decoding one file needed more memory than the per-file limit allows."""

    code = "decoder_out_of_memory"
