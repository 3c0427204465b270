"""Domain errors -> gRPC status codes, applied once to every RPC by :func:`rpc_method`.

The mapping (STYLE.md §4) lives here and only here. :func:`rpc_method` wraps each servicer
method (unary or server-streaming): it assigns a request id, turns a ``TracerError`` into the
status of the table, an unexpected exception into INTERNAL carrying only the request id (the
traceback goes to the server log), and writes one structured log line per request.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from tracer import errors

logger = logging.getLogger(__name__)

# Trailing metadata keys set on every response.
REQUEST_ID_KEY = "x-request-id"
ERROR_TYPE_KEY = "x-tracer-error"  # the TracerError class name, so the client can re-raise it exactly


class ServiceUnavailableError(errors.TracerError):
    """The server is warming up (indexes still loading) or draining."""


# Most specific first: the first ``isinstance`` match wins.
STATUS_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (errors.InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (errors.IndexNotReadyError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.IndexMismatchError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.DataError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.BuildLockedError, grpc.StatusCode.ABORTED),
    (errors.LimitExceededError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.MethodDisabledError, grpc.StatusCode.UNIMPLEMENTED),
    (errors.DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.CancelledError, grpc.StatusCode.CANCELLED),
    (ServiceUnavailableError, grpc.StatusCode.UNAVAILABLE),
)

_F = TypeVar("_F", bound=Callable[..., Any])


MAX_DETAILS = 1000  # characters of an error message sent to the client


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The status code for an exception: the table's entry, else INTERNAL."""
    for cls, code in STATUS_TABLE:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


class _Call:
    """Book-keeping of one RPC: request id, start time, final status, log line."""

    def __init__(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        self.method = method
        self.index = str(getattr(request, "index", "") or "")
        self.context = context
        self.request_id = uuid.uuid4().hex[:16]
        self.start = time.perf_counter()
        self.code = grpc.StatusCode.OK

    def fail(self, exc: Exception) -> None:
        """Abort the RPC with the mapped status; raises grpc's abort exception."""
        self.code = status_for(exc)
        if self.code is grpc.StatusCode.INTERNAL:
            logger.error("unhandled error in %s (request_id=%s)", self.method, self.request_id, exc_info=exc)
            details = f"internal error (request_id={self.request_id})"
        else:
            details = str(exc) or type(exc).__name__
            if len(details) > MAX_DETAILS:  # client strings echoed in messages stay bounded (metadata limits)
                details = details[:MAX_DETAILS] + "…"
            if isinstance(exc, errors.TracerError):
                self._trailers((ERROR_TYPE_KEY, type(exc).__name__))
        self.log()
        self.context.abort(self.code, details)

    def _trailers(self, *extra: tuple[str, str]) -> None:
        self.context.set_trailing_metadata(((REQUEST_ID_KEY, self.request_id), *extra))

    def log(self) -> None:
        latency_ms = (time.perf_counter() - self.start) * 1e3
        record = {"rpc": self.method, "index": self.index, "status": self.code.name,
                  "latency_ms": round(latency_ms, 3), "request_id": self.request_id,
                  "peer": self.context.peer()}
        logger.info("rpc %s", json.dumps(record), extra={"rpc": record})


def _active(servicer: Any) -> Any:
    """The servicer's in-flight tracker (refuses calls while draining), or a no-op."""
    registry = getattr(servicer, "_registry", None)
    active = getattr(registry, "active", None)
    return active() if callable(active) else contextlib.nullcontext()


def rpc_method(func: _F) -> _F:
    """Decorate a servicer method: error mapping, request id and one log line per request.

    Works for unary methods and server-streaming (generator) methods alike. A client
    cancellation observed while streaming is logged as CANCELLED.
    """
    name = func.__name__

    if inspect.isgeneratorfunction(func):

        @functools.wraps(func)
        def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            call = _Call(name, request, context)
            call._trailers()
            try:
                with _active(self):
                    yield from func(self, request, context)
            except Exception as exc:  # noqa: BLE001 - every error becomes a status, none escapes
                call.fail(exc)
            except GeneratorExit:  # the client went away mid-stream
                call.code = grpc.StatusCode.CANCELLED
                call.log()
                raise
            else:
                call.log()

        stream.is_rpc_method = True  # type: ignore[attr-defined]
        return stream  # type: ignore[return-value]

    @functools.wraps(func)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        call = _Call(name, request, context)
        call._trailers()
        try:
            with _active(self):
                response = func(self, request, context)
        except Exception as exc:
            call.fail(exc)
            raise  # unreachable: fail() aborts the RPC
        call.log()
        return response

    unary.is_rpc_method = True  # type: ignore[attr-defined]
    return unary  # type: ignore[return-value]
