"""The gRPC server: configuration, assembly (:func:`create_server`) and the process loop (:func:`serve`).

A server hosts ``tracer.v1.TracerService``, the standard ``grpc.health.v1.Health`` service
(NOT_SERVING until every index is loaded, SERVING after, NOT_SERVING again while draining) and
server reflection. It binds to loopback unless told otherwise, optionally with TLS and a bearer
token (``authorization: Bearer <token>`` metadata, checked by an interceptor; health checks are
exempt so that probes need no secret). Concurrency is capped with gRPC's
``maximum_concurrent_rpcs``: calls beyond it fail fast with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import hmac
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent import futures
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tracer._proto.tracer.v1 import tracer_pb2 as pb
from tracer._proto.tracer.v1 import tracer_pb2_grpc as pb_grpc
from tracer.service.servicer import IndexRegistry, TracerServicer

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TracerService"].full_name  # "tracer.v1.TracerService"
_HEALTH_PREFIX = "/grpc.health.v1.Health/"
_MiB = 1 << 20


@dataclass(frozen=True)
class ServiceConfig:
    """Everything a server needs besides its indexes. ``__post_init__`` names a bad field."""

    # --- network
    host: str = field(default="127.0.0.1", metadata={"help": "bind address (loopback by default)"})
    port: int = field(default=50051, metadata={"help": "TCP port; 0 picks a free one"})
    tls_cert: str | None = field(default=None, metadata={"help": "PEM certificate chain; enables TLS"})
    tls_key: str | None = field(default=None, metadata={"help": "PEM private key for tls_cert"})
    auth_token: str | None = field(default=None, repr=False,
                                   metadata={"help": "require 'authorization: Bearer <token>'"})
    # --- caps
    max_top_k: int = field(default=1000, metadata={"help": "largest top_k accepted"})
    max_num_candidates: int = field(default=100_000, metadata={"help": "largest num_candidates accepted"})
    max_batch: int = field(default=256, metadata={"help": "most queries in one BatchTrace"})
    max_examples: int = field(default=1000, metadata={"help": "most ids in one BatchGetExamples"})
    max_verify: int = field(default=32, metadata={"help": "most examples (asked + random) in one Verify"})
    max_eval_queries: int = field(default=100_000, metadata={"help": "most queries in one Evaluate"})
    max_message_bytes: int = field(default=16 * _MiB, metadata={"help": "largest request/response message"})
    max_text_chars: int = field(default=2000, metadata={"help": "hit texts are cut to this length"})
    max_concurrent_rpcs: int = field(default=16, metadata={"help": "more calls get RESOURCE_EXHAUSTED"})
    max_workers: int = field(default=16, metadata={"help": "handler threads"})
    max_page_size: int = field(default=1000, metadata={"help": "largest ListIndexes page"})
    # --- defaults for zero-valued request fields
    default_top_k: int = field(default=10, metadata={"help": "top_k when a request leaves it 0"})
    default_num_candidates: int = field(default=100, metadata={"help": "num_candidates when left 0"})
    default_page_size: int = field(default=50, metadata={"help": "ListIndexes page_size when left 0"})
    batch_chunk: int = field(default=16, metadata={"help": "BatchTrace queries per tracer.trace_batch call"})
    # --- lifecycle
    grace_s: float = field(default=10.0, metadata={"help": "seconds in-flight calls get to finish on stop"})
    # --- surface
    reflection: bool = field(default=True, metadata={
        "help": "serve gRPC server reflection (behind the bearer token when one is set)"})

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            capped = f.name.startswith(("max_", "default_", "batch_"))
            if capped and (not isinstance(value, int) or value < 1):
                raise ValueError(f"ServiceConfig.{f.name} must be a positive int, got {value!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"ServiceConfig.port must be in [0, 65535], got {self.port}")
        if self.grace_s < 0:
            raise ValueError(f"ServiceConfig.grace_s must be >= 0, got {self.grace_s}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("ServiceConfig.tls_cert and tls_key must be given together")
        if self.auth_token is not None and not self.auth_token.strip():
            raise ValueError("ServiceConfig.auth_token must not be empty")


class _AuthInterceptor(grpc.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer <token>`` with UNAUTHENTICATED (health exempt)."""

    def __init__(self, token: str) -> None:
        self._expected = token.strip().encode("latin-1")

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        if details.method.startswith(_HEALTH_PREFIX):
            return continuation(details)
        sent = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
        if sent is not None:
            text = sent if isinstance(sent, str) else bytes(sent).decode("latin-1")
            scheme, _, given = text.partition(" ")
            # the auth scheme is case-insensitive (RFC 6750 / RFC 7235); the token is compared in constant time
            if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("latin-1"), self._expected):
                return continuation(details)
        handler = continuation(details)
        if handler is None:
            return None
        message = ("missing 'authorization: Bearer <token>' metadata" if sent is None
                   else "invalid token in 'authorization' metadata")
        record = {"rpc": details.method.rsplit("/", 1)[-1], "status": "UNAUTHENTICATED"}
        logger.info("rpc %s", json.dumps(record), extra={"rpc": record})
        return _deny(handler, message)


class _OverloadLog(grpc.ServerInterceptor):
    """Logs the calls gRPC turns away with RESOURCE_EXHAUSTED for ``maximum_concurrent_rpcs``.

    gRPC rejects them in its polling thread before any handler runs, so the servicer never sees
    them. Interceptors run in that same thread, under the lock gRPC holds while it decides, so
    reading its in-flight count here predicts its decision exactly. Lines are rate-limited to one
    per second (with the count of those folded in) so that an overload does not flood the log.
    If grpc's internals change shape, nothing is logged and nothing breaks.
    """

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._state: Any = None
        self._last = 0.0
        self._folded = 0
        self.rejected = 0  # total rejections seen (for tests and metrics)

    def attach(self, server: grpc.Server) -> None:
        state = getattr(server, "_state", None)
        self._state = state if isinstance(getattr(state, "active_rpc_count", None), int) else None

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        state = self._state
        if state is not None and state.active_rpc_count >= self._cap:
            self.rejected += 1
            self._folded += 1
            now = time.monotonic()
            if now - self._last >= 1.0:
                record = {"rpc": details.method.rsplit("/", 1)[-1], "status": "RESOURCE_EXHAUSTED",
                          "reason": f"{self._cap} calls in flight", "rejected_since_last_line": self._folded}
                logger.warning("rpc %s", json.dumps(record), extra={"rpc": record})
                self._last, self._folded = now, 0
        return continuation(details)


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that fails with UNAUTHENTICATED."""

    def abort(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kind = (grpc.unary_stream_rpc_method_handler if handler.response_streaming
            else grpc.unary_unary_rpc_method_handler)
    if handler.request_streaming:
        kind = (grpc.stream_stream_rpc_method_handler if handler.response_streaming
                else grpc.stream_unary_rpc_method_handler)
    return kind(abort, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class TracerServer:
    """A built (not yet started) server: the gRPC server, its health service and its indexes.

    Attributes:
        server: The underlying ``grpc.Server``.
        port: The bound port (the real one when the config asked for 0).
        cfg: The configuration it was built with.
    """

    def __init__(self, server: grpc.Server, port: int, cfg: ServiceConfig, registry: IndexRegistry,
                 health_servicer: health.HealthServicer) -> None:
        self.server = server
        self.port = port
        self.cfg = cfg
        self._registry = registry
        self._health = health_servicer

    @property
    def address(self) -> str:
        """``host:port`` as a client would dial it."""
        host = f"[{self.cfg.host}]" if ":" in self.cfg.host else self.cfg.host
        return f"{host}:{self.port}"

    def start(self) -> None:
        self.server.start()

    def index_names(self) -> list[str]:
        """Ids of the indexes added so far, sorted."""
        return self._registry.names()

    def add_index(self, name: str, tracer: Any) -> None:
        """Serve ``tracer`` as index ``name`` (call :meth:`set_serving` once all are added)."""
        self._registry.add(name, tracer)

    def set_serving(self) -> None:
        """Mark every index loaded: RPCs are answered and health says SERVING."""
        if not self._registry.names():
            raise ValueError("no index to serve")
        self._registry.ready = True
        for service in ("", SERVICE_NAME):
            self._health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None = None) -> threading.Event:
        """Drain, then stop: health says NOT_SERVING and new tracer RPCs get UNAVAILABLE at once (health
        probes are still answered), in-flight calls get up to ``grace`` seconds, then gRPC stops.

        Returns immediately. Returns:
            An event set once the server has fully stopped. gRPC's own stop can hang on a rare race
            (malformed client-streaming calls), so callers should wait with a bound
            (:data:`STOP_MARGIN_S` past the grace) rather than forever.
        """
        grace = self.cfg.grace_s if grace is None else grace
        self._health.enter_graceful_shutdown()
        done = threading.Event()

        def drain() -> None:
            deadline = time.monotonic() + grace
            idle = self._registry.drain(grace)
            if not idle:
                logger.warning("grace of %.1fs over with calls still in flight: cancelling them", grace)
            self.server.stop(max(0.0, deadline - time.monotonic())).wait()
            done.set()

        threading.Thread(target=drain, name="tracer-drain", daemon=True).start()
        return done

    def close_indexes(self) -> None:
        """Close every served tracer (after :meth:`stop`)."""
        for entry in self._registry.entries():
            close = getattr(entry.tracer, "close", None)
            if close is not None:
                close()


def _credentials(cfg: ServiceConfig) -> grpc.ServerCredentials | None:
    if cfg.tls_cert is None or cfg.tls_key is None:
        return None
    return grpc.ssl_server_credentials([(Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())])


def create_server(cfg: ServiceConfig, tracers: Mapping[str, Any] | None = None) -> tuple[TracerServer, int]:
    """Build a server; bind its port but do not start it.

    Args:
        cfg: Service configuration.
        tracers: Index id -> Tracer-like object. When given (non-empty) the server is SERVING as soon
            as it starts; otherwise add indexes with ``add_index`` and call ``set_serving``.

    Returns:
        ``(server, port)``: the :class:`TracerServer` and the port actually bound.

    Raises:
        OSError: The address could not be bound.
    """
    options = [("grpc.max_receive_message_length", cfg.max_message_bytes),
               ("grpc.max_send_message_length", cfg.max_message_bytes),
               ("grpc.so_reuseport", 0)]
    overload = _OverloadLog(cfg.max_concurrent_rpcs)
    interceptors: list[grpc.ServerInterceptor] = [overload]
    if cfg.auth_token:
        interceptors.append(_AuthInterceptor(cfg.auth_token))
    executor = futures.ThreadPoolExecutor(max_workers=cfg.max_workers, thread_name_prefix="tracer-rpc")
    server = grpc.server(executor, interceptors=interceptors, options=options,
                         maximum_concurrent_rpcs=cfg.max_concurrent_rpcs)
    overload.attach(server)
    registry = IndexRegistry()
    pb_grpc.add_TracerServiceServicer_to_server(TracerServicer(cfg, registry), server)
    health_servicer = health.HealthServicer()
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if cfg.reflection:
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    creds = _credentials(cfg)
    try:
        port = (server.add_secure_port(f"{host}:{cfg.port}", creds) if creds
                else server.add_insecure_port(f"{host}:{cfg.port}"))
    except RuntimeError as exc:  # grpc reports a failed bind as RuntimeError
        raise OSError(f"cannot bind {host}:{cfg.port}: {exc}") from exc
    srv = TracerServer(server, port, cfg, registry, health_servicer)
    if tracers:
        for name, tracer in tracers.items():
            srv.add_index(name, tracer)
        srv.set_serving()
    return srv, port


def serve(cfg: ServiceConfig, indexes: Iterable[tuple[str, Any]], *,
          on_ready: Callable[[str], None] = lambda address: None) -> int:
    """Run a server until SIGTERM/SIGINT, then drain; returns the exit code (0).

    The server starts (health NOT_SERVING) before the indexes load, so probes see it warming up.

    Args:
        cfg: Service configuration.
        indexes: ``(name, tracer)`` pairs, typically a generator that opens each index lazily.
        on_ready: Called with ``host:port`` once every index is loaded and health is SERVING.
    """
    srv, _ = create_server(cfg)
    stop = threading.Event()
    previous = _install_signal_handlers(stop)
    srv.start()
    try:
        for name, tracer in indexes:
            srv.add_index(name, tracer)
            if stop.is_set():
                break
        if not stop.is_set():
            srv.set_serving()
            logger.info("serving %s on %s", ", ".join(srv.index_names()), srv.address)
            on_ready(srv.address)
        while not stop.wait(1.0):
            pass
        logger.info("draining (grace %.1fs)", cfg.grace_s)
    finally:
        stopped = srv.stop().wait(cfg.grace_s + STOP_MARGIN_S)
        if stopped:  # no handler can still be using an index
            srv.close_indexes()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not stopped:
        logger.error("gRPC did not stop within grace + %.0fs; exiting without waiting for it", STOP_MARGIN_S)
        return UNCLEAN_STOP
    logger.info("stopped")
    return 0


STOP_MARGIN_S = 2.0  # how long past the grace a stop may take before the process exits anyway
UNCLEAN_STOP = 3  # serve()'s return code when gRPC's stop had to be abandoned (exit with os._exit)


def _install_signal_handlers(stop: threading.Event) -> dict[int, Any]:
    """SIGTERM and SIGINT set ``stop`` (only possible from the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, lambda signum, frame: stop.set())
    return previous
