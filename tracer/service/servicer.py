"""The ``tracer.v1.TracerService`` servicer: validate and convert, call the tracer, convert back.

Everything domain-specific happens in the tracer object (``tracer.Tracer`` or anything with the
same duck-typed API); this module only resolves server defaults, enforces the configured caps,
turns the call's gRPC deadline into the tracer's absolute ``deadline`` and serializes calls to a
tracer that does not declare ``thread_safe = True``. Every RPC is wrapped by
:func:`tracer.service.status.rpc_method`, which maps errors to status codes.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import queue
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from tracer._proto.tracer.v1 import tracer_pb2 as pb
from tracer._proto.tracer.v1 import tracer_pb2_grpc as pb_grpc
from tracer.errors import (
    CancelledError,
    DeadlineExceededError,
    InvalidRequestError,
    LimitExceededError,
    NotFoundError,
)
from tracer.service import convert
from tracer.service.status import ServiceUnavailableError, rpc_method
from tracer.types import Query

if TYPE_CHECKING:
    from tracer.service.server import ServiceConfig

_INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
_PAGE_TOKEN_PREFIX = "after:"


@dataclass
class IndexEntry:
    """One served index and what the servicer caches about it.

    Attributes:
        name: Index id as clients name it.
        tracer: The Tracer-like object answering queries.
        methods: ``tracer.available_methods()``.
        info: ``tracer.info()`` (JSON-able), cached at registration.
        default_method: Used for ``METHOD_UNSPECIFIED``: tracin if available, else bm25.
        default_candidates: Used for ``CANDIDATE_SOURCE_UNSPECIFIED``: bm25 if available.
        lock: Serializes calls unless the tracer sets ``thread_safe = True``.
    """

    name: str
    tracer: Any
    methods: list[str]
    info: dict[str, Any]
    default_method: str
    default_candidates: str
    lock: threading.Lock | None = field(default=None, repr=False)
    cancellable: bool = False  # tracer.trace accepts ``cancelled=`` (polled inside long scans)

    @classmethod
    def create(cls, name: str, tracer: Any) -> IndexEntry:
        methods = list(tracer.available_methods())
        info = dict(tracer.info())
        listed = getattr(tracer, "available_candidates", None)
        sources = list((listed() if callable(listed) else info.get("candidates")) or ["bm25"])
        fallback = methods[0] if methods else "bm25"
        default_method = next((m for m in ("tracin", "bm25") if m in methods), fallback)
        default_candidates = "bm25" if "bm25" in sources else sources[0]
        lock = None if getattr(tracer, "thread_safe", False) else threading.Lock()
        try:
            cancellable = "cancelled" in inspect.signature(tracer.trace).parameters
        except (TypeError, ValueError):
            cancellable = False
        return cls(name, tracer, methods, info, default_method, default_candidates, lock, cancellable)

    def cancel_check(self, context: grpc.ServicerContext) -> dict[str, Any]:
        """``{"cancelled": ...}`` for the tracer's calls when it polls one, else ``{}``."""
        return {"cancelled": lambda: not context.is_active()} if self.cancellable else {}

    @contextmanager
    def use(self, deadline: float | None) -> Iterator[Any]:
        """Yield the tracer, holding its lock (if any) but never past ``deadline``."""
        if self.lock is None:
            yield self.tracer
            return
        timeout = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self.lock.acquire(timeout=timeout):
            raise DeadlineExceededError(f"index {self.name!r}: deadline passed while waiting for the index")
        try:
            yield self.tracer
        finally:
            self.lock.release()


class IndexRegistry:
    """The indexes a server answers for, and whether it is ready (thread-safe)."""

    def __init__(self) -> None:
        self._entries: dict[str, IndexEntry] = {}
        self._lock = threading.Lock()
        self.ready = False
        self._calls = threading.Condition()
        self._in_flight = 0
        self.draining = False

    @contextmanager
    def active(self) -> Iterator[None]:
        """Count one RPC in flight; refused with UNAVAILABLE once the server drains."""
        with self._calls:
            if self.draining:
                raise ServiceUnavailableError("server is draining (shutting down): retry on another replica")
            self._in_flight += 1
        try:
            yield
        finally:
            with self._calls:
                self._in_flight -= 1
                self._calls.notify_all()

    def drain(self, timeout: float) -> bool:
        """Refuse new RPCs and wait up to ``timeout`` seconds for those in flight; True when none is left."""
        with self._calls:
            self.draining = True
            return self._calls.wait_for(lambda: self._in_flight == 0, max(0.0, timeout))

    def add(self, name: str, tracer: Any) -> IndexEntry:
        """Register ``tracer`` under ``name``; a duplicate name is a ``ValueError``."""
        entry = IndexEntry.create(name, tracer)
        with self._lock:
            if name in self._entries:
                raise ValueError(f"index {name!r} is already served")
            self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def entries(self) -> list[IndexEntry]:
        with self._lock:
            return [self._entries[n] for n in sorted(self._entries)]

    def get(self, name: str) -> IndexEntry:
        """The entry for ``name``; an empty name means the only index when exactly one is served.

        Raises:
            ServiceUnavailableError: Indexes are still loading.
            InvalidRequestError: ``name`` is empty and several indexes are served.
            NotFoundError: No index has this name.
        """
        if not self.ready:
            raise ServiceUnavailableError("server is starting: indexes are still loading")
        with self._lock:
            if not name:
                if len(self._entries) == 1:
                    return next(iter(self._entries.values()))
                raise InvalidRequestError(f"index: required (serving {', '.join(sorted(self._entries))})")
            entry = self._entries.get(name)
            if entry is None:
                serving = ", ".join(sorted(self._entries))
                shown = name if len(name) <= 200 else name[:200] + "…"
                raise NotFoundError(f"index: unknown index {shown!r} (serving {serving})")
            return entry


# W3C trace-context metadata keys a client may send (lower case, as gRPC delivers them).
TRACE_CONTEXT_KEYS = ("traceparent", "tracestate", "baggage")


@contextmanager
def remote_parent(context: grpc.ServicerContext) -> Iterator[None]:
    """Make the caller's W3C trace context (``traceparent`` metadata) current while a call runs.

    The server's OpenInference spans (:mod:`tracer.telemetry`) then become children of the client's
    span, in the client's trace. A no-op when OpenTelemetry was never imported (spans are off: nothing
    could use the context) or the call carries no ``traceparent``.
    """
    if "opentelemetry.trace" not in sys.modules:
        yield
        return
    carrier = {k: v for k, v in (context.invocation_metadata() or ())
               if k in TRACE_CONTEXT_KEYS and isinstance(v, str)}
    if "traceparent" not in carrier:
        yield
        return
    from opentelemetry import context as otel_context
    from opentelemetry import propagate

    token = otel_context.attach(propagate.extract(carrier))
    try:
        yield
    finally:
        otel_context.detach(token)


def call_deadline(context: grpc.ServicerContext) -> float | None:
    """The call's deadline as an absolute ``time.monotonic()`` value (``None`` without one)."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    if remaining <= 0:
        raise DeadlineExceededError("deadline expired before the work started")
    return time.monotonic() + remaining


def _bounded(value: int, field_name: str, default: int, cap: int) -> int:
    if value < 0:
        raise InvalidRequestError(f"{field_name}: must be >= 0 (0 = server default {default}), got {value}")
    if value > cap:
        raise LimitExceededError(f"{field_name}: {value} exceeds the server's cap of {cap}")
    return value or default


class TracerServicer(pb_grpc.TracerServiceServicer):
    """Implements every RPC of ``tracer.v1.TracerService`` over an :class:`IndexRegistry`."""

    def __init__(self, cfg: ServiceConfig, registry: IndexRegistry) -> None:
        self._cfg = cfg
        self._registry = registry

    def _trace_options(self, entry: IndexEntry, request: Any) -> dict[str, Any]:
        cfg = self._cfg
        return {
            "method": convert.enum_to_name(pb.Method, request.method, "method") or entry.default_method,
            "candidates": convert.enum_to_name(pb.CandidateSource, request.candidates, "candidates")
            or entry.default_candidates,
            "k": _bounded(request.top_k, "top_k", cfg.default_top_k, cfg.max_top_k),
            "num_candidates": _bounded(request.num_candidates, "num_candidates", cfg.default_num_candidates,
                                       cfg.max_num_candidates),
            "include_text": bool(request.include_text),
            **({"budget_ms": request.budget_ms} if getattr(request, "budget_ms", None) is not None
               and request.HasField("budget_ms") else {}),
        }

    def _respond(self, result: Any, entry: IndexEntry, include_text: bool) -> pb.TraceResponse:
        return convert.trace_response(result, entry.name, include_text=include_text,
                                      max_text_chars=self._cfg.max_text_chars)

    @rpc_method
    def Trace(self, request: pb.TraceRequest, context: grpc.ServicerContext) -> pb.TraceResponse:
        entry = self._registry.get(request.index)
        query = convert.query_from_fields(request, "")
        opts = self._trace_options(entry, request)
        deadline = call_deadline(context)
        with entry.use(deadline) as tracer, remote_parent(context):
            result = tracer.trace(query.prompt, query.target, query_id=query.query_id, deadline=deadline,
                                  **opts, **entry.cancel_check(context))
        return self._respond(result, entry, opts["include_text"])

    @rpc_method
    def BatchTrace(self, request: pb.BatchTraceRequest,
                   context: grpc.ServicerContext) -> Iterator[pb.BatchTraceResponse]:
        entry = self._registry.get(request.index)
        n = len(request.queries)
        if n == 0:
            raise InvalidRequestError("queries: at least one query is required")
        if n > self._cfg.max_batch:
            raise LimitExceededError(f"queries: {n} queries exceed the server's cap of {self._cfg.max_batch}")
        opts = self._trace_options(entry, request)
        deadline = call_deadline(context)
        step = self._cfg.batch_chunk
        for start in range(0, n, step):
            if not context.is_active():
                raise CancelledError("BatchTrace: the client went away")
            yield from self._batch_chunk(entry, request.queries[start:start + step], start, opts, deadline, context)

    def _batch_chunk(self, entry: IndexEntry, msgs: Sequence[pb.TraceQuery], start: int,
                     opts: dict[str, Any], deadline: float | None,
                     context: grpc.ServicerContext | None = None) -> Iterator[pb.BatchTraceResponse]:
        """Trace one chunk of a batch; a bad query becomes that position's error, not the stream's."""
        out: dict[int, pb.BatchTraceResponse] = {}
        valid: list[tuple[int, Query]] = []
        for pos, msg in enumerate(msgs, start):
            try:
                valid.append((pos, convert.query_from_fields(msg, f"queries[{pos}].")))
            except InvalidRequestError as exc:
                out[pos] = convert.batch_error(pos, _INVALID, str(exc))
        if valid:
            with entry.use(deadline) as tracer:
                with remote_parent(context) if context is not None else nullcontext():  # not across a yield
                    outcomes = self._trace_many(tracer, valid, opts, deadline)
                for pos, outcome in outcomes:
                    if isinstance(outcome, InvalidRequestError):
                        out[pos] = convert.batch_error(pos, _INVALID, f"queries[{pos}]: {outcome}")
                    else:
                        response = self._respond(outcome, entry, opts["include_text"])
                        out[pos] = convert.batch_result(pos, response)
        for pos in sorted(out):
            yield out[pos]

    @staticmethod
    def _trace_many(tracer: Any, valid: list[tuple[int, Query]], opts: dict[str, Any],
                    deadline: float | None) -> list[tuple[int, Any]]:
        """``trace_batch`` on the chunk; if one query is invalid, retry one by one to find which."""
        try:
            results = tracer.trace_batch([q for _, q in valid], deadline=deadline, **opts)
            return [(pos, r) for (pos, _), r in zip(valid, results)]
        except InvalidRequestError:
            pass
        outcomes: list[tuple[int, Any]] = []
        for pos, q in valid:
            try:
                outcomes.append((pos, tracer.trace(q.prompt, q.target, query_id=q.query_id, deadline=deadline,
                                                   **opts)))
            except InvalidRequestError as exc:
                outcomes.append((pos, exc))
        return outcomes

    @rpc_method
    def Evaluate(self, request: pb.EvaluateRequest,
                 context: grpc.ServicerContext) -> Iterator[pb.EvaluateResponse]:
        entry = self._registry.get(request.index)
        n = len(request.queries)
        if n == 0:
            raise InvalidRequestError("queries: at least one query is required")
        if n > self._cfg.max_eval_queries:
            cap = self._cfg.max_eval_queries
            raise LimitExceededError(f"queries: {n} queries exceed the server's cap of {cap}")
        queries = [convert.eval_query(q, i) for i, q in enumerate(request.queries)]
        kwargs = {
            "methods": convert.methods_from(request.methods) or list(entry.methods),
            "candidates": convert.enum_to_name(pb.CandidateSource, request.candidates, "candidates")
            or entry.default_candidates,
            "num_candidates": _bounded(request.num_candidates, "num_candidates",
                                       self._cfg.default_num_candidates, self._cfg.max_num_candidates),
            "policy": convert.enum_to_name(pb.EvaluatePolicy, request.policy, "policy") or "candidates",
            "tail_patch": bool(request.tail_patch),
            "deadline": call_deadline(context),
        }
        if request.tail_patch_max_queries > 0:
            kwargs["tail_patch_max_queries"] = int(request.tail_patch_max_queries)
        kwargs = {
            **kwargs,
        }
        yield from _run_evaluate(entry, queries, kwargs, context)

    @rpc_method
    def GetIndex(self, request: pb.GetIndexRequest, context: grpc.ServicerContext) -> pb.GetIndexResponse:
        entry = self._registry.get(request.index)
        return pb.GetIndexResponse(index=_index_info(entry))

    @rpc_method
    def ListIndexes(self, request: pb.ListIndexesRequest,
                    context: grpc.ServicerContext) -> pb.ListIndexesResponse:
        if not self._registry.ready:
            raise ServiceUnavailableError("server is starting: indexes are still loading")
        if request.page_size < 0:
            raise InvalidRequestError(f"page_size: must be >= 0, got {request.page_size}")
        size = min(request.page_size or self._cfg.default_page_size, self._cfg.max_page_size)
        after = _decode_page_token(request.page_token)
        remaining = [e for e in self._registry.entries() if e.name > after]
        page = remaining[:size]
        token = _encode_page_token(page[-1].name) if len(remaining) > size else ""
        return pb.ListIndexesResponse(indexes=[_index_info(e) for e in page], next_page_token=token)

    @rpc_method
    def BatchGetExamples(self, request: pb.BatchGetExamplesRequest,
                         context: grpc.ServicerContext) -> pb.BatchGetExamplesResponse:
        entry = self._registry.get(request.index)
        ids = list(request.example_ids)
        if not ids:
            raise InvalidRequestError("example_ids: at least one id is required")
        if len(ids) > self._cfg.max_examples:
            cap = self._cfg.max_examples
            raise LimitExceededError(f"example_ids: {len(ids)} ids exceed the server's cap of {cap}")
        for i, doc_id in enumerate(ids):
            convert.require_text(doc_id, f"example_ids[{i}]")
        with entry.use(call_deadline(context)) as tracer:
            docs = tracer.get_documents(ids)
        return pb.BatchGetExamplesResponse(examples=[convert.example(d) for d in docs])

    @rpc_method
    def Verify(self, request: pb.VerifyRequest, context: grpc.ServicerContext) -> pb.VerifyResponse:
        entry = self._registry.get(request.index)
        for i, doc_id in enumerate(request.example_ids):
            convert.require_text(doc_id, f"example_ids[{i}]")
        deadline = call_deadline(context)
        with entry.use(deadline) as tracer, remote_parent(context):
            v = tracer.verify(request.prompt, request.target, list(request.example_ids),
                              checkpoint=request.checkpoint if request.HasField("checkpoint") else 0,
                              lr=request.lr if request.HasField("lr") else 1e-2,
                              n_random=request.num_random if request.HasField("num_random") else 3,
                              seed=request.seed, max_examples=self._cfg.max_verify, deadline=deadline,
                              **entry.cancel_check(context))
        return convert.verify_response(v, tracer.fingerprint)


def _index_info(entry: IndexEntry) -> pb.IndexInfo:
    return convert.index_info(entry.name, entry.tracer.fingerprint, entry.tracer.n_documents, entry.methods,
                              entry.info)


def _encode_page_token(after: str) -> str:
    return base64.urlsafe_b64encode((_PAGE_TOKEN_PREFIX + after).encode()).decode()


def _decode_page_token(token: str) -> str:
    """The last index name of the previous page ("" for the first page)."""
    if not token:
        return ""
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeError, ValueError):
        text = ""
    if not text.startswith(_PAGE_TOKEN_PREFIX):
        raise InvalidRequestError("page_token: not a token this server issued")
    return text[len(_PAGE_TOKEN_PREFIX):]


def _run_evaluate(entry: IndexEntry, queries: list[Query], kwargs: Mapping[str, Any],
                  context: grpc.ServicerContext) -> Iterator[pb.EvaluateResponse]:
    """Run ``tracer.evaluate`` in a worker thread, streaming its progress as it comes.

    The progress callback raises :class:`CancelledError` once the client has gone away, which
    stops the evaluation at the next query.
    """
    events: queue.Queue[tuple[str, Any]] = queue.Queue()

    def on_progress(done: int, total: int, method: str) -> None:
        if not context.is_active():
            raise CancelledError("Evaluate: the client went away")
        events.put(("progress", (done, total, method)))

    def work() -> None:
        try:
            with entry.use(kwargs["deadline"]) as tracer:
                events.put(("result", tracer.evaluate(queries, on_progress=on_progress, **kwargs)))
        except BaseException as exc:  # noqa: BLE001 - handed to the RPC thread, which maps it
            events.put(("error", exc))

    threading.Thread(target=work, name=f"evaluate-{entry.name}", daemon=True).start()
    while True:
        kind, payload = events.get()
        if kind == "progress":
            yield convert.evaluate_progress(*payload)
        elif kind == "result":
            yield convert.evaluate_result(payload)
            return
        else:
            raise payload
