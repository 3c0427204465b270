"""Protocol buffers <-> ``tracer.types`` on the server side; the only server module touching ``*_pb2``.

Enum values map to library names by rule: ``METHOD_TRACIN_COS`` <-> ``"tracin_cos"``,
``CANDIDATE_SOURCE_BM25`` <-> ``"bm25"``, ``EVALUATE_POLICY_FTRACE`` <-> ``"ftrace"``. The
``_UNSPECIFIED`` value becomes ``None`` (the caller applies the server default). Malformed input
raises :class:`~tracer.errors.InvalidRequestError` with a message that names the field.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath, PureWindowsPath
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tracer._proto.tracer.v1 import tracer_pb2 as pb
from tracer.errors import InvalidRequestError
from tracer.types import Document, Hit, Query, TraceResult

# Enum type -> the prefix its value names carry.
_PREFIXES = {
    pb.Method: "METHOD_",
    pb.CandidateSource: "CANDIDATE_SOURCE_",
    pb.EvaluatePolicy: "EVALUATE_POLICY_",
}


def enum_to_name(enum: Any, value: int, field: str) -> str | None:
    """Library name of a proto enum value, ``None`` for ``_UNSPECIFIED``.

    Raises:
        InvalidRequestError: ``value`` is not a value of ``enum`` (e.g. from a newer client).
    """
    try:
        full = enum.Name(value)
    except ValueError:
        raise InvalidRequestError(f"{field}: unknown value {value}; expected one of {', '.join(enum_names(enum))}") \
            from None
    name = full.removeprefix(_PREFIXES[enum]).lower()
    return None if name == "unspecified" else name


def enum_names(enum: Any) -> list[str]:
    """Library names of every value of ``enum`` but ``_UNSPECIFIED``, in proto order."""
    names = (n.removeprefix(_PREFIXES[enum]).lower() for n in enum.keys())
    return [n for n in names if n != "unspecified"]


def name_to_enum(enum: Any, name: str) -> Any:
    """Proto enum value of a library name; ``_UNSPECIFIED`` (0) for a name the proto lacks."""
    try:
        return enum.Value(_PREFIXES[enum] + name.upper())
    except ValueError:
        return 0


def require_text(value: str, field: str) -> str:
    """Return ``value``; raise InvalidRequestError naming ``field`` when it is empty."""
    if not value:
        raise InvalidRequestError(f"{field}: must not be empty")
    return value


def query_from_fields(msg: Any, field: str) -> Query:
    """A :class:`Query` from a message with ``query_id``, ``prompt`` and ``target``.

    Args:
        msg: A ``TraceRequest``, ``TraceQuery`` or ``EvaluateQuery``.
        field: Field path used in error messages, e.g. ``"queries[3]."`` or ``""``.
    """
    return Query(
        query_id=msg.query_id,
        prompt=require_text(msg.prompt, f"{field}prompt"),
        target=require_text(msg.target, f"{field}target"),
    )


def eval_query(msg: pb.EvaluateQuery, position: int) -> Query:
    """A labelled :class:`Query` from the ``position``-th ``EvaluateQuery`` (default id ``q<position>``)."""
    base = query_from_fields(msg, f"queries[{position}].")
    return Query(
        query_id=base.query_id or f"q{position}",
        prompt=base.prompt,
        target=base.target,
        fact_id=msg.fact_id or None,
        relation=msg.relation or None,
        subject=msg.subject or None,
        proponents=tuple(msg.proponents),
    )


def methods_from(values: Iterable[int], field: str = "methods") -> list[str]:
    """Library method names of a repeated ``Method`` field (``_UNSPECIFIED`` entries rejected)."""
    names = []
    for i, v in enumerate(values):
        name = enum_to_name(pb.Method, v, f"{field}[{i}]")
        if name is None:
            raise InvalidRequestError(f"{field}[{i}]: METHOD_UNSPECIFIED is not a method")
        names.append(name)
    return names


def _hit(hit: Hit, max_text_chars: int, include_text: bool) -> pb.Hit:
    msg = pb.Hit(example_id=hit.doc_id, rank=hit.rank, score=float(hit.score),
                 checkpoint_scores=list(hit.checkpoint_scores))
    if hit.topk_fraction is not None:
        msg.topk_fraction = hit.topk_fraction
    if hit.stable is not None:
        msg.stable = hit.stable
    if hit.interval is not None:
        msg.score_low, msg.score_high = hit.interval
    if include_text and hit.text is not None:
        msg.text = hit.text[:max_text_chars]
        msg.text_truncated = len(hit.text) > max_text_chars
    return msg


def trace_response(result: TraceResult, index: str, *, include_text: bool,
                   max_text_chars: int) -> pb.TraceResponse:
    """A ``TraceResponse`` from a :class:`TraceResult`; hit texts are cut to ``max_text_chars``."""
    q = result.query
    return pb.TraceResponse(
        query_id=q.query_id,
        prompt=q.prompt,
        target=q.target,
        index=index,
        index_fingerprint=result.index_fingerprint,
        method=name_to_enum(pb.Method, result.method),
        candidates=name_to_enum(pb.CandidateSource, result.candidates),
        hits=[_hit(h, max_text_chars, include_text) for h in result.hits],
        timings_ms={str(k): float(v) for k, v in result.timings_ms.items()},
        num_candidates=int(result.n_candidates),
        recall_ceiling=result.recall_ceiling,
    )


def batch_result(position: int, response: pb.TraceResponse) -> pb.BatchTraceResponse:
    """A successful item of a BatchTrace stream."""
    return pb.BatchTraceResponse(position=position, result=response)


def batch_error(position: int, code: int, message: str) -> pb.BatchTraceResponse:
    """A failed item of a BatchTrace stream; ``code`` is a grpc status number."""
    return pb.BatchTraceResponse(position=position, error=pb.QueryError(code=code, message=message))


def example(doc: Document) -> pb.Example:
    """An ``Example`` from a :class:`Document`."""
    msg = pb.Example(example_id=doc.doc_id, text=doc.text, facts=list(doc.facts))
    if doc.prompt is not None:
        msg.prompt = doc.prompt
    if doc.target is not None:
        msg.target = doc.target
    return msg


def redact_paths(value: Any) -> Any:
    """``value`` with every absolute path string cut to its last component (server paths stay private)."""
    if isinstance(value, Mapping):
        return {k: redact_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_paths(v) for v in value]
    if isinstance(value, str) and (value.startswith(("/", "~", "\\\\")) or PureWindowsPath(value).drive):
        return PurePosixPath(value.replace("\\", "/")).name or value
    return value


def index_info(name: str, fingerprint: str, n_documents: int, methods: Sequence[str],
               info: Mapping[str, Any]) -> pb.IndexInfo:
    """An ``IndexInfo``; ``info`` (the tracer's ``info()`` dict) travels as JSON, absolute paths redacted."""
    sources = [name_to_enum(pb.CandidateSource, c) for c in info.get("candidates", ())]
    return pb.IndexInfo(
        name=name,
        fingerprint=fingerprint,
        num_examples=int(n_documents),
        methods=[name_to_enum(pb.Method, m) for m in methods],
        candidates=[s for s in sources if s],
        info_json=json.dumps(redact_paths(info), default=str, sort_keys=True),
    )


def evaluate_progress(done: int, total: int, stage: str) -> pb.EvaluateResponse:
    """A progress event of an Evaluate stream (``stage`` is ``rank`` or ``tail_patch``)."""
    return pb.EvaluateResponse(progress=pb.EvaluateProgress(
        done_queries=int(done), total_queries=int(total), stage=str(stage)))


def _method_metrics(name: str, res: Mapping[str, Any]) -> pb.MethodMetrics:
    agg = res.get("all", {}) if isinstance(res, Mapping) else {}
    metrics = {
        key: pb.MetricInterval(mean=float(v["mean"]), lo=float(v.get("lo", v["mean"])),
                               hi=float(v.get("hi", v["mean"])))
        for key, v in agg.items() if isinstance(v, Mapping) and "mean" in v
    }
    return pb.MethodMetrics(
        method=name_to_enum(pb.Method, name),
        candidates=name_to_enum(pb.CandidateSource, str(res.get("candidates", ""))),
        num_queries=int(agg.get("n", 0)),
        metrics=metrics,
    )


def evaluate_result(report: Mapping[str, Any]) -> pb.EvaluateResponse:
    """The final event of an Evaluate stream: the whole report as JSON plus typed summaries."""
    methods = report.get("methods", {})
    return pb.EvaluateResponse(result=pb.EvaluateResult(
        report_json=json.dumps(report, default=str),
        methods=[_method_metrics(name, res) for name, res in methods.items()],
    ))


def verify_response(v: Any, fingerprint: str) -> pb.VerifyResponse:
    """A ``VerifyResponse`` from a :class:`tracer.verification.Verification`."""
    def one(x: Any) -> pb.VerifiedExample:
        return pb.VerifiedExample(example_id=x.doc_id, delta_logprob=x.delta_logprob, ms=x.ms, baseline=x.baseline)

    return pb.VerifyResponse(prompt=v.prompt, target=v.target, checkpoint=v.checkpoint, lr=v.lr,
                             examples=[one(x) for x in v.examples], baseline=[one(x) for x in v.baseline],
                             timings_ms={str(k): float(t) for k, t in v.timings_ms.items()},
                             index_fingerprint=fingerprint)
