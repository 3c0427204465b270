"""End-to-end tests of the gRPC service: a real server on an ephemeral loopback port.

Most tests serve a :class:`FakeTracer` (the duck-typed API of ``tracer.Tracer``, raising the real
``tracer.errors`` classes) so they pin the transport, not the retrieval. Tests against a real
index run when ``tests/conftest.py`` provides the ``tiny_index`` fixture. Error tests assert both
``code()`` and ``details()`` on the raw stub, and the client's mapping back to ``TracerError``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tracer import errors
from tracer._proto.tracer.v1 import tracer_pb2 as pb
from tracer._proto.tracer.v1 import tracer_pb2_grpc as pb_grpc
from tracer.client import BatchItem, RemoteError, TracerClient, UnauthenticatedError, UnavailableError
from tracer.service import ServiceConfig, create_server
from tracer.service.servicer import TracerServicer
from tracer.types import Document, Hit, Query, TraceResult

REPO = Path(__file__).resolve().parents[1]
NODE_DIR = REPO / "tests" / "node"
CALL_TIMEOUT_S = 10.0


# ----------------------------------------------------------------------------- fake tracer
class FakeTracer:
    """Deterministic stand-in for ``tracer.Tracer``.

    Special prompts: ``"boom"`` raises a plain RuntimeError (-> INTERNAL), ``"block"`` waits for
    :attr:`release`, ``"slow"`` sleeps :attr:`slow_s` while honouring the deadline, ``"late"``
    raises DeadlineExceededError, ``"reject"`` raises InvalidRequestError inside the tracer.
    """

    METHODS = ("bm25", "embedding", "tracin", "tracin_cos", "influence", "trak", "random")
    SOURCES = ("bm25", "embedding", "gradient", "union", "full")

    def __init__(self, name: str = "tiny", n: int = 40, methods: Sequence[str] = ("bm25", "tracin", "random"),
                 thread_safe: bool = True, slow_s: float = 2.0, eval_step_s: float = 0.0,
                 marker: str | None = None) -> None:
        self.name = name
        self.fingerprint = f"{zlib.crc32(name.encode()):08x}" * 4
        self.docs = [Document(f"d{i:03d}", f"Document {i} states fact {i % 5}. " * (1 + i % 4),
                              facts=(f"f{i % 5}",)) for i in range(n)]
        self.n_documents = n
        self._methods = list(methods)
        self.thread_safe = thread_safe
        self.slow_s = slow_s
        self.eval_step_s = eval_step_s
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)
        self.deadlines: list[float | None] = []
        self.cancelled = threading.Event()
        self.closed = False
        self.marker = marker  # a file touched when a "slow" call starts (visible across processes)

    def available_methods(self) -> list[str]:
        return list(self._methods)

    def available_candidates(self) -> list[str]:
        return ["bm25", "full"]

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "fingerprint": self.fingerprint, "n_documents": self.n_documents,
                "methods": self.available_methods(), "candidates": self.available_candidates(),
                "checkpoints": [{"path": "ckpt-1", "lr": 0.001, "step": 10}]}

    def _special(self, prompt: str, deadline: float | None) -> None:
        if prompt == "boom":
            raise RuntimeError("secret internal detail")
        if prompt == "late":
            raise errors.DeadlineExceededError("deadline passed before the rerank stage")
        if prompt == "reject":
            raise errors.InvalidRequestError("prompt: the tracer rejects this prompt")
        if prompt == "block":
            self.entered.release()
            self.release.wait(CALL_TIMEOUT_S)
        if prompt == "slow":
            if self.marker:
                Path(self.marker).touch()
            end = time.monotonic() + self.slow_s
            while time.monotonic() < end:
                if deadline is not None and time.monotonic() > deadline:
                    raise errors.DeadlineExceededError("deadline passed during featurize")
                time.sleep(0.01)

    def trace(self, prompt: str, target: str, *, method: str = "tracin", candidates: str = "bm25",
              k: int = 10, num_candidates: int = 100, include_text: bool = False, deadline: float | None = None,
              query_id: str = "") -> TraceResult:
        if not prompt or not target:
            raise errors.InvalidRequestError("prompt and target must not be empty")
        if method not in self.METHODS:
            raise errors.InvalidRequestError(f"unknown method {method!r}")
        if method not in self._methods:
            raise errors.IndexNotReadyError(f"method {method!r}: its features were not built for this index")
        if k <= 0 or num_candidates <= 0:
            raise errors.InvalidRequestError("k and num_candidates must be positive")
        self.deadlines.append(deadline)
        self._special(prompt, deadline)
        key = f"{method}|{candidates}|{prompt}|{target}"
        scored = sorted(((zlib.crc32(f"{key}|{d.doc_id}".encode()) / 2**32 - 0.5, d) for d in self.docs),
                        key=lambda t: (-t[0], t[1].doc_id))[:min(num_candidates, self.n_documents)]
        hits = tuple(Hit(d.doc_id, r, s, d.text if include_text else None)
                     for r, (s, d) in enumerate(scored[:k], start=1))
        return TraceResult(Query(query_id, prompt, target), method, candidates, hits,
                           {"featurize_ms": 0.5, "total_ms": 1.0}, self.fingerprint, len(scored))

    def trace_batch(self, queries: Sequence[Query], **kwargs: Any) -> list[TraceResult]:
        return [self.trace(q.prompt, q.target, query_id=q.query_id, **kwargs) for q in queries]

    def get_documents(self, doc_ids: Sequence[str]) -> list[Document]:
        by_id = {d.doc_id: d for d in self.docs}
        for i in doc_ids:
            if i not in by_id:
                raise errors.NotFoundError(f"unknown doc_id {i!r}")
        return [by_id[i] for i in doc_ids]

    def evaluate(self, queries: Sequence[Query], *, methods: Sequence[str], candidates: str = "bm25",
                 num_candidates: int = 100, policy: str = "candidates", tail_patch: bool = False,
                 on_progress: Callable[[int, int, str], None] | None = None,
                 deadline: float | None = None) -> dict[str, Any]:
        try:
            for m in methods:
                for done in range(1, len(queries) + 1):
                    time.sleep(self.eval_step_s)
                    if on_progress is not None:
                        on_progress(done, len(queries), m)
        except errors.CancelledError:
            self.cancelled.set()
            raise
        mrr = {"mean": 0.5, "lo": 0.25, "hi": 0.75}
        return {"title": f"fake eval of {self.name}",
                "settings": {"policy": policy, "num_candidates": num_candidates, "tail_patch": tail_patch},
                "methods": {m: {"candidates": candidates, "all": {"n": len(queries), "mrr": mrr},
                                "by_group": {}} for m in methods}}

    def close(self) -> None:
        self.closed = True


# ----------------------------------------------------------------------------- fixtures
class Served:
    """A started in-process server plus a client and a raw stub on it."""

    def __init__(self, cfg: ServiceConfig, tracers: dict[str, Any] | None, token: str | None = None) -> None:
        self.srv, self.port = create_server(cfg, tracers)
        self.srv.start()
        self.address = f"127.0.0.1:{self.port}"
        self.client = TracerClient(self.address, token=token, timeout=CALL_TIMEOUT_S)
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pb_grpc.TracerServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        self.client.close()
        self.channel.close()
        self.srv.stop(0).wait(5)


@pytest.fixture
def serve_fake() -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(tracers: dict[str, Any] | None = None, token: str | None = None, **cfg: Any) -> Served:
        cfg.setdefault("port", 0)
        s = Served(ServiceConfig(**cfg), {"tiny": FakeTracer()} if tracers is None else tracers, token)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


@pytest.fixture
def served(serve_fake: Callable[..., Served]) -> Served:
    return serve_fake()


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, pb.TraceResponse):
            list(result)
    return info.value


# ----------------------------------------------------------------------------- every RPC
def test_trace_matches_in_process(served: Served) -> None:
    fake = served.srv._registry.get("tiny").tracer
    got = served.client.trace("Ada was born in", " London", method="tracin", k=5, query_id="q1")
    want = fake.trace("Ada was born in", " London", method="tracin", k=5, query_id="q1")
    assert isinstance(got, TraceResult)
    assert got.hits == want.hits
    assert (got.method, got.candidates, got.index_fingerprint, got.n_candidates) == (
        "tracin", "bm25", fake.fingerprint, 40)
    assert got.query == Query("q1", "Ada was born in", " London")
    assert got.timings_ms == want.timings_ms
    assert json.loads(got.to_json())["hits"][0]["doc_id"] == want.hits[0].doc_id
    assert "<table>" in got._repr_html_()


def test_trace_defaults_and_text(serve_fake: Callable[..., Served]) -> None:
    s = serve_fake({"a": FakeTracer("a"), "b": FakeTracer("b", methods=("bm25",))}, max_text_chars=12)
    res = s.stub.Trace(pb.TraceRequest(index="a", prompt="p", target="t", include_text=True), timeout=5)
    assert (res.method, res.candidates, len(res.hits), res.num_candidates) == (
        pb.METHOD_TRACIN, pb.CANDIDATE_SOURCE_BM25, 10, 40)
    assert all(len(h.text) <= 12 for h in res.hits) and any(h.text_truncated for h in res.hits)
    assert s.client.trace("p", "t", index="b").method == "bm25"  # no gradients -> bm25
    assert all(h.text is None for h in s.client.trace("p", "t", index="b").hits)


def test_batch_trace_isolates_bad_queries(served: Served) -> None:
    queries = [Query("a", "p1", "t1"), Query("b", "p2", ""), Query("c", "reject", "t3"), ("p4", "t4")]
    items = served.client.batch_trace(queries, k=3, timeout=CALL_TIMEOUT_S)
    assert [i.position for i in items] == [0, 1, 2, 3]
    assert [i.error is None for i in items] == [True, False, False, True]
    assert isinstance(items[1].error, errors.InvalidRequestError)
    assert str(items[1].error) == "queries[1].target: must not be empty"
    assert str(items[2].error) == "queries[2]: prompt: the tracer rejects this prompt"
    assert items[0].result is not None and items[0].result.query.query_id == "a"
    assert items[3].result is not None and len(items[3].result.hits) == 3
    good = served.client.trace_batch([Query("a", "p1", "t1")], k=3)
    assert good[0].hits == items[0].result.hits
    with pytest.raises(errors.InvalidRequestError):
        served.client.trace_batch(queries)


def test_batch_trace_chunks_keep_order(serve_fake: Callable[..., Served]) -> None:
    s = serve_fake(batch_chunk=3)
    items = s.client.batch_trace([(f"p{i}", "t" if i % 4 else "") for i in range(10)], k=1)
    assert [i.position for i in items] == list(range(10))
    assert [i.error is not None for i in items] == [i % 4 == 0 for i in range(10)]


def test_evaluate_streams_progress_and_report(served: Served) -> None:
    fake = served.srv._registry.get("tiny").tracer
    queries = [Query(f"q{i}", f"p{i}", f"t{i}", proponents=("d001",)) for i in range(3)]
    seen: list[tuple[int, int, str]] = []
    report = served.client.evaluate(queries, methods=["bm25", "tracin"],
                                    on_progress=lambda *a: seen.append(a))
    assert report == fake.evaluate(queries, methods=["bm25", "tracin"])
    assert seen == [(d, 3, m) for m in ("bm25", "tracin") for d in (1, 2, 3)]
    last = list(served.stub.Evaluate(pb.EvaluateRequest(queries=[pb.EvaluateQuery(prompt="p", target="t")]),
                                     timeout=5))[-1]
    assert [m.method for m in last.result.methods] == [pb.METHOD_BM25, pb.METHOD_TRACIN, pb.METHOD_RANDOM]
    assert last.result.methods[0].metrics["mrr"].mean == 0.5 and last.result.methods[0].num_queries == 1


def test_get_and_list_indexes_paginate(serve_fake: Callable[..., Served]) -> None:
    s = serve_fake({n: FakeTracer(n) for n in ("c", "a", "b")})
    assert s.client.get_index("b") == FakeTracer("b").info()
    page = s.stub.ListIndexes(pb.ListIndexesRequest(page_size=2), timeout=5)
    assert [i.name for i in page.indexes] == ["a", "b"] and page.next_page_token
    page2 = s.stub.ListIndexes(pb.ListIndexesRequest(page_size=2, page_token=page.next_page_token), timeout=5)
    assert [i.name for i in page2.indexes] == ["c"] and page2.next_page_token == ""
    assert page.indexes[0].num_examples == 40 and pb.METHOD_TRACIN in page.indexes[0].methods
    listed = s.client.list_indexes(page_size=1)
    assert [i["name"] for i in listed] == ["a", "b", "c"]
    assert listed[0]["methods"] == ["bm25", "tracin", "random"]


def test_batch_get_examples(served: Served) -> None:
    docs = served.client.get_examples(["d003", "d001"])
    assert docs == FakeTracer().get_documents(["d003", "d001"])
    assert served.client.get_documents(["d002"])[0].facts == ("f2",)


def test_every_rpc_is_wrapped_and_refused_while_loading() -> None:
    """All RPCs carry the error-mapping decorator; before indexes load each answers UNAVAILABLE."""
    names = [m.name for m in pb.DESCRIPTOR.services_by_name["TracerService"].methods]
    assert set(names) == {"Trace", "BatchTrace", "Evaluate", "GetIndex", "ListIndexes", "BatchGetExamples", "Verify"}
    assert all(getattr(getattr(TracerServicer, n), "is_rpc_method", False) for n in names)
    srv, port = create_server(ServiceConfig(port=0))
    srv.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.TracerServiceStub(ch)
            for name in names:
                request = getattr(pb, f"{name}Request")()
                err = rpc_error(lambda name=name, request=request: getattr(stub, name)(request, timeout=5))
                assert err.code() == grpc.StatusCode.UNAVAILABLE, name
                assert err.details() == "server is starting: indexes are still loading"
    finally:
        srv.stop(0).wait(5)


# ----------------------------------------------------------------------------- error statuses
def test_every_tracer_error_has_a_status_and_maps_back() -> None:
    from tracer.client.client import _BY_CODE
    from tracer.service.status import status_for

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.TracerError)
               and c is not errors.TracerError]
    for cls in classes:
        code = status_for(cls("x"))
        assert code != grpc.StatusCode.INTERNAL, cls
        assert issubclass(cls, _BY_CODE[code]) or code == grpc.StatusCode.FAILED_PRECONDITION, cls
    assert status_for(RuntimeError("x")) == grpc.StatusCode.INTERNAL


INVALID = grpc.StatusCode.INVALID_ARGUMENT
ERROR_CASES = [
    ("empty target", {"prompt": "p", "target": ""}, INVALID, "target: must not be empty"),
    ("empty prompt", {"prompt": "", "target": "t"}, INVALID, "prompt: must not be empty"),
    ("unknown method", {"method": 99}, INVALID,
     "method: unknown value 99; expected one of bm25, embedding, tracin, tracin_cos, influence, trak, random"),
    ("unknown candidates", {"candidates": 42}, INVALID,
     "candidates: unknown value 42; expected one of bm25, embedding, gradient, union, full, auto"),
    ("unknown index", {"index": "nope"}, grpc.StatusCode.NOT_FOUND,
     "index: unknown index 'nope' (serving tiny)"),
    ("huge index name", {"index": "x" * 100_000}, grpc.StatusCode.NOT_FOUND,
     "index: unknown index '" + "x" * 200 + "…' (serving tiny)"),
    ("method not built", {"method": pb.METHOD_TRAK}, grpc.StatusCode.FAILED_PRECONDITION,
     "method 'trak': its features were not built for this index"),
    ("top_k over cap", {"top_k": 5000}, grpc.StatusCode.RESOURCE_EXHAUSTED,
     "top_k: 5000 exceeds the server's cap of 1000"),
    ("negative top_k", {"top_k": -1}, grpc.StatusCode.INVALID_ARGUMENT,
     "top_k: must be >= 0 (0 = server default 10), got -1"),
    ("num_candidates over cap", {"num_candidates": 10**6}, grpc.StatusCode.RESOURCE_EXHAUSTED,
     "num_candidates: 1000000 exceeds the server's cap of 100000"),
    ("tracer deadline", {"prompt": "late"}, grpc.StatusCode.DEADLINE_EXCEEDED,
     "deadline passed before the rerank stage"),
]
CLIENT_CLASS = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidRequestError,
    grpc.StatusCode.NOT_FOUND: errors.NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.IndexNotReadyError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.LimitExceededError,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceededError,
}


@pytest.mark.parametrize(("fields", "code", "details"), [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_trace_error_status(served: Served, fields: dict[str, Any], code: grpc.StatusCode,
                            details: str) -> None:
    request = pb.TraceRequest(**{"index": "tiny", "prompt": "p", "target": "t", **fields})
    err = rpc_error(lambda: served.stub.Trace(request, timeout=5))
    assert (err.code(), err.details()) == (code, details)
    with pytest.raises(CLIENT_CLASS[code]) as info:
        served.client._call(served.client._stub.Trace, request, None)
    assert str(info.value) == details and info.value.code == code.name and info.value.request_id


def test_other_rpc_errors(serve_fake: Callable[..., Served]) -> None:
    s = serve_fake({"a": FakeTracer("a"), "b": FakeTracer("b")}, max_batch=2, max_examples=2)
    cases = [
        (lambda: s.stub.Trace(pb.TraceRequest(prompt="p", target="t"), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT, "index: required (serving a, b)"),
        (lambda: s.stub.BatchTrace(pb.BatchTraceRequest(index="a"), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT, "queries: at least one query is required"),
        (lambda: s.stub.BatchTrace(pb.BatchTraceRequest(index="a", queries=[pb.TraceQuery()] * 3), timeout=5),
         grpc.StatusCode.RESOURCE_EXHAUSTED, "queries: 3 queries exceed the server's cap of 2"),
        (lambda: s.stub.BatchGetExamples(pb.BatchGetExamplesRequest(index="a", example_ids=["d001", "zz"]),
                                         timeout=5), grpc.StatusCode.NOT_FOUND, "unknown doc_id 'zz'"),
        (lambda: s.stub.BatchGetExamples(pb.BatchGetExamplesRequest(index="a", example_ids=["1", "2", "3"]),
                                         timeout=5), grpc.StatusCode.RESOURCE_EXHAUSTED,
         "example_ids: 3 ids exceed the server's cap of 2"),
        (lambda: s.stub.BatchGetExamples(pb.BatchGetExamplesRequest(index="a", example_ids=["d001", ""]),
                                         timeout=5), grpc.StatusCode.INVALID_ARGUMENT,
         "example_ids[1]: must not be empty"),
        (lambda: s.stub.GetIndex(pb.GetIndexRequest(index="zz"), timeout=5), grpc.StatusCode.NOT_FOUND,
         "index: unknown index 'zz' (serving a, b)"),
        (lambda: s.stub.ListIndexes(pb.ListIndexesRequest(page_token="garbage!"), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT, "page_token: not a token this server issued"),
        (lambda: s.stub.Evaluate(pb.EvaluateRequest(index="a", queries=[pb.EvaluateQuery(prompt="p")]),
                                 timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT, "queries[0].target: must not be empty"),
        (lambda: s.stub.Evaluate(pb.EvaluateRequest(index="a", methods=[0],
                                                    queries=[pb.EvaluateQuery(prompt="p", target="t")]),
                                 timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT, "methods[0]: METHOD_UNSPECIFIED is not a method"),
    ]
    for call, code, details in cases:
        err = rpc_error(call)
        assert (err.code(), err.details()) == (code, details)


def test_unexpected_error_is_internal_with_request_id(served: Served,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tracer.service"):
        err = rpc_error(lambda: served.stub.Trace(pb.TraceRequest(prompt="boom", target="t"), timeout=5))
    rid = dict(err.trailing_metadata())["x-request-id"]
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == f"internal error (request_id={rid})" and "secret" not in err.details()
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(logged) == 1 and rid in logged[0].getMessage() and "secret internal detail" in caplog.text
    with pytest.raises(RemoteError, match="internal error"):
        served.client.trace("boom", "t")
    assert served.client.trace("fine", "t").hits  # the server survived


def test_message_size_cap(serve_fake: Callable[..., Served]) -> None:
    s = serve_fake(max_message_bytes=1024)
    err = rpc_error(lambda: s.stub.Trace(pb.TraceRequest(prompt="p" * 4096, target="t"), timeout=5))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in err.details()
    with pytest.raises(errors.LimitExceededError):
        s.client.trace("p" * 4096, "t")


def test_one_structured_log_line_per_request(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tracer.service"):
        served.client.trace("p", "t")
        with pytest.raises(errors.NotFoundError):
            served.client.trace("p", "t", index="zz")
    records = [r.rpc for r in caplog.records if hasattr(r, "rpc")]
    assert [(r["rpc"], r["index"], r["status"]) for r in records] == [("Trace", "", "OK"),
                                                                      ("Trace", "zz", "NOT_FOUND")]
    assert all(r["latency_ms"] >= 0 and r["request_id"] for r in records)


# ----------------------------------------------------------------------------- deadlines, cancellation, caps
def test_deadline_reaches_the_tracer(serve_fake: Callable[..., Served]) -> None:
    fake = FakeTracer(slow_s=5.0)
    s = serve_fake({"tiny": fake})
    t0 = time.monotonic()
    with pytest.raises(errors.DeadlineExceededError):
        s.client.trace("slow", "t", timeout=0.3)
    assert time.monotonic() - t0 < 2.0
    deadline = fake.deadlines[-1]
    assert deadline is not None and t0 < deadline < t0 + 0.5
    s.client.trace("p", "t", timeout=20.0)
    assert fake.deadlines[-1] is not None and fake.deadlines[-1] > time.monotonic() + 15
    err = rpc_error(lambda: s.stub.Trace(pb.TraceRequest(prompt="slow", target="t"), timeout=0.3))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_cancelled_evaluate_stops_the_work(serve_fake: Callable[..., Served]) -> None:
    fake = FakeTracer(eval_step_s=0.05)
    s = serve_fake({"tiny": fake})
    request = pb.EvaluateRequest(queries=[pb.EvaluateQuery(prompt=f"p{i}", target="t") for i in range(200)],
                                 methods=[pb.METHOD_BM25])
    stream = s.stub.Evaluate(request, timeout=30)
    assert next(stream).progress.done_queries == 1
    stream.cancel()
    assert fake.cancelled.wait(5)
    with pytest.raises(grpc.RpcError) as info:
        next(stream)
    assert info.value.code() == grpc.StatusCode.CANCELLED


def test_concurrency_cap(serve_fake: Callable[..., Served]) -> None:
    fake = FakeTracer(thread_safe=True)
    s = serve_fake({"tiny": fake}, max_concurrent_rpcs=2, max_workers=4)
    busy = [s.stub.Trace.future(pb.TraceRequest(prompt="block", target="t"), timeout=CALL_TIMEOUT_S)
            for _ in range(2)]
    try:
        assert fake.entered.acquire(timeout=5) and fake.entered.acquire(timeout=5)
        err = rpc_error(lambda: s.stub.Trace(pb.TraceRequest(prompt="p", target="t"), timeout=5))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.details() == "Concurrent RPC limit exceeded!"
    finally:
        fake.release.set()
    assert all(len(f.result().hits) == 10 for f in busy)
    assert s.client.trace("p", "t").hits


def test_unsafe_tracer_calls_are_serialized(serve_fake: Callable[..., Served]) -> None:
    fake = FakeTracer(thread_safe=False)
    s = serve_fake({"tiny": fake})
    first = s.stub.Trace.future(pb.TraceRequest(prompt="block", target="t"), timeout=CALL_TIMEOUT_S)
    assert fake.entered.acquire(timeout=5)
    with pytest.raises(errors.DeadlineExceededError):  # waits for the lock, never past its deadline
        s.client.trace("p", "t", timeout=0.3)
    fake.release.set()
    assert first.result().hits


# ----------------------------------------------------------------------------- auth, TLS, health, reflection
def test_auth_token(serve_fake: Callable[..., Served]) -> None:
    s = serve_fake(auth_token="s3cret")
    err = rpc_error(lambda: s.stub.Trace(pb.TraceRequest(prompt="p", target="t"), timeout=5))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED,
                                           "missing 'authorization: Bearer <token>' metadata")
    batch = pb.BatchTraceRequest(queries=[pb.TraceQuery(prompt="p", target="t")])
    err = rpc_error(lambda: s.stub.BatchTrace(batch, timeout=5, metadata=(("authorization", "Bearer nope"),)))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED,
                                           "invalid token in 'authorization' metadata")
    with pytest.raises(UnauthenticatedError):
        s.client.trace("p", "t")
    with TracerClient(s.address, token="s3cret") as good:
        assert good.trace("p", "t").hits and good.health() == "SERVING"
    ok = s.stub.Trace(pb.TraceRequest(prompt="p", target="t"), timeout=5, metadata=(("authorization", "bearer s3cret"),))
    assert ok.hits  # the scheme is case-insensitive (RFC 6750)
    assert s.client.health() == "SERVING"  # probes need no token


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl binary")
def test_tls(tmp_path: Path, serve_fake: Callable[..., Served]) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    cfg = ServiceConfig(port=0, tls_cert=str(cert), tls_key=str(key))
    srv, port = create_server(cfg, {"tiny": FakeTracer()})
    srv.start()
    try:
        with TracerClient(f"localhost:{port}", tls_ca=cert) as client:
            assert client.trace("p", "t").hits
        with TracerClient(f"localhost:{port}", timeout=2) as plain, pytest.raises(UnavailableError):
            plain.trace("p", "t")
    finally:
        srv.stop(0).wait(5)


def test_health_transitions() -> None:
    srv, port = create_server(ServiceConfig(port=0, grace_s=1.0))
    srv.start()
    try:
        with TracerClient(f"127.0.0.1:{port}", timeout=5) as client:
            assert client.health() == client.health("tracer.v1.TracerService") == "NOT_SERVING"
            with pytest.raises(UnavailableError, match="still loading"):
                client.trace("p", "t")
            health_stub = health_pb2_grpc.HealthStub(client._channel)
            watch = health_stub.Watch(health_pb2.HealthCheckRequest(), timeout=10)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            srv.add_index("tiny", FakeTracer())
            srv.set_serving()
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            assert client.health() == "SERVING" and client.trace("p", "t").hits
            stopped = srv.stop()
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert stopped.wait(5)
    finally:
        srv.stop(0).wait(5)


def test_reflection_lists_services(served: Served) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    db = ProtoReflectionDescriptorDatabase(served.channel)
    services = set(db.get_services())
    assert {"tracer.v1.TracerService", "grpc.health.v1.Health"} <= services
    assert db.FindFileContainingSymbol("tracer.v1.TracerService").name == "tracer/v1/tracer.proto"


def test_service_config_validation() -> None:
    with pytest.raises(ValueError, match="max_top_k"):
        ServiceConfig(max_top_k=0)
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        ServiceConfig(tls_cert="c.pem")
    with pytest.raises(ValueError, match="port"):
        ServiceConfig(port=70000)
    assert "s3cret" not in repr(ServiceConfig(auth_token="s3cret"))


def test_client_rejects_unknown_method_locally(served: Served) -> None:
    with pytest.raises(errors.InvalidRequestError, match="unknown Method 'magic'; expected one of bm25, embedding, tracin, tracin_cos, influence, trak, random$"):
        served.client.trace("p", "t", method="magic")
    assert isinstance(BatchItem(0), BatchItem)


# ----------------------------------------------------------------------------- CLI
def test_cli_query_against_server(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    from tracer.cli.main import main

    assert main(["query", "--server", served.address, "--prompt", "Ada was born in", "--target", " London",
                 "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    want = served.client.trace("Ada was born in", " London", k=3)
    assert [h["doc_id"] for h in out["hits"]] == [h.doc_id for h in want.hits]
    assert main(["query", "--server", served.address, "--prompt", "p", "--target", "t", "-k", "2",
                 "--include-text"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split() == ["rank", "score", "doc_id", "text"] and len(table) == 4
    assert main(["query", "--server", served.address, "--prompt", "p", "--target", "", "-k", "2"]) == 2
    assert "target: must not be empty" in capsys.readouterr().err


SERVE_SCRIPT = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("fakes", sys.argv[1])
fakes = importlib.util.module_from_spec(spec); spec.loader.exec_module(fakes)
import tracer.cli.cmd_serve as cmd_serve
def open_fake(path, verify):
    return fakes.FakeTracer(path.name, slow_s=1.5, marker=str(path / "in"))
cmd_serve._open_index = open_fake
from tracer.cli.main import main
raise SystemExit(main(["serve", *sys.argv[2:]]))
"""


def _start_serve(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, **(env or {})})
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the server announces itself (or exits)
    if not line.startswith("tracer serving on "):
        proc.kill()
        raise AssertionError(f"no banner: {line!r}; stderr: {proc.communicate(timeout=10)[1]}")
    return proc, line.split()[-1]


def test_serve_subprocess_sigterm_drains(tmp_path: Path) -> None:
    (tmp_path / "idx").mkdir()
    script = tmp_path / "serve.py"
    script.write_text(SERVE_SCRIPT)
    proc, address = _start_serve([sys.executable, str(script), __file__, "--index", str(tmp_path / "idx"),
                                  "--port", "0", "--grace", "5"], env={"TRACER_MAX_CONCURRENT": "4"})
    try:
        with TracerClient(address, timeout=CALL_TIMEOUT_S) as client:
            assert client.health() == "SERVING" and client.get_index()["name"] == "idx"
            request = pb.TraceRequest(prompt="slow", target="t")
            in_flight = client._stub.Trace.future(request, timeout=CALL_TIMEOUT_S)
            for _ in range(200):  # wait until the call is inside the tracer
                if (tmp_path / "idx" / "in").exists():
                    break
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert len(in_flight.result().hits) == 10  # drained, not dropped
            assert proc.wait(timeout=15) == 0
            with pytest.raises(UnavailableError):
                client.trace("p", "t", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read() if proc.stderr else ""
    lines = [json.loads(x.split("rpc ", 1)[1]) for x in stderr.splitlines() if " rpc {" in x]
    assert {"rpc": "Trace", "index": "", "status": "OK"}.items() <= lines[-1].items()
    assert "draining" in stderr


# ----------------------------------------------------------------------------- codegen, lint, interop
def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    from importlib.metadata import version

    from tracer._proto.generate import DEFAULT_OUT, generate
    from tracer._proto.tracer.v1.tracer_pb2_grpc import GRPC_GENERATED_VERSION

    if version("grpcio-tools") != GRPC_GENERATED_VERSION:
        pytest.skip(f"stubs were generated by grpcio-tools {GRPC_GENERATED_VERSION}, "
                    f"{version('grpcio-tools')} is installed")

    for path in generate(tmp_path):
        rel = path.relative_to(tmp_path)
        assert (DEFAULT_OUT / rel).read_text() == path.read_text(), (
            f"tracer/_proto/{rel} is stale: run `python -m tracer._proto.generate`")


@pytest.mark.skipif(shutil.which("npx") is None, reason="needs node/npx for @bufbuild/buf")
def test_buf_lint() -> None:
    proc = subprocess.run(["npx", "--yes", "@bufbuild/buf", "lint"], cwd=REPO / "proto", capture_output=True,
                          text=True, timeout=300, check=False)
    if proc.returncode != 0 and "ENOTFOUND" in proc.stderr + proc.stdout:
        pytest.skip("npm registry unreachable")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def node_client() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("needs node and npm")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        proc = subprocess.run(["npm", "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund"],
                              capture_output=True, text=True, timeout=300, check=False)
        if proc.returncode != 0:
            pytest.skip(f"npm install failed: {proc.stderr[-500:]}")
    return NODE_DIR / "client.js"


def test_node_client_agrees(node_client: Path, served: Served) -> None:
    proc = subprocess.run(["node", str(node_client), served.address, "Ada was born in", " London", "5"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    want = served.client.trace("Ada was born in", " London", k=5)
    assert out["health"] == "SERVING"
    assert out["trace"]["method"] == "METHOD_TRACIN"
    assert out["trace"]["index_fingerprint"] == want.index_fingerprint
    assert [(h["example_id"], h["rank"], h["score"]) for h in out["trace"]["hits"]] == [
        (h.doc_id, h.rank, h.score) for h in want.hits]


# ----------------------------------------------------------------------------- against a real index
@pytest.fixture(scope="module")
def real_served(tiny_index: Path) -> Iterator[tuple[Served, Any]]:
    from tracer.tracer import Tracer

    s = Served(ServiceConfig(port=0), {tiny_index.name: Tracer.open(tiny_index)})
    local = Tracer.open(tiny_index)
    yield s, local
    s.close()
    local.close()


def test_real_index_every_method_matches_library(real_served: tuple[Served, Any], tiny_bench: Any) -> None:
    s, local = real_served
    q = tiny_bench.queries[0]
    from tracer.service.convert import redact_paths

    assert s.client.get_index() == json.loads(json.dumps(redact_paths(local.info()), default=str))
    for method in local.available_methods():
        got = s.client.trace(q.prompt, q.target, method=method, k=10, num_candidates=50, include_text=True)
        want = local.trace(q.prompt, q.target, method=method, k=10, num_candidates=50, include_text=True)
        assert [h.doc_id for h in got.hits] == [h.doc_id for h in want.hits], method
        assert [h.score for h in got.hits] == pytest.approx([h.score for h in want.hits], rel=1e-5), method
        assert [h.text for h in got.hits] == [h.text for h in want.hits]
        assert (got.method, got.candidates, got.index_fingerprint) == (method, "bm25", local.fingerprint)
    default = s.client.trace(q.prompt, q.target)
    assert default.method == ("tracin" if "tracin" in local.available_methods() else "bm25")


def test_real_index_batch_examples_and_errors(real_served: tuple[Served, Any], tiny_bench: Any) -> None:
    s, local = real_served
    qs = list(tiny_bench.queries[:3])
    items = s.client.batch_trace([*qs, Query("bad", "p", "")], method="bm25", k=5)
    assert [i.error is None for i in items] == [True, True, True, False]
    assert [h.doc_id for h in items[1].result.hits] == [  # type: ignore[union-attr]
        h.doc_id for h in local.trace(qs[1].prompt, qs[1].target, method="bm25", k=5).hits]
    ids = [d.doc_id for d in tiny_bench.documents[:3]]
    assert s.client.get_examples(ids) == local.get_documents(ids)
    err = rpc_error(lambda: s.stub.BatchGetExamples(pb.BatchGetExamplesRequest(example_ids=["no-such-doc"]),
                                                    timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "no-such-doc" in err.details()
    err = rpc_error(lambda: s.stub.Trace(pb.TraceRequest(prompt="p", target="t", candidates=99), timeout=5))
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                          "candidates: unknown value 99; expected one of bm25, embedding, gradient, union, full, auto")


def test_real_index_verify_and_stability(real_served: tuple[Served, Any], tiny_bench: Any,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Verify over gRPC equals the library's (same deltas, same seeded baseline); a request beyond the
    cap is RESOURCE_EXHAUSTED; per-hit stability survives the wire."""
    from tracer.cli.main import main

    s, local = real_served
    q = tiny_bench.queries[0]
    hits = local.trace(q.prompt, q.target, method="tracin", k=4).hits
    ids = [h.doc_id for h in hits]
    got = s.client.verify(q.prompt, q.target, ids, seed=3)
    want = local.verify(q.prompt, q.target, ids, seed=3)
    assert [(x.doc_id, x.baseline) for x in got.examples + got.baseline] == [
        (x.doc_id, x.baseline) for x in want.examples + want.baseline]
    assert [x.delta_logprob for x in got.examples + got.baseline] == pytest.approx(
        [x.delta_logprob for x in want.examples + want.baseline], rel=1e-9)
    too_many = [d.doc_id for d in tiny_bench.documents[:30]]
    err = rpc_error(lambda: s.stub.Verify(pb.VerifyRequest(prompt=q.prompt, target=q.target,
                                                           example_ids=too_many), timeout=30))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "cap of 32" in err.details()
    err = rpc_error(lambda: s.stub.Verify(pb.VerifyRequest(prompt="", target=q.target, example_ids=ids),
                                          timeout=30))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    remote = s.client.trace(q.prompt, q.target, method="tracin", k=4)
    assert [(h.stable, h.topk_fraction) for h in remote.hits] == [(h.stable, h.topk_fraction) for h in hits]
    assert [h.checkpoint_scores for h in remote.hits] == [pytest.approx(h.checkpoint_scores) for h in hits]
    assert main(["verify", "--server", s.address, "--prompt", q.prompt, "--target", q.target,
                 "--example", ids[0], "--random", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["examples"][0]["delta_logprob"] == pytest.approx(want.examples[0].delta_logprob, rel=1e-9)
    assert len(out["baseline"]) == 2


def test_real_index_evaluate(real_served: tuple[Served, Any], tiny_bench: Any) -> None:
    s, local = real_served
    qs = [q for q in tiny_bench.queries if q.proponents][:4]
    seen: list[tuple[int, int, str]] = []
    report = s.client.evaluate(qs, methods=["bm25"], on_progress=lambda *a: seen.append(a))
    assert set(report["methods"]) == {"bm25"} and seen and seen[-1][:2] == (len(qs), len(qs))
    want = local.evaluate(qs, methods=["bm25"])
    assert report["methods"]["bm25"]["all"] == json.loads(json.dumps(want["methods"]["bm25"]["all"]))


def test_real_index_cli_query_in_process(tiny_index: Path, tiny_bench: Any,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from tracer.cli.main import main

    q = tiny_bench.queries[0]
    assert main(["query", "--index-dir", str(tiny_index), "--prompt", q.prompt, "--target", q.target,
                 "--method", "bm25", "-k", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "bm25" and len(out["hits"]) == 4


def test_real_tracer_serve_subprocess(tiny_index: Path, tiny_bench: Any, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    proc, address = _start_serve([sys.executable, "-m", "tracer", "serve", "--index", str(tiny_index),
                                  "--port", "0", "--auth-token-file", str(token), "--grace", "5"])
    try:
        q = tiny_bench.queries[0]
        with TracerClient(address, token="t0ken", timeout=60) as client:
            assert client.health() == "SERVING"
            assert [i["name"] for i in client.list_indexes()] == [tiny_index.name]
            res = client.trace(q.prompt, q.target, method="bm25", k=3)
            assert len(res.hits) == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_drain_reports_not_serving_finishes_in_flight_and_refuses_new_calls() -> None:
    """D4: while draining, health answers NOT_SERVING, a call in flight completes, a new call gets UNAVAILABLE."""
    fake = FakeTracer(thread_safe=True)
    srv, port = create_server(ServiceConfig(port=0, grace_s=10.0), {"tiny": fake})
    srv.start()
    try:
        with TracerClient(f"127.0.0.1:{port}", timeout=10) as client:
            stub = pb_grpc.TracerServiceStub(client._channel)
            busy = stub.Trace.future(pb.TraceRequest(prompt="block", target="t"), timeout=CALL_TIMEOUT_S)
            assert fake.entered.acquire(timeout=5)
            t0 = time.monotonic()
            stopped = srv.stop()
            time.sleep(0.2)
            assert client.health() == "NOT_SERVING"  # probes are still answered during the drain
            with pytest.raises(UnavailableError, match="draining"):
                client.trace("p", "t")
            fake.release.set()
            assert len(busy.result().hits) == 10  # drained, not dropped
            assert stopped.wait(5) and time.monotonic() - t0 < 5  # stops as soon as nothing is in flight
    finally:
        fake.release.set()
        srv.stop(0).wait(5)


def test_serve_exits_within_grace_plus_margin_even_with_a_stuck_handler() -> None:
    """D3/D4: a handler that never returns cannot hold ``serve`` past grace + STOP_MARGIN_S."""
    import os
    import signal as _signal

    from tracer.service.server import STOP_MARGIN_S, UNCLEAN_STOP, serve

    fake = FakeTracer(thread_safe=True)
    started: dict[str, float] = {}

    address_seen = []

    def on_ready(address: str) -> None:
        address_seen.append(address)

        def fire() -> None:
            channel = grpc.insecure_channel(address)
            call = pb_grpc.TracerServiceStub(channel).Trace.future(pb.TraceRequest(prompt="block", target="t"),
                                                                    timeout=60)
            started["entered"] = fake.entered.acquire(timeout=30)
            started["call"] = call
            started["t"] = time.monotonic()
            os.kill(os.getpid(), _signal.SIGTERM)  # always: the test must never wait on a signal that never comes

        threading.Thread(target=fire, daemon=True).start()

    try:
        code = serve(ServiceConfig(port=0, grace_s=1.0), [("tiny", fake)], on_ready=on_ready)
        call = started["call"]
        assert started["entered"], (call.done() and call.exception(), address_seen)
        assert code in (0, UNCLEAN_STOP)
        assert time.monotonic() - started["t"] < 1.0 + STOP_MARGIN_S + 1.5
    finally:
        fake.release.set()
