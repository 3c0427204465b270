"""``TracerClient``: the gRPC service behind the in-process library's interface.

Calls return the records of :mod:`tracer.types` (``TraceResult`` with ``.to_json()`` and a
notebook ``_repr_html_``), and a failed call raises the same :class:`~tracer.errors.TracerError`
subclass the library would have raised: the server names the class in the ``x-tracer-error``
trailer, and the status code decides when it does not. Every call carries a deadline.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tracer import errors
from tracer._proto.tracer.v1 import tracer_pb2 as pb
from tracer._proto.tracer.v1 import tracer_pb2_grpc as pb_grpc
from tracer.types import Document, Hit, Query, TraceResult

if TYPE_CHECKING:
    from typing_extensions import Self

DEFAULT_TIMEOUT_S = 30.0
EVALUATE_TIMEOUT_S = 3600.0  # Evaluate runs a whole benchmark
_ERROR_TYPE_KEY = "x-tracer-error"
_REQUEST_ID_KEY = "x-request-id"
_PREFIXES = {
    pb.Method: "METHOD_",
    pb.CandidateSource: "CANDIDATE_SOURCE_",
    pb.EvaluatePolicy: "EVALUATE_POLICY_",
}


class UnauthenticatedError(errors.TracerError):
    """The server wants a (different) bearer token."""


class UnavailableError(errors.TracerError):
    """The server is unreachable, warming up or draining; retrying later may succeed."""


class RemoteError(errors.TracerError):
    """Any other failed call (INTERNAL, UNKNOWN, ...); ``request_id`` finds it in the server log."""


_BY_CODE: dict[grpc.StatusCode, type[errors.TracerError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidRequestError,
    grpc.StatusCode.NOT_FOUND: errors.NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.IndexNotReadyError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.LimitExceededError,
    grpc.StatusCode.UNIMPLEMENTED: errors.MethodDisabledError,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceededError,
    grpc.StatusCode.CANCELLED: errors.CancelledError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: UnauthenticatedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.ABORTED: errors.BuildLockedError,
}


_CODE_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}


def trace_context() -> tuple[tuple[str, str], ...]:
    """The caller's OpenTelemetry context as gRPC metadata (W3C ``traceparent``, ``tracestate``, and
    whatever else the global propagator writes), so a server with spans on (``tracer serve
    --otel-endpoint``) makes its Trace/Verify span a child of the caller's span.

    Empty unless OpenTelemetry is imported and a valid span is current: the client itself never
    imports OpenTelemetry, and a caller without spans pays nothing.
    """
    if "opentelemetry.trace" not in sys.modules:
        return ()
    from opentelemetry import propagate
    from opentelemetry import trace as otel_trace

    if not otel_trace.get_current_span().get_span_context().is_valid:
        return ()
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple((k.lower(), v) for k, v in carrier.items())


def error_from_rpc(err: grpc.RpcError) -> errors.TracerError:
    """The ``TracerError`` for a failed call, with ``code`` (status name) and ``request_id`` set."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    trailers = dict(err.trailing_metadata() or ()) if hasattr(err, "trailing_metadata") else {}
    named = getattr(errors, str(trailers.get(_ERROR_TYPE_KEY, "")), None)
    if isinstance(named, type) and issubclass(named, errors.TracerError):
        cls: type[errors.TracerError] = named
    else:
        cls = _BY_CODE.get(code, RemoteError)
    exc = cls(details or code.name)
    exc.code = code.name  # type: ignore[attr-defined]
    exc.request_id = trailers.get(_REQUEST_ID_KEY)  # type: ignore[attr-defined]
    return exc


def _enum(enum: Any, name: str | None) -> Any:
    if not name:
        return 0
    try:
        return enum.Value(_PREFIXES[enum] + name.upper())
    except ValueError:
        valid = [n.removeprefix(_PREFIXES[enum]).lower() for n in enum.keys() if not n.endswith("_UNSPECIFIED")]
        raise errors.InvalidRequestError(f"unknown {enum.DESCRIPTOR.name} {name!r}; expected one of "
                                         f"{', '.join(valid)}") from None


def _name(enum: Any, value: int) -> str:
    return enum.Name(value).removeprefix(_PREFIXES[enum]).lower()


def _trace_result(msg: pb.TraceResponse) -> TraceResult:
    hits = tuple(Hit(doc_id=h.example_id, rank=h.rank, score=h.score,
                     text=h.text if h.HasField("text") else None,
                     checkpoint_scores=tuple(h.checkpoint_scores),
                     topk_fraction=h.topk_fraction if h.HasField("topk_fraction") else None,
                     stable=h.stable if h.HasField("stable") else None,
                     interval=(h.score_low, h.score_high) if h.HasField("score_low") else None)
                 for h in msg.hits)
    return TraceResult(
        query=Query(query_id=msg.query_id, prompt=msg.prompt, target=msg.target),
        method=_name(pb.Method, msg.method),
        candidates=_name(pb.CandidateSource, msg.candidates),
        hits=hits,
        timings_ms=dict(msg.timings_ms),
        index_fingerprint=msg.index_fingerprint,
        n_candidates=msg.num_candidates,
        recall_ceiling=msg.recall_ceiling if msg.HasField("recall_ceiling") else None,
    )


def _document(msg: pb.Example) -> Document:
    return Document(doc_id=msg.example_id, text=msg.text, facts=tuple(msg.facts),
                    prompt=msg.prompt if msg.HasField("prompt") else None,
                    target=msg.target if msg.HasField("target") else None)


def _as_query(q: Query | tuple[str, str] | tuple[str, str, str], i: int) -> Query:
    if isinstance(q, Query):
        return q
    if len(q) == 2:
        return Query(query_id=f"q{i}", prompt=q[0], target=q[1])
    return Query(query_id=q[0], prompt=q[1], target=q[2])


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One query's outcome in :meth:`TracerClient.batch_trace`: ``result`` or ``error``, never both."""

    position: int
    result: TraceResult | None = None
    error: errors.TracerError | None = None


class TracerClient:
    """A client of ``tracer.v1.TracerService``.

    Args:
        address: ``host:port`` of the server.
        token: Bearer token, sent as ``authorization`` metadata on every call.
        timeout: Default deadline of each call, in seconds.
        tls_ca: PEM file of the CA that signed the server's certificate; enables TLS.
        index: Default index id (may stay ``None`` when the server serves exactly one).
        max_message_bytes: Largest response accepted.
    """

    def __init__(self, address: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 tls_ca: str | Path | None = None, *, index: str | None = None,
                 max_message_bytes: int = 64 << 20) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        if tls_ca is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes())
            self._channel = grpc.secure_channel(address, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = pb_grpc.TracerServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.address = address
        self.timeout = timeout
        self.index = index

    # --- plumbing
    def _call(self, rpc: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        try:
            return rpc(request, timeout=timeout or self.timeout, metadata=self._metadata + trace_context())
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None

    def _stream(self, rpc: Callable[..., Any], request: Any, timeout: float | None) -> Iterator[Any]:
        try:
            yield from rpc(request, timeout=timeout or self.timeout, metadata=self._metadata + trace_context())
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None

    def _index(self, index: str | None) -> str:
        return index if index is not None else (self.index or "")

    # --- tracing
    def trace(self, prompt: str, target: str, *, method: str | None = None, candidates: str | None = None,
              k: int = 10, num_candidates: int = 0, include_text: bool = False, query_id: str = "",
              index: str | None = None, timeout: float | None = None,
              budget_ms: float | None = None) -> TraceResult:
        """Trace one fact; like ``Tracer.trace``, with ``None``/0 meaning the server's default.

        Raises:
            TracerError: The subclass the server reported (InvalidRequestError, NotFoundError, ...).
        """
        req = pb.TraceRequest(index=self._index(index), prompt=prompt, target=target,
                              method=_enum(pb.Method, method),
                              candidates=_enum(pb.CandidateSource, candidates),
                              top_k=k, num_candidates=num_candidates, include_text=include_text,
                              query_id=query_id, budget_ms=budget_ms)
        return _trace_result(self._call(self._stub.Trace, req, timeout))

    def batch_trace(self, queries: Sequence[Query | tuple[str, str]], *, method: str | None = None,
                    candidates: str | None = None, k: int = 10, num_candidates: int = 0,
                    include_text: bool = False, index: str | None = None,
                    timeout: float | None = None) -> list[BatchItem]:
        """Trace many queries in one call; a bad query fails alone (see :class:`BatchItem`).

        Args:
            queries: ``Query`` records or ``(prompt, target)`` pairs.
        """
        qs = [_as_query(q, i) for i, q in enumerate(queries)]
        req = pb.BatchTraceRequest(
            index=self._index(index), method=_enum(pb.Method, method),
            candidates=_enum(pb.CandidateSource, candidates), top_k=k, num_candidates=num_candidates,
            include_text=include_text,
            queries=[pb.TraceQuery(query_id=q.query_id, prompt=q.prompt, target=q.target) for q in qs])
        items = []
        for msg in self._stream(self._stub.BatchTrace, req, timeout):
            if msg.HasField("result"):
                items.append(BatchItem(msg.position, result=_trace_result(msg.result)))
            else:
                code = _CODE_BY_NUMBER.get(msg.error.code, grpc.StatusCode.UNKNOWN)
                error = _BY_CODE.get(code, RemoteError)(msg.error.message)
                items.append(BatchItem(msg.position, error=error))
        return items

    def trace_batch(self, queries: Sequence[Query | tuple[str, str]], **kwargs: Any) -> list[TraceResult]:
        """Like ``Tracer.trace_batch``: all results, or the first query's error raised."""
        out = []
        for item in self.batch_trace(queries, **kwargs):
            if item.error is not None:
                raise item.error
            assert item.result is not None  # invariant of BatchItem
            out.append(item.result)
        return out

    def evaluate(self, queries: Sequence[Query], *, methods: Sequence[str] = (),
                 candidates: str | None = None, num_candidates: int = 0, policy: str | None = None,
                 tail_patch: bool = False, tail_patch_max_queries: int = 0,
                 on_progress: Callable[[int, int, str], None] | None = None,
                 index: str | None = None,
                 timeout: float | None = EVALUATE_TIMEOUT_S) -> dict[str, Any]:
        """Run the benchmark server-side; returns the same report dict as ``Tracer.evaluate``.

        Args:
            on_progress: Called with ``(done_queries, total_queries, stage)`` as the server reports.
        """
        req = pb.EvaluateRequest(
            index=self._index(index), methods=[_enum(pb.Method, m) for m in methods],
            candidates=_enum(pb.CandidateSource, candidates), num_candidates=num_candidates,
            policy=_enum(pb.EvaluatePolicy, policy), tail_patch=tail_patch,
            tail_patch_max_queries=tail_patch_max_queries,
            queries=[pb.EvaluateQuery(query_id=q.query_id, prompt=q.prompt, target=q.target,
                                      proponents=list(q.proponents), fact_id=q.fact_id or "",
                                      relation=q.relation or "", subject=q.subject or "") for q in queries])
        for msg in self._stream(self._stub.Evaluate, req, timeout):
            if msg.HasField("progress"):
                p = msg.progress
                if on_progress is not None:
                    on_progress(p.done_queries, p.total_queries, p.stage)
            elif msg.HasField("result"):
                return dict(json.loads(msg.result.report_json))
        raise RemoteError("Evaluate ended without a result")

    # --- indexes and examples
    def get_index(self, index: str | None = None, *, timeout: float | None = None) -> dict[str, Any]:
        """The index's ``info()`` dict (as ``Tracer.info``)."""
        msg = self._call(self._stub.GetIndex, pb.GetIndexRequest(index=self._index(index)), timeout)
        return dict(json.loads(msg.index.info_json))

    def list_indexes(self, *, page_size: int = 0, timeout: float | None = None) -> list[dict[str, Any]]:
        """Every served index (all pages): ``{"name", "fingerprint", "n_documents", "methods", "info"}``."""
        out: list[dict[str, Any]] = []
        token = ""
        while True:
            req = pb.ListIndexesRequest(page_size=page_size, page_token=token)
            msg = self._call(self._stub.ListIndexes, req, timeout)
            out.extend({"name": i.name, "fingerprint": i.fingerprint, "n_documents": i.num_examples,
                        "methods": [_name(pb.Method, m) for m in i.methods],
                        "info": json.loads(i.info_json)} for i in msg.indexes)
            token = msg.next_page_token
            if not token:
                return out

    def get_examples(self, doc_ids: Sequence[str], *, index: str | None = None,
                     timeout: float | None = None) -> list[Document]:
        """Training examples by id, in the order asked (as ``Tracer.get_documents``)."""
        req = pb.BatchGetExamplesRequest(index=self._index(index), example_ids=list(doc_ids))
        return [_document(m) for m in self._call(self._stub.BatchGetExamples, req, timeout).examples]

    get_documents = get_examples

    def verify(self, prompt: str, target: str, example_ids: Sequence[str], *, checkpoint: int = 0,
               lr: float = 1e-2, n_random: int = 3, seed: int = 0, index: str | None = None,
               timeout: float | None = None) -> Any:
        """Tail-patch on demand over gRPC (as ``Tracer.verify``); returns a ``Verification``."""
        from tracer.verification import Verdict, Verification

        req = pb.VerifyRequest(index=self._index(index), prompt=prompt, target=target, example_ids=list(example_ids),
                               checkpoint=checkpoint, lr=lr, num_random=n_random, seed=seed)
        msg = self._call(self._stub.Verify, req, timeout)

        def one(x: Any) -> Verdict:
            return Verdict(x.example_id, x.delta_logprob, x.ms, x.baseline)

        return Verification(msg.prompt, msg.target, msg.checkpoint, msg.lr, tuple(one(x) for x in msg.examples),
                            tuple(one(x) for x in msg.baseline), dict(msg.timings_ms))

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """Health status name of ``service`` ("" = whole server): ``"SERVING"``, ``"NOT_SERVING"``, ..."""
        msg = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(msg.status))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
