"""Python client of the ``tracer.v1`` gRPC service; returns ``tracer.types`` records."""

from __future__ import annotations

from tracer.client.client import (
    BatchItem,
    RemoteError,
    TracerClient,
    UnauthenticatedError,
    UnavailableError,
    error_from_rpc,
)

__all__ = ["BatchItem", "RemoteError", "TracerClient", "UnauthenticatedError", "UnavailableError",
           "error_from_rpc"]
