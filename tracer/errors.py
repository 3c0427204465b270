"""The ``TracerError`` hierarchy: domain failures, free of any transport.

The service maps each class to a gRPC status code in ``tracer.service.status``;
the client maps status codes back. Nothing here imports grpc.
"""

from __future__ import annotations


class TracerError(Exception):
    """Base class of every domain error tracer raises."""


class InvalidRequestError(TracerError, ValueError):
    """The request itself is wrong: empty prompt/target, k <= 0, unknown method, ..."""


class NotFoundError(TracerError, KeyError):
    """An unknown doc id or index id."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class IndexNotReadyError(TracerError):
    """The index lacks what the request needs (e.g. a method whose features were not built)."""


class IndexMismatchError(TracerError):
    """The index on disk does not match what is expected (model, corpus, version, config)."""


class IndexCorruptError(IndexMismatchError):
    """A file of the index is missing, truncated, or fails its checksum."""


class LimitExceededError(TracerError):
    """A request exceeds a configured cap (k, candidates, batch size)."""


class MethodDisabledError(TracerError):
    """The method exists but is disabled by configuration."""


class DeadlineExceededError(TracerError):
    """The work could not finish before the caller's deadline."""


class CancelledError(TracerError):
    """The caller went away."""


class DataError(TracerError, ValueError):
    """An input file (corpus, queries, benchmark) is missing or malformed."""


class BuildLockedError(TracerError):
    """Another process is building (or publishing) the same index directory."""
