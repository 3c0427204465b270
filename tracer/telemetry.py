"""OpenInference spans for traced queries: the optional ``tracer[otel]`` extra.

Owns the mapping of one traced query onto one OpenTelemetry span of kind RETRIEVER, as the
OpenInference semantic conventions define it, so LM debugging tools (Arize Phoenix, any OTLP
backend) show a trace next to the generations it explains:

- ``openinference.span.kind = "RETRIEVER"``;
- ``input.value``: ``{"prompt": ..., "target": ...}`` (``input.mime_type`` JSON), and ``metadata``:
  the method, candidate source, ``k``, ``num_candidates``, index name and fingerprint;
- ``retrieval.documents.{i}.document.id`` / ``.score`` / ``.content`` (truncated to
  ``max_content_chars``) / ``.metadata`` (rank, proponent), in rank order;
- ``tracer.*`` attributes OpenInference has no key for (:data:`ATTR_METHOD`, per-stage timings, ...).

Off by default: nothing here runs unless :func:`instrument` is called on a tracer object. It
shadows that *instance's* ``trace`` and ``trace_batch`` (the class is untouched), so other
objects emit nothing and pay nothing. A failed query records the exception on its span, sets
status ERROR and re-raises the same exception. :func:`configure_otlp` builds a provider that
exports over OTLP/HTTP; ``tracer serve --otel-endpoint URL`` uses it for every index it opens.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

try:
    from openinference.semconv.trace import (
        DocumentAttributes,
        OpenInferenceMimeTypeValues,
        OpenInferenceSpanKindValues,
        SpanAttributes,
    )
    from opentelemetry import trace as otel_trace
    from opentelemetry.trace import Span, Status, StatusCode, TracerProvider
except ImportError as exc:  # the extra is optional: say how to get it
    raise ImportError(f"tracer.telemetry needs the otel extra: pip install 'tracer[otel]' ({exc})") from exc

from tracer import __version__
from tracer.types import Hit, Query, TraceResult

logger = logging.getLogger(__name__)

T = TypeVar("T")

INSTRUMENTATION_NAME = "tracer"  # the OpenTelemetry instrumentation scope
SPAN_NAME = "tracer.trace"  # one span per traced query, from trace() or trace_batch()
DEFAULT_MAX_CONTENT_CHARS = 500  # characters of document text per span document
INSTRUMENTED_METHODS = ("trace", "trace_batch", "verify")
VERIFY_SPAN_NAME = "tracer.verify"  # one EVALUATOR span per verify() call (the causal check)

# --- tracer-specific span attributes (OpenInference has no key for these) ---
ATTR_INDEX_NAME = "tracer.index.name"
ATTR_INDEX_FINGERPRINT = "tracer.index.fingerprint"
ATTR_METHOD = "tracer.method"
ATTR_CANDIDATES = "tracer.candidates"  # candidate source: bm25, gradient, full, ...
ATTR_K = "tracer.k"
ATTR_NUM_CANDIDATES = "tracer.num_candidates"  # requested per source
ATTR_N_CANDIDATES = "tracer.n_candidates"  # actually reranked
ATTR_QUERY_ID = "tracer.query_id"
ATTR_BATCH_SIZE = "tracer.batch.size"  # only on spans from trace_batch
ATTR_BATCH_INDEX = "tracer.batch.index"
ATTR_TIMING_PREFIX = "tracer.timing."  # + a TraceResult.timings_ms key, e.g. "tracer.timing.total_ms"
# Hit fields copied into each document's metadata when known (besides its rank).
HIT_METADATA = ("proponent", "stable", "topk_fraction", "interval", "checkpoint_scores")

_RESTORE = "_tracer_otel_restore"  # on each wrapper: what uninstrument() puts back
_ABSENT = object()  # the instance had no attribute of that name (the class method shows through)


def instrument(tracer_obj: T, *, tracer_provider: TracerProvider | None = None,
               max_content_chars: int = DEFAULT_MAX_CONTENT_CHARS) -> T:
    """Emit one OpenInference RETRIEVER span per query traced through ``tracer_obj``.

    Instance attributes shadow ``tracer_obj.trace`` and ``tracer_obj.trace_batch``; their
    signatures stay visible to ``inspect``. Instrumenting again replaces the earlier wrappers.

    Args:
        tracer_obj: A :class:`~tracer.tracer.Tracer` (or an object with the same ``trace`` /
            ``trace_batch`` returning :class:`~tracer.types.TraceResult`).
        tracer_provider: Where spans go; ``None`` uses the global OpenTelemetry provider (a no-op
            until the application configures one).
        max_content_chars: Document text per span document; 0 omits ``document.content``.
            Hits without text (``include_text=False``) are fetched with ``get_documents``.

    Returns:
        ``tracer_obj`` itself.

    Raises:
        ValueError: ``max_content_chars`` is negative.
    """
    if not isinstance(max_content_chars, int) or max_content_chars < 0:
        raise ValueError(f"max_content_chars must be an integer >= 0, got {max_content_chars!r}")
    uninstrument(tracer_obj)
    otel = otel_trace.get_tracer(INSTRUMENTATION_NAME, __version__, tracer_provider=tracer_provider)
    writer = _SpanWriter(tracer_obj, otel, max_content_chars)
    for name, wrap in (("trace", _wrap_trace), ("trace_batch", _wrap_trace_batch), ("verify", _wrap_verify)):
        if not callable(getattr(tracer_obj, name, None)):
            continue
        previous = vars(tracer_obj).get(name, _ABSENT)
        wrapper = wrap(getattr(tracer_obj, name), writer)
        setattr(wrapper, _RESTORE, previous)
        setattr(tracer_obj, name, wrapper)
    return tracer_obj


def uninstrument(tracer_obj: Any) -> None:
    """Undo :func:`instrument` on ``tracer_obj`` (a no-op when it is not instrumented)."""
    for name in INSTRUMENTED_METHODS:
        previous = getattr(vars(tracer_obj).get(name), _RESTORE, None)
        if previous is _ABSENT:
            delattr(tracer_obj, name)
        elif previous is not None:
            setattr(tracer_obj, name, previous)


def is_instrumented(tracer_obj: Any) -> bool:
    """Whether :func:`instrument` wrapped ``tracer_obj``'s query methods."""
    return any(hasattr(vars(tracer_obj).get(n), _RESTORE) for n in INSTRUMENTED_METHODS)


def configure_otlp(endpoint: str | None = None, *, service_name: str = "tracer") -> TracerProvider:
    """A provider that batches spans to an OTLP/HTTP endpoint, for :func:`instrument`.

    It is not made the global provider; pass it to :func:`instrument` and call its
    ``shutdown()`` at exit to flush what is queued.

    Args:
        endpoint: The traces URL, e.g. ``http://localhost:6006/v1/traces`` (Arize Phoenix). ``None``
            follows the OpenTelemetry environment variables (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
            as is, or ``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/traces``).
        service_name: The ``service.name`` resource attribute backends group spans by.

    Returns:
        An ``opentelemetry.sdk.trace.TracerProvider`` with a ``BatchSpanProcessor``.
    """
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = SdkTracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


# ----------------------------------------------------------------------------- wrappers
def _binder(fn: Callable[..., Any]) -> Callable[[tuple[Any, ...], dict[str, Any]], dict[str, Any]]:
    """``(args, kwargs) -> {parameter: value}`` with defaults applied, for reading a call's options."""
    try:
        sig: inspect.Signature | None = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None

    def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if sig is None:
            return dict(kwargs)
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError:  # the call itself raises it, inside the span
            return dict(kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    return bind


def _wrap_trace(original: Callable[..., TraceResult], writer: _SpanWriter) -> Callable[..., TraceResult]:
    bind = _binder(original)

    @functools.wraps(original)
    def trace(*args: Any, **kwargs: Any) -> TraceResult:
        call = bind(args, kwargs)
        prompt = call.get("prompt")
        q = prompt if isinstance(prompt, Query) else _Request(prompt, call.get("target"),
                                                                     call.get("query_id"))
        span = writer.tracer.start_span(SPAN_NAME, attributes=writer.input_attributes(q, call))
        # Current while the query runs (nested spans become children); errors are recorded below.
        with otel_trace.use_span(span, end_on_exit=True, record_exception=False,
                                 set_status_on_exception=False):
            try:
                result = original(*args, **kwargs)
            except Exception as exc:
                _fail(span, exc)
                raise
            writer.record(span, result)
            return result

    return trace


def _wrap_trace_batch(original: Callable[..., list[TraceResult]],
                      writer: _SpanWriter) -> Callable[..., list[TraceResult]]:
    bind = _binder(original)

    @functools.wraps(original)
    def trace_batch(*args: Any, **kwargs: Any) -> list[TraceResult]:
        call = bind(args, kwargs)
        queries = call.get("queries")
        if not isinstance(queries, Sequence):
            return original(*args, **kwargs)
        batch = {ATTR_BATCH_SIZE: len(queries)}
        spans = [writer.tracer.start_span(SPAN_NAME, attributes={**writer.input_attributes(q, call), **batch,
                                                                   ATTR_BATCH_INDEX: i})
                 for i, q in enumerate(queries)]
        try:
            results = original(*args, **kwargs)
            for span, result in zip(spans, results):
                writer.record(span, result)
            return results
        except Exception as exc:
            for span in spans:
                _fail(span, exc)
            raise
        finally:
            for span in spans:
                span.end()

    return trace_batch


def _wrap_verify(original: Callable[..., Any], writer: _SpanWriter) -> Callable[..., Any]:
    """An EVALUATOR span per :meth:`tracer.Tracer.verify`: the fact and example ids in, each example's
    change in log-probability (and the random baseline's) out."""
    bind = _binder(original)

    @functools.wraps(original)
    def verify(*args: Any, **kwargs: Any) -> Any:
        call = bind(args, kwargs)
        attrs = {
            SpanAttributes.OPENINFERENCE_SPAN_KIND: OpenInferenceSpanKindValues.EVALUATOR.value,
            SpanAttributes.INPUT_VALUE: _json({"prompt": call.get("prompt"), "target": call.get("target"),
                                               "example_ids": list(call.get("example_ids") or [])}),
            SpanAttributes.INPUT_MIME_TYPE: OpenInferenceMimeTypeValues.JSON.value,
            ATTR_INDEX_NAME: _safe_str(getattr(writer.tracer_obj, "name", "")),
            ATTR_INDEX_FINGERPRINT: _safe_str(getattr(writer.tracer_obj, "fingerprint", "")),
        }
        span = writer.tracer.start_span(VERIFY_SPAN_NAME, attributes=attrs)
        with otel_trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
            try:
                v = original(*args, **kwargs)
            except Exception as exc:
                _fail(span, exc)
                raise
            try:
                d = v.to_dict()
                span.set_attributes({
                    SpanAttributes.OUTPUT_VALUE: _json({k: d[k] for k in ("examples", "baseline", "baseline_mean")}),
                    SpanAttributes.OUTPUT_MIME_TYPE: OpenInferenceMimeTypeValues.JSON.value,
                    **{ATTR_TIMING_PREFIX + k: float(ms) for k, ms in v.timings_ms.items()}})
            except Exception:  # telemetry never fails a call that succeeded
                logger.warning("could not record a verification on its span", exc_info=True)
            return v

    return verify


class _Request:
    """The query fields of a ``trace(prompt, target, query_id=...)`` call, unvalidated."""

    def __init__(self, prompt: Any, target: Any, query_id: Any) -> None:
        self.prompt, self.target, self.query_id = prompt, target, query_id


def _fail(span: Span, exc: Exception) -> None:
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


# ----------------------------------------------------------------------------- attributes
class _SpanWriter:
    """Turns one query's request and :class:`TraceResult` into span attributes."""

    def __init__(self, tracer_obj: Any, tracer: otel_trace.Tracer, max_content_chars: int) -> None:
        self.tracer_obj = tracer_obj
        self.tracer = tracer
        self.max_content_chars = max_content_chars

    def input_attributes(self, q: Any, call: Mapping[str, Any]) -> dict[str, Any]:
        """Attributes known before the query runs (so a failed query's span still has them)."""
        index = {"index": _safe_str(getattr(self.tracer_obj, "name", "")),
                 "index_fingerprint": _safe_str(getattr(self.tracer_obj, "fingerprint", ""))}
        options = {key: call.get(key) for key in ("method", "candidates", "k", "num_candidates")}
        attrs: dict[str, Any] = {
            SpanAttributes.OPENINFERENCE_SPAN_KIND: OpenInferenceSpanKindValues.RETRIEVER.value,
            SpanAttributes.INPUT_VALUE: _json({"prompt": getattr(q, "prompt", None),
                                               "target": getattr(q, "target", None)}),
            SpanAttributes.INPUT_MIME_TYPE: OpenInferenceMimeTypeValues.JSON.value,
            SpanAttributes.METADATA: _json({**options, **index, "query_id": getattr(q, "query_id", "")}),
            ATTR_INDEX_NAME: index["index"], ATTR_INDEX_FINGERPRINT: index["index_fingerprint"],
            ATTR_QUERY_ID: _safe_str(getattr(q, "query_id", "")),
            ATTR_METHOD: options["method"], ATTR_CANDIDATES: options["candidates"],
            ATTR_K: options["k"], ATTR_NUM_CANDIDATES: options["num_candidates"],
        }
        return {k: v for k, v in attrs.items() if isinstance(v, (str, bool, int, float))}

    def record(self, span: Span, result: TraceResult) -> None:
        """Add the result's documents, timings and what the tracer actually ran.

        Telemetry never fails a query that succeeded: an error here is logged and dropped.
        """
        try:
            span.set_attributes(self.result_attributes(result))
        except Exception:
            logger.warning("could not record trace result on span", exc_info=True)

    def result_attributes(self, result: TraceResult) -> dict[str, Any]:
        attrs: dict[str, Any] = {ATTR_METHOD: result.method, ATTR_CANDIDATES: result.candidates,
                                 ATTR_N_CANDIDATES: int(result.n_candidates)}
        if result.index_fingerprint:
            attrs[ATTR_INDEX_FINGERPRINT] = result.index_fingerprint
        for stage, ms in result.timings_ms.items():
            attrs[ATTR_TIMING_PREFIX + stage] = float(ms)
        contents = self.contents(result.hits)
        for i, hit in enumerate(result.hits):
            prefix = f"{SpanAttributes.RETRIEVAL_DOCUMENTS}.{i}."
            attrs[prefix + DocumentAttributes.DOCUMENT_ID] = hit.doc_id
            attrs[prefix + DocumentAttributes.DOCUMENT_SCORE] = float(hit.score)
            if hit.doc_id in contents:
                attrs[prefix + DocumentAttributes.DOCUMENT_CONTENT] = contents[hit.doc_id]
            attrs[prefix + DocumentAttributes.DOCUMENT_METADATA] = _json(_hit_metadata(hit))
        return attrs

    def contents(self, hits: Sequence[Hit]) -> dict[str, str]:
        """``doc_id -> text[:max_content_chars]``: a hit's own text when long enough, else fetched
        in one ``get_documents`` call (one seek per document)."""
        n = self.max_content_chars
        if n == 0 or not hits:
            return {}
        out = {h.doc_id: h.text[:n] for h in hits if h.text is not None and len(h.text) >= n}
        missing = [h.doc_id for h in hits if h.doc_id not in out]
        get_documents = getattr(self.tracer_obj, "get_documents", None)
        if missing and callable(get_documents):
            try:
                out.update((d.doc_id, d.text[:n]) for d in get_documents(list(dict.fromkeys(missing))))
            except Exception:  # content is a nicety: the ids and scores still go out
                logger.warning("could not fetch document text for a span", exc_info=True)
        for h in hits:  # a short preview is the whole text, or all there is
            if h.doc_id not in out and h.text is not None:
                out[h.doc_id] = h.text[:n]
        return out


def _hit_metadata(hit: Hit) -> dict[str, Any]:
    """``document.metadata``: the rank, and what is known about the hit (proponent, stability)."""
    meta: dict[str, Any] = {"rank": hit.rank}
    for key in HIT_METADATA:
        value = getattr(hit, key, None)
        if value is not None and value != ():
            meta[key] = list(value) if isinstance(value, tuple) else value
    return meta


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _safe_str(value: Any) -> str:
    return value if isinstance(value, str) else ""
