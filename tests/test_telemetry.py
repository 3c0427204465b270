"""OpenInference spans (``tracer.telemetry``): one RETRIEVER span per traced query.

Spans go to a local SDK ``TracerProvider`` with an in-memory exporter: never the global provider,
never the network.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

semconv = pytest.importorskip("openinference.semconv.trace")
pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tracer import telemetry
from tracer.errors import InvalidRequestError
from tracer.types import Query, TraceResult

SA, DA = semconv.SpanAttributes, semconv.DocumentAttributes
RETRIEVER = semconv.OpenInferenceSpanKindValues.RETRIEVER.value
DOCS = SA.RETRIEVAL_DOCUMENTS


class Spans:
    """A local provider and the spans it finished."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


@pytest.fixture
def spans() -> Iterator[Spans]:
    s = Spans()
    yield s
    s.provider.shutdown()


@pytest.fixture
def tracer_obj(tiny_index: Path) -> Iterator[Any]:
    from tracer import Tracer

    with Tracer.open(tiny_index) as t:
        yield t


def doc_attr(i: int, name: str) -> str:
    return f"{DOCS}.{i}.{name}"


def assert_documents_match(span: ReadableSpan, result: TraceResult) -> None:
    """``retrieval.documents`` holds exactly the result's hits, in rank order."""
    attrs = span.attributes or {}
    n = len({k.split(".")[2] for k in attrs if k.startswith(DOCS + ".")})
    assert n == len(result.hits) > 0
    assert [attrs[doc_attr(i, DA.DOCUMENT_ID)] for i in range(n)] == [h.doc_id for h in result.hits]
    assert [attrs[doc_attr(i, DA.DOCUMENT_SCORE)] for i in range(n)] == [h.score for h in result.hits]
    assert [json.loads(attrs[doc_attr(i, DA.DOCUMENT_METADATA)])["rank"] for i in range(n)] == [
        h.rank for h in result.hits]


def test_trace_emits_one_retriever_span(tracer_obj: Any, tiny_bench: Any, spans: Spans) -> None:
    q = tiny_bench.queries[0]
    telemetry.instrument(tracer_obj, tracer_provider=spans.provider, max_content_chars=40)
    result = tracer_obj.trace(q.prompt, q.target, method="tracin", k=5, num_candidates=20, query_id="q0")
    (span,) = spans.finished()
    attrs = span.attributes or {}
    assert span.name == telemetry.SPAN_NAME and span.status.status_code == StatusCode.UNSET
    assert attrs[SA.OPENINFERENCE_SPAN_KIND] == RETRIEVER == "RETRIEVER"
    assert json.loads(attrs[SA.INPUT_VALUE]) == {"prompt": q.prompt, "target": q.target}
    assert attrs[SA.INPUT_MIME_TYPE] == "application/json"
    meta = json.loads(attrs[SA.METADATA])
    assert {k: meta[k] for k in ("method", "candidates", "k", "num_candidates", "query_id")} == {
        "method": "tracin", "candidates": "bm25", "k": 5, "num_candidates": 20, "query_id": "q0"}
    assert meta["index_fingerprint"] == tracer_obj.fingerprint == attrs[telemetry.ATTR_INDEX_FINGERPRINT]
    assert attrs[telemetry.ATTR_METHOD] == "tracin" and attrs[telemetry.ATTR_CANDIDATES] == "bm25"
    assert attrs[telemetry.ATTR_N_CANDIDATES] == result.n_candidates
    assert attrs[telemetry.ATTR_TIMING_PREFIX + "total_ms"] == result.timings_ms["total_ms"] > 0
    assert_documents_match(span, result)
    for i, hit in enumerate(result.hits):  # what is known about each hit rides along as metadata
        meta = json.loads(attrs[doc_attr(i, DA.DOCUMENT_METADATA)])
        assert meta.get("stable") == hit.stable and meta.get("checkpoint_scores", []) == list(
            getattr(hit, "checkpoint_scores", ()))
    texts = {d.doc_id: d.text for d in tracer_obj.get_documents([h.doc_id for h in result.hits])}
    contents = [attrs[doc_attr(i, DA.DOCUMENT_CONTENT)] for i in range(len(result.hits))]
    assert contents == [texts[h.doc_id][:40] for h in result.hits]  # fetched: the hits carry no text


def test_attribute_names_come_from_the_semantic_conventions(tracer_obj: Any, tiny_bench: Any,
                                                            spans: Spans) -> None:
    """Every attribute is an OpenInference span or document attribute, or a ``tracer.*`` extra."""
    q = tiny_bench.queries[1]
    telemetry.instrument(tracer_obj, tracer_provider=spans.provider)
    tracer_obj.trace(Query("q1", q.prompt, q.target, q.proponents), method="bm25", k=3)
    (span,) = spans.finished()
    span_names = {v for k, v in vars(SA).items() if k.isupper() and isinstance(v, str)}
    doc_names = {v for k, v in vars(DA).items() if k.isupper() and isinstance(v, str)}
    doc_key = re.compile(rf"^{re.escape(DOCS)}\.(\d+)\.(.+)$")
    seen_doc_names = set()
    for key in span.attributes or {}:
        m = doc_key.match(key)
        if m:
            assert m.group(2) in doc_names, key
            seen_doc_names.add(m.group(2))
        else:
            assert key in span_names or key.startswith("tracer."), key
    assert seen_doc_names == {DA.DOCUMENT_ID, DA.DOCUMENT_SCORE, DA.DOCUMENT_CONTENT, DA.DOCUMENT_METADATA}
    assert {SA.OPENINFERENCE_SPAN_KIND, SA.INPUT_VALUE, SA.METADATA} <= set(span.attributes or {})


def test_invalid_query_records_an_error_span_and_raises_the_same(tracer_obj: Any, spans: Spans) -> None:
    with pytest.raises(InvalidRequestError) as plain:
        tracer_obj.trace("Ada was born in", "", method="bm25")
    telemetry.instrument(tracer_obj, tracer_provider=spans.provider)
    with pytest.raises(InvalidRequestError) as traced:
        tracer_obj.trace("Ada was born in", "", method="bm25")
    assert str(traced.value) == str(plain.value) == "target must be a non-empty string"
    (span,) = spans.finished()
    assert span.status.status_code == StatusCode.ERROR and "target must be" in (span.status.description or "")
    (event,) = [e for e in span.events if e.name == "exception"]
    assert event.attributes["exception.type"] == "tracer.errors.InvalidRequestError"
    assert event.attributes["exception.message"] == str(traced.value)
    attrs = span.attributes or {}
    assert attrs[SA.OPENINFERENCE_SPAN_KIND] == RETRIEVER
    assert json.loads(attrs[SA.INPUT_VALUE]) == {"prompt": "Ada was born in", "target": ""}
    assert not any(k.startswith(DOCS) for k in attrs)


def test_uninstrumented_tracers_emit_nothing(tiny_index: Path, tiny_bench: Any, spans: Spans) -> None:
    from tracer import Tracer

    q = tiny_bench.queries[0]
    with Tracer.open(tiny_index) as plain, Tracer.open(tiny_index) as traced:
        telemetry.instrument(traced, tracer_provider=spans.provider)
        assert telemetry.is_instrumented(traced) and not telemetry.is_instrumented(plain)
        assert "trace" not in vars(plain) and Tracer.trace is inspect.getattr_static(plain, "trace")
        plain.trace(q.prompt, q.target, method="bm25", k=2)
        plain.trace_batch([q, q], method="bm25", k=2)
        assert spans.finished() == []
        traced.trace(q.prompt, q.target, method="bm25", k=2)
        assert len(spans.finished()) == 1
        telemetry.uninstrument(traced)
        assert "trace" not in vars(traced) and not telemetry.is_instrumented(traced)
        traced.trace(q.prompt, q.target, method="bm25", k=2)
        assert len(spans.finished()) == 1


def test_instrumenting_twice_does_not_stack(tracer_obj: Any, tiny_bench: Any, spans: Spans) -> None:
    q = tiny_bench.queries[0]
    other = Spans()
    telemetry.instrument(tracer_obj, tracer_provider=other.provider)
    telemetry.instrument(tracer_obj, tracer_provider=spans.provider)
    tracer_obj.trace(q.prompt, q.target, method="bm25", k=2)
    assert len(spans.finished()) == 1 and other.finished() == []


def test_trace_batch_emits_one_span_per_query(tracer_obj: Any, tiny_bench: Any, spans: Spans) -> None:
    queries = list(tiny_bench.queries[:3])
    telemetry.instrument(tracer_obj, tracer_provider=spans.provider, max_content_chars=0)
    results = tracer_obj.trace_batch(queries, method="bm25", k=4)
    finished = sorted(spans.finished(), key=lambda s: (s.attributes or {})[telemetry.ATTR_BATCH_INDEX])
    assert len(finished) == len(queries) == len(results)
    for i, (span, q, result) in enumerate(zip(finished, queries, results)):
        attrs = span.attributes or {}
        assert attrs[SA.OPENINFERENCE_SPAN_KIND] == RETRIEVER
        assert attrs[telemetry.ATTR_BATCH_SIZE] == 3 and attrs[telemetry.ATTR_BATCH_INDEX] == i
        assert json.loads(attrs[SA.INPUT_VALUE]) == {"prompt": q.prompt, "target": q.target}
        assert attrs[telemetry.ATTR_QUERY_ID] == q.query_id
        assert_documents_match(span, result)
        assert not any(k.endswith(DA.DOCUMENT_CONTENT) for k in attrs)  # max_content_chars=0


def test_failed_batch_marks_every_query_span(tracer_obj: Any, tiny_bench: Any, spans: Spans) -> None:
    q = tiny_bench.queries[0]
    telemetry.instrument(tracer_obj, tracer_provider=spans.provider)
    with pytest.raises(InvalidRequestError, match="target must be a non-empty string"):
        tracer_obj.trace_batch([q, Query("bad", q.prompt, " ")], method="bm25", k=2)
    finished = spans.finished()
    assert len(finished) == 2 and all(s.status.status_code == StatusCode.ERROR for s in finished)


def test_hit_text_is_reused_and_truncated(tracer_obj: Any, tiny_bench: Any, spans: Spans) -> None:
    q = tiny_bench.queries[0]
    telemetry.instrument(tracer_obj, tracer_provider=spans.provider, max_content_chars=12)
    result = tracer_obj.trace(q.prompt, q.target, method="bm25", k=3, include_text=True)
    attrs = spans.finished()[0].attributes or {}
    assert [attrs[doc_attr(i, DA.DOCUMENT_CONTENT)] for i in range(3)] == [h.text[:12] for h in result.hits]
    with pytest.raises(ValueError, match="max_content_chars"):
        telemetry.instrument(tracer_obj, max_content_chars=-1)


def test_wrappers_keep_the_signature(tracer_obj: Any, spans: Spans) -> None:
    """The service reads ``inspect.signature(tracer.trace)`` to know whether it can pass ``cancelled``."""
    before = {n: inspect.signature(getattr(tracer_obj, n)) for n in telemetry.INSTRUMENTED_METHODS}
    telemetry.instrument(tracer_obj, tracer_provider=spans.provider)
    assert {n: inspect.signature(getattr(tracer_obj, n)) for n in telemetry.INSTRUMENTED_METHODS} == before
    assert "cancelled" in before["trace"].parameters


def test_served_queries_emit_spans(tracer_obj: Any, tiny_bench: Any, spans: Spans) -> None:
    """Through the gRPC service (handler threads), each Trace and each BatchTrace query gets its span."""
    from tracer.client import TracerClient
    from tracer.service import ServiceConfig, create_server

    q = tiny_bench.queries[0]
    telemetry.instrument(tracer_obj, tracer_provider=spans.provider)
    srv, port = create_server(ServiceConfig(port=0), {"tiny": tracer_obj})
    srv.start()
    try:
        with TracerClient(f"127.0.0.1:{port}", timeout=60) as client:
            result = client.trace(q.prompt, q.target, method="bm25", k=3)
            client.trace_batch([q, q], method="bm25", k=3)
    finally:
        srv.stop(0).wait()
    finished = spans.finished()
    assert len(finished) == 3 and all(s.status.status_code == StatusCode.UNSET for s in finished)
    assert_documents_match(finished[0], result)


def test_serve_instruments_every_index_it_opens(tiny_index: Path, tiny_bench: Any, spans: Spans,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from tracer.cli import cmd_serve

    for var in cmd_serve.OTEL_ENV:
        monkeypatch.delenv(var, raising=False)
    assert cmd_serve._otel_provider(None) is None  # off by default
    opened = dict(cmd_serve._indexes([tiny_index, tiny_index], False, {}, spans.provider))
    (tracer_obj,) = opened.values()
    assert telemetry.is_instrumented(tracer_obj)
    q = tiny_bench.queries[0]
    tracer_obj.trace(q.prompt, q.target, method="bm25", k=2)
    assert len(spans.finished()) == 1
    plain = dict(cmd_serve._indexes([tiny_index], False, {}))
    assert not telemetry.is_instrumented(plain[tiny_index.name])


def test_configure_otlp_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flag's URL is used as is; without it the exporter follows the OTEL_ variables. Nothing is sent."""
    otlp = pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    from tracer.cli import cmd_serve

    made: list[Any] = []

    class Recording(otlp.OTLPSpanExporter):  # type: ignore[misc]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            made.append(self)

    monkeypatch.setattr(otlp, "OTLPSpanExporter", Recording)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    for flag, want in (("http://127.0.0.1:6006/v1/traces", "http://127.0.0.1:6006/v1/traces"),
                       (None, "http://127.0.0.1:4318/v1/traces")):
        provider = cmd_serve._otel_provider(flag)
        try:
            assert provider.resource.attributes["service.name"] == "tracer"
            assert made[-1]._endpoint == want
        finally:
            provider.shutdown()
    assert len(made) == 2


def test_verify_emits_one_evaluator_span(tracer_obj: Any, tiny_bench: Any, spans: Spans) -> None:
    q = tiny_bench.queries[0]
    ids = [d.doc_id for d in tiny_bench.documents[:2]]
    telemetry.instrument(tracer_obj, tracer_provider=spans.provider)
    v = tracer_obj.verify(q.prompt, q.target, ids, n_random=1)
    (span,) = spans.finished()
    attrs = span.attributes or {}
    assert span.name == telemetry.VERIFY_SPAN_NAME and attrs[SA.OPENINFERENCE_SPAN_KIND] == "EVALUATOR"
    assert json.loads(attrs[SA.INPUT_VALUE]) == {"prompt": q.prompt, "target": q.target, "example_ids": ids}
    out = json.loads(attrs[SA.OUTPUT_VALUE])
    assert [x["delta_logprob"] for x in out["examples"]] == [x.delta_logprob for x in v.examples]
    assert len(out["baseline"]) == 1
    with pytest.raises(Exception, match="at least one"):
        tracer_obj.verify(q.prompt, q.target, [])
    failed = spans.finished()[-1]
    assert failed.name == telemetry.VERIFY_SPAN_NAME and failed.status.status_code == StatusCode.ERROR


def test_server_spans_join_the_clients_trace(tracer_obj: Any, tiny_bench: Any, spans: Spans) -> None:
    """A client with an active span sends W3C traceparent; the server's Trace, BatchTrace and Verify spans
    are its children (same trace id, parent = the client's span id). Loopback only, in-memory exporters."""
    import grpc
    from opentelemetry.trace import format_span_id, format_trace_id

    from tracer._proto.tracer.v1 import tracer_pb2 as pb
    from tracer._proto.tracer.v1 import tracer_pb2_grpc as pb_grpc
    from tracer.client import TracerClient
    from tracer.client.client import trace_context
    from tracer.service import ServiceConfig, create_server

    q = tiny_bench.queries[0]
    client_side = Spans()  # the caller's own provider: its spans never mix with the server's
    app = client_side.provider.get_tracer("app")
    telemetry.instrument(tracer_obj, tracer_provider=spans.provider)
    srv, port = create_server(ServiceConfig(port=0), {"tiny": tracer_obj})
    srv.start()
    try:
        with TracerClient(f"127.0.0.1:{port}", timeout=60) as client:
            assert trace_context() == ()  # no active span: nothing sent
            client.trace(q.prompt, q.target, method="bm25", k=2)
            with app.start_as_current_span("generate") as parent:
                headers = dict(trace_context())
                client.trace(q.prompt, q.target, method="bm25", k=2)
                client.trace_batch([q, q], method="bm25", k=2)
                client.verify(q.prompt, q.target, [tiny_bench.documents[0].doc_id], n_random=0)
        # A traceparent written by hand (the W3C format), on the raw stub.
        trace_id, span_id = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            pb_grpc.TracerServiceStub(ch).Trace(
                pb.TraceRequest(index="tiny", prompt=q.prompt, target=q.target, top_k=2, method=pb.METHOD_BM25),
                metadata=[("traceparent", f"00-{trace_id:032x}-{span_id:016x}-01")], timeout=60)
    finally:
        srv.stop(0).wait()
    ctx = parent.get_span_context()
    assert headers["traceparent"] == (f"00-{format_trace_id(ctx.trace_id)}-"
                                    f"{format_span_id(ctx.span_id)}-{int(ctx.trace_flags):02x}")
    alone, *children, by_hand = spans.finished()
    assert alone.parent is None and alone.context.trace_id != ctx.trace_id  # no client span: a trace of its own
    assert [s.name for s in children] == [telemetry.SPAN_NAME] * 3 + [telemetry.VERIFY_SPAN_NAME]
    for s in children:
        assert s.parent is not None and s.parent.is_remote
        assert (s.parent.trace_id, s.parent.span_id) == (ctx.trace_id, ctx.span_id)
        assert s.context.trace_id == ctx.trace_id
    assert (by_hand.context.trace_id, by_hand.parent.span_id) == (trace_id, span_id)
    assert [s.name for s in client_side.finished()] == ["generate"]
    client_side.provider.shutdown()
