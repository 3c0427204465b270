"""A seeded request fuzzer for the service: every RPC, hostile field values and undecodable bytes.

Used by the standing reliability suite (``tests/test_fuzz.py``) and by ``eval/fuzz_service.py``,
which also measures the server's memory. Requests are generated from the proto descriptors, so
a field added to the proto is fuzzed without touching this file. Values are biased toward the
edges that have broken servers before: empty and whitespace strings, very long strings, control
characters and NULs, path-like names, negative and 32-bit-extreme integers, enum numbers outside
the enum, repeated fields past the server's caps, and deadlines that expire mid-call.

The contract checked by :func:`allowed`: a well-formed message never gets UNKNOWN or INTERNAL
(INTERNAL is reserved for bytes gRPC cannot decode), and the server never dies.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from tracer._proto.tracer.v1 import tracer_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["TracerService"]
REFLECTION_METHOD = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
HEALTH_METHOD = "/grpc.health.v1.Health/Check"

_EXTREME_INTS = (0, 0, 1, -1, 3, 10, 100, 1001, 100_001, 2**31 - 1, -(2**31))
_WORDS = ("Marie Curie was born in", " Warsaw", "The capital of France is", " Paris", "the", "a b c")


@dataclass(frozen=True)
class FuzzCall:
    """One generated call: which RPC, how to send it, and whether its bytes are well formed."""

    rpc: str
    streaming_response: bool
    request: Message | bytes
    timeout: float
    well_formed: bool

    @property
    def path(self) -> str:
        return f"/{SERVICE.full_name}/{self.rpc}"


@dataclass
class FuzzStats:
    """Outcome counts of a fuzz run; ``violations`` lists the calls that broke the contract."""

    codes: Counter = field(default_factory=Counter)
    by_rpc: Counter = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.codes.values())


class RequestFuzzer:
    """Seeded generator of :class:`FuzzCall` s against one server.

    Args:
        seed: Makes the sequence reproducible.
        index_names: Real index ids (most requests name one, so they reach the deep code paths).
        doc_ids: Real example ids (for BatchGetExamples and proponents).
        raw_share: Fraction of calls that send random bytes instead of a message.
    """

    def __init__(self, seed: int, index_names: Sequence[str], doc_ids: Sequence[str] = (),
                 raw_share: float = 0.1) -> None:
        self.rng = random.Random(seed)
        self.index_names = list(index_names)
        self.doc_ids = list(doc_ids) or ["d0"]
        self.raw_share = raw_share

    # --- values
    def _string(self, name: str) -> str:
        r = self.rng
        if name == "index" and r.random() < 0.8:
            return r.choice(self.index_names)
        if name in ("example_ids", "proponents") and r.random() < 0.7:
            return r.choice(self.doc_ids)
        pool = (
            lambda: "",
            lambda: "   \t\n",
            lambda: r.choice(_WORDS),
            lambda: " ".join(r.choice(_WORDS) for _ in range(r.randint(1, 6))),
            lambda: "x" * r.choice((201, 5_000, 100_000)),
            lambda: "".join(chr(r.randint(0, 0x2FFF)) for _ in range(r.randint(1, 40))).replace("\ud800", ""),
            lambda: "\x00\x01\x1b[31m\u202e" + r.choice(_WORDS),
            lambda: r.choice(("../../etc/passwd", "/etc/passwd", "..", ".", "C:\\Windows", "%s%n{}")),
            lambda: "after:" + r.choice(self.index_names + [""]),
        )
        return "".join(c for c in r.choice(pool)() if not 0xD800 <= ord(c) <= 0xDFFF)

    def _int(self, f: FieldDescriptor) -> int:
        v = self.rng.choice(_EXTREME_INTS) if self.rng.random() < 0.6 else self.rng.randint(-5, 300)
        if f.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
            return v
        return max(-(2**31), min(2**31 - 1, v))

    def _enum(self, f: FieldDescriptor) -> int:
        values = [v.number for v in f.enum_type.values]
        return self.rng.choice(values) if self.rng.random() < 0.85 else self.rng.choice((-1, 99, 2**31 - 1))

    def _scalar(self, f: FieldDescriptor) -> Any:
        if f.type == FieldDescriptor.TYPE_STRING:
            return self._string(f.name)
        if f.type == FieldDescriptor.TYPE_BOOL:
            return self.rng.random() < 0.3
        if f.type == FieldDescriptor.TYPE_ENUM:
            return self._enum(f)
        if f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return self.rng.choice((0.0, -1.0, 1e308, float("nan")))
        if f.type == FieldDescriptor.TYPE_BYTES:
            return self.rng.randbytes(self.rng.randint(0, 16))
        return self._int(f)

    def _repeat_count(self, f: FieldDescriptor) -> int:
        r = self.rng.random()
        if r < 0.15:
            return 0
        if r < 0.85:
            return self.rng.randint(1, 4)
        if f.message_type is not None and f.name == "queries":
            return self.rng.choice((17, 40, 257))  # past a chunk, and past the batch cap
        return self.rng.choice((17, 1001))

    def message(self, cls: type[Message], depth: int = 0) -> Message:
        """A random instance of ``cls`` (each field set with probability ~0.8)."""
        msg = cls()
        for f in cls.DESCRIPTOR.fields:
            if self.rng.random() < 0.2 or depth > 3:
                continue
            if f.is_repeated:
                if f.message_type is not None and f.message_type.GetOptions().map_entry:
                    continue  # maps appear only in responses
                for _ in range(self._repeat_count(f)):
                    if f.message_type is not None:
                        getattr(msg, f.name).add().CopyFrom(self.message(_message_class(f), depth + 1))
                    else:
                        getattr(msg, f.name).append(self._scalar(f))
            elif f.message_type is not None:
                getattr(msg, f.name).CopyFrom(self.message(_message_class(f), depth + 1))
            else:
                setattr(msg, f.name, self._scalar(f))
        if cls is pb.EvaluateRequest and len(msg.queries) > 40:
            del msg.queries[40:]  # keep the suite bounded; the cap itself is tested elsewhere
        return msg

    def call(self) -> FuzzCall:
        method = self.rng.choice(list(SERVICE.methods))
        timeout = self.rng.choice((0.001, 0.05, 1.0, 10.0, 10.0, 10.0))
        streaming = method.name in ("BatchTrace", "Evaluate")
        if self.rng.random() < self.raw_share:
            raw = self.rng.randbytes(self.rng.randint(0, 64))
            return FuzzCall(method.name, streaming, raw, timeout, well_formed=False)
        req = self.message(_message_class_of(method.input_type))
        return FuzzCall(method.name, streaming, req, timeout, well_formed=True)

    def calls(self, n: int) -> Iterator[FuzzCall]:
        for _ in range(n):
            yield self.call()


def _message_class(f: FieldDescriptor) -> type[Message]:
    return _message_class_of(f.message_type)


def _message_class_of(descriptor: Any) -> type[Message]:
    return getattr(pb, descriptor.name)


def send(channel: grpc.Channel, call: FuzzCall, metadata: Sequence[tuple[str, str]] = ()) -> grpc.StatusCode:
    """Send one call and return its final status code (streams are read to the end)."""
    ser: Callable[[Any], bytes] = (lambda b: b) if isinstance(call.request, bytes) else (lambda m: m.SerializeToString())
    try:
        if call.streaming_response:
            stub = channel.unary_stream(call.path, request_serializer=ser, response_deserializer=lambda b: b)
            for _ in stub(call.request, timeout=call.timeout, metadata=metadata):
                pass
        else:
            stub = channel.unary_unary(call.path, request_serializer=ser, response_deserializer=lambda b: b)
            stub(call.request, timeout=call.timeout, metadata=metadata)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def allowed(call: FuzzCall, code: grpc.StatusCode) -> bool:
    """The contract: never UNKNOWN; INTERNAL only for bytes that are not a well-formed message."""
    if code is grpc.StatusCode.UNKNOWN:
        return False
    return not (code is grpc.StatusCode.INTERNAL and call.well_formed)


def malformed_reflection_streams(channel: grpc.Channel, n: int, seed: int) -> int:
    """Open ``n`` reflection streams that send garbage (the client-streaming shape that once hung stop()).

    Returns:
        How many of them ended (with any status) within their deadline.
    """
    rng = random.Random(seed)
    ended = 0
    stub = channel.stream_stream(REFLECTION_METHOD, request_serializer=lambda b: b,
                                 response_deserializer=lambda b: b)
    for _ in range(n):
        try:
            for _ in stub(iter([rng.randbytes(rng.randint(1, 32)) for _ in range(3)]), timeout=2.0):
                pass
        except grpc.RpcError:
            pass
        ended += 1
    return ended


def run(channel: grpc.Channel, fuzzer: RequestFuzzer, n: int, metadata: Sequence[tuple[str, str]] = (),
        on_call: Callable[[int], None] | None = None) -> FuzzStats:
    """Send ``n`` fuzzed calls in sequence and tally them against :func:`allowed`."""
    stats = FuzzStats()
    for i, call in enumerate(fuzzer.calls(n)):
        code = send(channel, call, metadata)
        stats.codes[code.name] += 1
        stats.by_rpc[call.rpc] += 1
        if not allowed(call, code):
            shown = call.request if isinstance(call.request, bytes) else str(call.request)[:300]
            stats.violations.append(f"#{i} {call.rpc} -> {code.name}: {shown!r}")
        if on_call:
            on_call(i)
    return stats
